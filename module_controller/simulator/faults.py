"""Faults a test can switch on at any time on a running base (all default off).

Each knob mirrors a failure seen on real bases or derived from their code (spec §9, §11).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Faults:
    # Module operations.
    install_delay_s: float = 0.0  # slow download/start, applies to every install
    install_delays_s: dict[str, float] = field(default_factory=dict)  # by module name
    fail_start: set[str] = field(default_factory=set)  # names or name:version -> BROKEN
    fail_start_probability: float = 0.0
    fail_download: set[str] = field(default_factory=set)  # first-stage failure, no biz
    fail_uninstall: set[str] = field(default_factory=set)  # -> BROKEN/UN_INSTALL_FAILED
    fail_uninstall_probability: float = 0.0
    # Liveness and clocks.
    heartbeats_stopped: bool = False
    clock_skew_ms: int = 0  # added to every publishTimestamp (negative = stale)
    heartbeat_state: str = "activated"  # e.g. "DEACTIVATED" (the Go mocks' graceful exit)
    # Health.
    health_code: str = "SUCCESS"  # anything else: health reply with this code, no data
    master_biz_state: str = "ACTIVATED"  # masterBizInfo.bizState in health
    # Replies on MQTT.
    duplicate_replies: bool = False  # publish every reply twice
    reorder_replies: bool = False  # hold a reply and send it after the next one
    malformed_replies: int = 0  # the next N replies are sent as broken JSON
    batch_omit_biz_infos: bool = False  # batch entries without bizInfos (Go MC panics)
    # Commands received and ignored on purpose (a base that stops answering). Over HTTP
    # the request is read and never answered, as by a blocked Arklet worker thread.
    ignore_commands: set[str] = field(default_factory=set)
    # The Arklet HTTP API hangs on every request (a frozen JVM whose heartbeat thread runs).
    http_api_frozen: bool = False

    def install_delay_for(self, name: str) -> float:
        return self.install_delays_s.get(name, self.install_delay_s)

    def start_fails(self, name: str, version: str, rng: random.Random) -> bool:
        return _matches(self.fail_start, name, version) or _roll(self.fail_start_probability, rng)

    def download_fails(self, name: str, version: str) -> bool:
        return _matches(self.fail_download, name, version)

    def uninstall_fails(self, name: str, version: str, rng: random.Random) -> bool:
        return _matches(self.fail_uninstall, name, version) or _roll(
            self.fail_uninstall_probability, rng
        )

    def take_malformed(self) -> bool:
        """Consume one "send this reply malformed" token, if any."""
        if self.malformed_replies > 0:
            self.malformed_replies -= 1
            return True
        return False


def _matches(selected: set[str], name: str, version: str) -> bool:
    return name in selected or f"{name}:{version}" in selected


def _roll(probability: float, rng: random.Random) -> bool:
    return probability > 0 and rng.random() < probability
