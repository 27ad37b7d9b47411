"""The base -> controller MQTT envelope ``{"publishTimestamp": <epoch ms>, "data": ...}``."""

from __future__ import annotations

import time
from typing import Generic, TypeVar

from pydantic import Field

from module_controller.protocol.codec import WireModel

T = TypeVar("T")

# The Go controller drops heart/queryBaseline/health/simpleBiz/biz messages when
# publishTimestamp + 10000 <= now (spec §2.3).
MAX_MESSAGE_AGE_MS = 10_000
# A Java long's range: what a publishTimestamp may be.
JAVA_LONG_MIN, JAVA_LONG_MAX = -(2**63), 2**63 - 1


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds, as Java's System.currentTimeMillis()."""
    return time.time_ns() // 1_000_000


class Envelope(WireModel, Generic[T]):
    """Every base -> controller MQTT message. Controller -> base messages have no envelope."""

    # A Java long. Unbounded, a timestamp of 400 digits overflows the staleness arithmetic.
    publish_timestamp: int = Field(ge=JAVA_LONG_MIN, le=JAVA_LONG_MAX)
    data: T

    def is_fresh(self, now: int | None = None, max_age_ms: int = MAX_MESSAGE_AGE_MS) -> bool:
        """True unless the message is as old as the Go controller's cut-off (or older)."""
        current = now_ms() if now is None else now
        return self.publish_timestamp + max_age_ms > current


def wrap(data: T, timestamp: int | None = None) -> Envelope[T]:
    """Put ``data`` in an envelope stamped now (or at ``timestamp``)."""
    return Envelope[T](publish_timestamp=now_ms() if timestamp is None else timestamp, data=data)
