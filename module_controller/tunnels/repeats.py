"""Heartbeats that repeat a base's last one byte for byte, but for their timestamp.

A base beats every 10 s, nearly always with the same status, and every replica hears every
base's heartbeat (tunnels/mqtt.py). Decoding one (JSON, then the pydantic model) was most
of what hearing it cost: at 1,000 bases, the decoding was a tenth of a replica's CPU, two
thirds of it for other replicas' bases. A repeat is known from the bytes instead: the
payload with its `publishTimestamp` number cut out equals the last one decoded for the
base, so it decodes to the same status; only the timestamp is read (for the age check).
"""

from __future__ import annotations

import re

from module_controller.tunnels.events import BaseHeartbeat

# The envelope's timestamp: a JSON number (a Java long), ended by the next member or the
# object's end. Inside a JSON string the key's quotes would be escaped, so never matched.
TIMESTAMP = re.compile(rb'"publishTimestamp"\s*:\s*(-?\d{1,19})\s*[,}]')
KEY = b'"publishTimestamp"'


def cut_timestamp(payload: bytes) -> tuple[int, bytes] | None:
    """The timestamp, and the payload without its digits; None if there is no one key."""
    match = TIMESTAMP.search(payload)
    if match is None or payload.count(KEY) != 1:
        return None  # no key, or one more (nested): only a full decode knows which counts
    return int(match.group(1)), payload[: match.start(1)] + payload[match.end(1) :]


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
        if cut is None or cut[1] != last[0]:
            return None
        return cut[0], last[1]

    def remember(self, topic: str, payload: bytes, timestamp: int, event: BaseHeartbeat) -> None:
        """A heartbeat just decoded in full: its repeats are known from now on."""
        cut = cut_timestamp(payload)
        if cut is None or cut[0] != timestamp:
            self._last.pop(topic, None)
            return
        if len(self._last) >= self._limit and topic not in self._last:
            self._last.clear()  # bases that left, mostly: the live ones come back in a beat
        self._last[topic] = (cut[1], event)
