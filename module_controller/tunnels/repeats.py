"""Heartbeats that repeat a base's last one byte for byte, but for their timestamp.

A base beats every 10 s, nearly always with the same status, and every replica hears every
base's heartbeat (tunnels/mqtt.py). Decoding one (JSON, then the pydantic model) was most
of what hearing it cost: at 1,000 bases, the decoding was a tenth of a replica's CPU, two
thirds of it for other replicas' bases. A repeat is known from the bytes instead: the
payload with its `publishTimestamp` digits cut out equals the last one decoded on the
topic, so it decodes to the same status; only the timestamp is read (for the age check).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from module_controller.protocol.envelopes import JAVA_LONG_MAX, JAVA_LONG_MIN
from module_controller.tunnels.events import BaseHeartbeat

# The envelope's timestamp: a JSON integer (no leading zero, at most a Java long's 19
# digits), ended by the next member or the object's end. Inside a JSON string the key's
# quotes would be escaped, so never matched.
TIMESTAMP = re.compile(rb'"publishTimestamp"\s*:\s*(-?(?:0|[1-9]\d{0,18}))\s*[,}]')


@dataclass(frozen=True)
class Cut:
    timestamp: int
    head: bytes  # the payload before the digits
    tail: bytes  # and after them

    @property
    def rest(self) -> bytes:
        """What is remembered of the payload: a digest, since a payload may be padded up to
        MAX_MESSAGE_BYTES (a megabyte) with members a base may add."""
        digest = hashlib.blake2b(self.head, digest_size=16)
        digest.update(len(self.head).to_bytes(8, "big"))
        digest.update(self.tail)
        return digest.digest()


def cut_timestamp(payload: bytes) -> Cut | None:
    """The first `publishTimestamp` integer and what is around its digits; None if there
    is none, or it is out of a Java long's range."""
    match = TIMESTAMP.search(payload)
    if match is None:
        return None
    value = int(match.group(1))
    if not JAVA_LONG_MIN <= value <= JAVA_LONG_MAX:
        return None
    return Cut(value, payload[: match.start(1)], payload[match.end(1) :])


def counts(cut: Cut, timestamp: int) -> bool:
    """Whether the digits cut are the timestamp a full decode reads: not a nested key's,
    nor ones a later (or escaped) duplicate key overrides. Other digits put in their place
    must come back as the timestamp."""
    if cut.timestamp != timestamp:
        return False
    other = timestamp + 1 if timestamp < JAVA_LONG_MAX else timestamp - 1
    try:
        envelope = json.loads(cut.head + str(other).encode() + cut.tail)
    except (ValueError, RecursionError):
        return False
    return isinstance(envelope, dict) and envelope.get("publishTimestamp") == other


class RepeatedHeartbeats:
    """The last heartbeat decoded on each topic (one per base), by its payload without the
    timestamp."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._last: dict[str, tuple[bytes, BaseHeartbeat]] = {}

    def known(self, topic: str, payload: bytes) -> tuple[int, BaseHeartbeat] | None:
        """The timestamp and the event of a repeat of the topic's last heartbeat, or None."""
        last = self._last.get(topic)
        if last is None:
            return None
        cut = cut_timestamp(payload)
        if cut is None or cut.rest != last[0]:
            return None
        return cut.timestamp, last[1]

    def remember(self, topic: str, payload: bytes, timestamp: int, event: BaseHeartbeat) -> None:
        """A heartbeat just decoded in full: its repeats are known from now on."""
        cut = cut_timestamp(payload)
        if cut is None or not counts(cut, timestamp):
            self._last.pop(topic, None)
            return
        if len(self._last) >= self._limit and topic not in self._last:
            self._last.clear()  # bases that left, mostly: the live ones come back in a beat
        self._last[topic] = (cut.rest, event)
