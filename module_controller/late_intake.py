"""Late intake: an operator that reads its MQTT messages late is deaf; its bases are not silent.

The operator's probe through the broker queues behind the heartbeats (tunnels/mqtt.py), so
how late it comes back is how late they reach the operator. Heartbeats older than
MESSAGE_MAX_AGE_SECONDS are dropped as stale, and a base's clock may be a little off, so
liveness clocks stop from half the shorter of that and BROKER_SUSPECT_SECONDS late (5 s by
default), and run again once under half that. A pause that lasts MASS_SILENCE_MAX_SECONDS
ends anyway: the probe may be lost for good (an ACL changed), or the operator never catches
up, and liveness must not stop forever on a measure that cannot be trusted.

Pure: told the lag and the clock, it says what to do. The registry does it; the dispatcher
says so in the log.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from module_controller.settings import Settings


class Verdict(Enum):
    PAUSE = "pause"
    RESUME = "resume"
    GIVE_UP = "give up"


@dataclass
class LateIntake:
    pause_at: float  # seconds late
    max_seconds: float
    behind_since: float | None = None
    # Gave up on this lag: no new pause until it has dropped under the resume mark.
    gave_up: bool = False

    @classmethod
    def of(cls, settings: Settings) -> LateIntake:
        shorter = min(settings.broker_suspect_seconds, settings.message_max_age_seconds)
        return cls(pause_at=shorter / 2, max_seconds=settings.mass_silence_max_seconds)

    @property
    def resume_below(self) -> float:
        return self.pause_at / 2

    def judge(self, lag: float, now: float) -> Verdict | None:
        if self.behind_since is None:
            if lag < self.resume_below:
                self.gave_up = False
            elif lag >= self.pause_at and not self.gave_up:
                self.behind_since = now
                return Verdict.PAUSE
            return None
        if lag < self.resume_below:
            self.behind_since = None
            return Verdict.RESUME
        if now - self.behind_since >= self.max_seconds:
            self.behind_since = None
            self.gave_up = True
            return Verdict.GIVE_UP
        return None

    def reset(self) -> None:
        """A new broker connection: its probes start afresh."""
        self.behind_since = None
        self.gave_up = False
