"""The MQTT client reads every message waiting on its socket per turn of the event loop
(tunnels/mqtt_reading.py), not one: paho's own loop_read() reads one here."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from module_controller.tunnels import mqtt_reading as reading
from module_controller.tunnels.mqtt_reading import read_in_batches

PAYLOAD = b"x" * 300


def publish_packet(topic: str, payload: bytes) -> bytes:
    """An MQTT 3.1.1 PUBLISH at QoS 0."""
    name = topic.encode()
    body = struct.pack("!H", len(name)) + name + payload
    length, remaining = len(body), bytearray()
    while True:
        length, digit = divmod(length, 128)
        remaining.append(digit | (128 if length else 0))
        if not length:
            return bytes([0x30]) + bytes(remaining) + body


def packets(count: int) -> bytes:
    return b"".join(publish_packet(f"t/{number}", PAYLOAD) for number in range(count))


@pytest.fixture
def connection() -> Iterator[tuple[paho.Client, socket.socket, list[str]]]:
    """A paho client reading batched from one end of a socket pair; the test writes the
    broker's side into the other. Yields the client, the broker's end, the topics read."""
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    client = paho.Client(CallbackAPIVersion.VERSION2)
    topics: list[str] = []
    client.on_message = lambda _client, _userdata, message: topics.append(message.topic)
    client._sock = ours
    read_in_batches(client)
    yield client, broker, topics
    ours.close()
    broker.close()


def test_every_message_waiting_is_read_in_one_turn(
    connection: tuple[paho.Client, socket.socket, list[str]],
) -> None:
    client, broker, topics = connection
    broker.sendall(packets(100))
    assert client.loop_read() == MQTTErrorCode.MQTT_ERR_SUCCESS
    assert len(topics) == 100, f"{len(topics)} of 100 waiting messages read in one turn"


def test_a_message_cut_between_reads_is_completed_by_the_next(
    connection: tuple[paho.Client, socket.socket, list[str]],
) -> None:
    client, broker, topics = connection
    data = packets(10)
    broker.sendall(data[:1000])  # three messages and a part of the fourth
    client.loop_read()
    assert topics == ["t/0", "t/1", "t/2"]
    broker.sendall(data[1000:])
    client.loop_read()
    assert topics == [f"t/{number}" for number in range(10)]


def test_a_turn_ends_past_its_bound_with_nothing_left_in_the_buffer(
    connection: tuple[paho.Client, socket.socket, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flood must not hold the event loop: past PACKETS_PER_TURN the turn reads what its
    buffer holds and ends. (What waits in the socket makes it readable again; what waited
    in the buffer would wait for the next message to arrive, so none is left there.)"""
    monkeypatch.setattr(reading, "PACKETS_PER_TURN", 50)
    monkeypatch.setattr(reading, "RECV_BYTES", 8192)  # 25 messages and a part
    client, broker, topics = connection
    broker.sendall(packets(300))
    client.loop_read()
    assert 50 <= len(topics) < 50 + 26, f"{len(topics)} messages read in the first turn"
    turns = 1
    while len(topics) < 300:
        client.loop_read()
        turns += 1
    assert turns == 300 // 50 or turns == 300 // 50 + 1, f"{turns} turns for 300 messages"
    assert topics[-1] == "t/299"


def test_a_closed_connection_is_reported(
    connection: tuple[paho.Client, socket.socket, list[str]],
) -> None:
    client, broker, topics = connection
    broker.sendall(packets(2))
    broker.close()
    assert client.loop_read() == MQTTErrorCode.MQTT_ERR_CONN_LOST
    assert topics == ["t/0", "t/1"]


def test_a_message_read_in_a_hundred_pieces_leaves_nothing_behind_in_the_buffer(
    connection: tuple[paho.Client, socket.socket, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: paho says "again" after reading one message in 100 pieces, even when
    the 100th completed it. The turn then ended with the next message in the buffer and
    none in the socket: it waited for whatever the broker sent next (at worst a ping answer).
    With 64 KB reads that takes a 6 MB message (1.6 MB over TLS, 16 KB a record)."""
    monkeypatch.setattr(reading, "RECV_BYTES", 10)
    client, broker, topics = connection
    body = 7 + 10 * 98 + 5  # after its first 3 bytes: 7 in the first read, then 99 more
    big = publish_packet("b", b"x" * (body - 3))
    broker.sendall(big + publish_packet("h", b""))
    client.loop_read()
    assert topics == ["b", "h"]
