"""Bytes and topic in, a typed TunnelEvent out (or a counted, rate-limited drop).

No I/O: everything the tunnel receives passes through here before anything else sees it,
so the rest of the operator works on validated models, never on raw bytes.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from pydantic import BaseModel

from module_controller import naming
from module_controller.lograte import RateLimitedLog
from module_controller.protocol import (
    Envelope,
    ProtocolError,
    SimpleBizInfo,
    decode_base_message,
    now_ms,
)
from module_controller.protocol.biz import BizInfo
from module_controller.protocol.messages import (
    AGE_CHECKED_TOPICS,
    BatchInstallMessage,
    BizOperationMessage,
    HealthMessage,
    HeartMessage,
    LegacyBizMessage,
    QueryBaselineMessage,
    SimpleBizMessage,
)
from module_controller.protocol.states import BizState
from module_controller.protocol.topics import BaseTopic
from module_controller.settings import Settings
from module_controller.tunnels.events import (
    BaseHealthReport,
    BaseHeartbeat,
    BaseInventory,
    BaselineQuery,
    BatchInstallResult,
    BizOperationResult,
    TunnelEvent,
    TunnelKind,
)
from module_controller.tunnels.repeats import RepeatedHeartbeats

log = logging.getLogger(__name__)


class DropReason:
    # The same words as the metrics' MqttDropReason label values.
    OVERSIZED = "oversized"
    UNKNOWN_TOPIC = "unknown_topic"
    BAD_IDENTITY = "bad_identity"
    MALFORMED = "malformed"
    STALE = "stale"
    IDENTITY_MISMATCH = "identity_mismatch"
    FAILED_REPLY = "failed_reply"
    CLIENT_QUEUE_FULL = "client_queue_full"


LOGGED_TEXT_LIMIT = 300


def _shorten(value: str | Exception) -> str:
    text = str(value)
    if len(text) <= LOGGED_TEXT_LIMIT:
        return text
    return f"{text[:LOGGED_TEXT_LIMIT]}... ({len(text)} characters)"


DropHook = Callable[[str], None]


class MessageDecoder:
    """Bytes and topic in, a TunnelEvent (or a counted drop) out. No I/O: unit-testable."""

    def __init__(
        self, settings: Settings, on_drop: DropHook | None = None, clock: Callable[[], int] = now_ms
    ) -> None:
        self.settings = settings
        self.dropped: Counter[str] = Counter()
        self._on_drop = on_drop
        self._clock = clock
        self._log = RateLimitedLog(log)
        self._repeats = RepeatedHeartbeats(limit=2 * settings.max_bases)

    def record_drop(self, reason: str, message: str, *args: object) -> None:
        self.dropped[reason] += 1
        if self._on_drop is not None:
            self._on_drop(reason)
        # A hostile payload may be megabytes; its error text quotes it. Say enough, not all.
        shown = tuple(_shorten(arg) if isinstance(arg, str | Exception) else arg for arg in args)
        self._log.warning(reason, "Dropped an MQTT message: " + message, *shown)

    def decode(self, topic: str, payload: bytes) -> TunnelEvent | None:
        """The event a message carries, or None when it was dropped; never raises."""
        try:
            return self._decode(topic, payload)
        except Exception as error:  # a bug in decoding must cost one message, not the tunnel
            self.record_drop(DropReason.MALFORMED, "%s could not be decoded: %r", topic, error)
            return None

    def _decode(self, topic: str, payload: bytes) -> TunnelEvent | None:
        if len(payload) > self.settings.max_message_bytes:
            self.record_drop(DropReason.OVERSIZED, "%d bytes on %s", len(payload), topic)
            return None
        repeat = self._repeats.known(topic, payload)
        if repeat is not None:
            timestamp, heartbeat = repeat
            if self._stale(BaseTopic.HEART, heartbeat.identity, timestamp):
                return None
            return heartbeat
        try:
            parsed, message = decode_base_message(topic, payload)
        except ProtocolError as error:
            reason = DropReason.UNKNOWN_TOPIC if error.what == "topic" else DropReason.MALFORMED
            self.record_drop(reason, "%s (topic %s)", error, topic)
            return None
        identity = parsed.identity
        bad = naming.invalid_identity_reason(identity)
        if bad is not None:
            self.record_drop(DropReason.BAD_IDENTITY, "identity %r refused: %s", identity[:80], bad)
            return None
        kind = parsed.base_kind
        assert isinstance(message, Envelope)
        if kind in AGE_CHECKED_TOPICS and self._stale(kind, identity, message.publish_timestamp):
            return None
        event = self._event(identity, message)
        if isinstance(event, BaseHeartbeat):
            self._repeats.remember(topic, payload, message.publish_timestamp, event)
        return event

    def _stale(self, kind: BaseTopic | None, identity: str, timestamp: int) -> bool:
        max_age_ms = int(self.settings.message_max_age_seconds * 1000)
        age_ms = self._clock() - timestamp
        if age_ms < max_age_ms:
            return False
        self.record_drop(
            DropReason.STALE,
            "%s from %s is %.1fs old (limit %.0fs; are the clocks in sync?)",
            kind,
            identity,
            age_ms / 1000,
            self.settings.message_max_age_seconds,
        )
        return True

    def _event(self, identity: str, message: BaseModel) -> TunnelEvent | None:
        if isinstance(message, HeartMessage):
            if message.data.base_metadata.identity != identity:
                self.record_drop(
                    DropReason.IDENTITY_MISMATCH,
                    "heartbeat on the topic of %s claims identity %r",
                    identity,
                    message.data.base_metadata.identity[:80],
                )
                return None
            return BaseHeartbeat(identity, message.data)
        if isinstance(message, QueryBaselineMessage):
            return BaselineQuery(identity, message.data)
        if isinstance(message, HealthMessage):
            reply = message.data
            if not reply.ok or reply.data is None:
                self.record_drop(
                    DropReason.FAILED_REPLY, "health of %s failed: %s", identity, reply.message
                )
                return None
            return BaseHealthReport(identity, reply.data.health_data)
        if isinstance(message, SimpleBizMessage):
            return BaseInventory(identity, tuple(message.data))
        if isinstance(message, LegacyBizMessage):
            return self._legacy_inventory(identity, message)
        if isinstance(message, BizOperationMessage):
            return BizOperationResult(identity, message.data)
        if isinstance(message, BatchInstallMessage):
            return BatchInstallResult(identity, message.data)
        self.record_drop(DropReason.UNKNOWN_TOPIC, "no handler for %s", type(message).__name__)
        return None

    def _legacy_inventory(self, identity: str, message: LegacyBizMessage) -> TunnelEvent | None:
        """Runtime 1.3.0/1.3.1 report the inventory as full BizInfo beans."""
        reply = message.data
        if not reply.ok or reply.data is None:
            self.record_drop(
                DropReason.FAILED_REPLY, "biz list of %s failed: %s", identity, reply.message
            )
            return None
        return inventory_from_biz_infos(identity, reply.data)


def inventory_from_biz_infos(
    identity: str, infos: list[BizInfo], tunnel: TunnelKind = "mqtt"
) -> BaseInventory:
    """Full BizInfo beans (legacy MQTT ``base/biz``, HTTP ``queryAllBiz``) as an inventory."""
    modules = tuple(
        SimpleBizInfo(
            name=info.biz_name,
            version=info.biz_version,
            state=info.biz_state or BizState.UNRESOLVED,
            latest_state_record=max(
                info.biz_state_records or [], key=lambda r: r.change_time, default=None
            ),
        )
        for info in infos
    )
    return BaseInventory(identity, modules, tunnel)
