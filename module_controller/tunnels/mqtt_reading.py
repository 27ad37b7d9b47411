"""How the operator's MQTT client reads its socket: many messages per event-loop turn.

aiomqtt reads when the socket is readable by calling paho's `loop_read()`, which reads one
packet (it reads more only while QoS 2 messages or our own QoS > 0 ones are in flight), in
three or four `recv` calls: the command byte, the length bytes one by one, the rest. So the
event loop turned once per message: at 1,000 bases in a release, on a box short of CPU, the
operator read heartbeats 25 s late while they were fresh at the broker. Here a readable
socket is drained per turn, through a buffer that takes what the kernel holds in one call.
"""

from __future__ import annotations

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

# Packets read per turn of the event loop: past it, the turn reads what its buffer holds
# and ends (what is left in the socket makes it readable again on the next turn).
PACKETS_PER_TURN = 200
# Bytes taken from the kernel per call: a turn reads at most this much past its bound.
RECV_BYTES = 64 * 1024


class _Buffer:
    """paho's `_sock_recv`, served from one large read of the socket at a time."""

    def __init__(self, client: paho.Client) -> None:
        self._recv = client._sock_recv
        self._data = b""
        self._at = 0
        self.may_read_socket = True

    @property
    def holds_bytes(self) -> bool:
        return self._at < len(self._data)

    def recv(self, bufsize: int) -> bytes:
        """Up to `bufsize` bytes; b"" once the peer closed; BlockingIOError when none wait
        (or the socket may not be read again this turn)."""
        if not self.holds_bytes:
            if not self.may_read_socket:
                raise BlockingIOError
            data = self._recv(RECV_BYTES)
            if not data:
                return data
            self._data, self._at = data, 0
        chunk = self._data[self._at : self._at + bufsize]
        self._at += len(chunk)
        return chunk


def read_in_batches(client: paho.Client) -> None:
    """Make `client.loop_read()` read every message waiting, PACKETS_PER_TURN and what the
    buffer holds then at most. paho keeps a message cut off at the end of the buffer and
    completes it on the next turn, when the rest has come."""
    buffer = _Buffer(client)

    def loop_read(max_packets: int = 1) -> MQTTErrorCode:
        buffer.may_read_socket = True
        read = 0
        while True:
            if client._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = client._packet_read()
            if rc > 0:
                return client._loop_rc_handle(rc)
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN and not buffer.holds_bytes:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            # (paho also says "again" for a packet it read 100 pieces of: what the buffer
            # still holds would wait for the next bytes to arrive, so it is read now.)
            read += 1
            if read >= PACKETS_PER_TURN:
                buffer.may_read_socket = False  # the buffer's rest, then the turn ends

    client._sock_recv = buffer.recv  # type: ignore[method-assign]
    client.loop_read = loop_read  # type: ignore[method-assign]
