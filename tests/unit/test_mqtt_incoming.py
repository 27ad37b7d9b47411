"""The MQTT client's incoming side: acknowledged on arrival while few wait, never twice, and
read from a backlog without aiomqtt's task per message."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, cast

import aiomqtt
import pytest
from paho.mqtt.client import MQTTMessage

from module_controller.inbox import Inbox
from module_controller.observability.metrics import Metrics
from module_controller.settings import Settings
from module_controller.tunnels import mqtt_incoming
from module_controller.tunnels.mqtt import MqttTunnel
from module_controller.tunnels.mqtt_incoming import (
    ACK_ON_ARRIVAL_BELOW,
    Acknowledgements,
    bounded_queue,
    incoming,
)


class Paho:
    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, mid: int, qos: int) -> None:
        self.acked.append(mid)


class Client:
    """What the incoming side uses of an aiomqtt client."""

    def __init__(self, queue: asyncio.Queue[aiomqtt.Message] | None = None) -> None:
        self._client = Paho()
        self._queue = queue
        self.waited = 0
        self.disconnected = False

    @property
    def messages(self) -> Client:
        return self

    async def __anext__(self) -> aiomqtt.Message:
        self.waited += 1
        assert self._queue is not None
        if self.disconnected and self._queue.empty():
            raise aiomqtt.MqttError("Disconnected during message iteration")
        return await self._queue.get()


def message(mid: int, qos: int = 1) -> aiomqtt.Message:
    return aiomqtt.Message("koupleless_dev/b/base/heart", b"{}", qos, False, mid, None)


def wired(size: int = 1000) -> tuple[Client, Acknowledgements, asyncio.Queue[aiomqtt.Message]]:
    acks = Acknowledgements(size)
    dropped: list[aiomqtt.Message] = []

    def full(item: aiomqtt.Message) -> None:
        dropped.append(item)
        acks.dropped(item)

    queue = bounded_queue(full, acks.arrived)(maxsize=size)
    client = Client(queue)
    acks.attach(cast(aiomqtt.Client, client))
    return client, acks, queue


async def test_messages_are_acknowledged_on_arrival_while_few_wait_and_once_each() -> None:
    client, acks, queue = wired()
    arrived = [message(mid) for mid in range(1, ACK_ON_ARRIVAL_BELOW + 11)]
    for item in arrived:
        queue.put_nowait(item)
    # The first ones at once; past the mark, only once handled (the broker's window holds).
    assert client._client.acked == list(range(1, ACK_ON_ARRIVAL_BELOW + 1))
    while not queue.empty():
        acks.handled(queue.get_nowait())
    assert sorted(client._client.acked) == [item.mid for item in arrived]


async def test_a_message_without_qos_is_never_acknowledged() -> None:
    client, acks, queue = wired()
    queue.put_nowait(message(7, qos=0))
    acks.handled(queue.get_nowait())
    assert client._client.acked == []


async def test_a_message_the_full_queue_drops_is_acknowledged_all_the_same() -> None:
    client, _acks, queue = wired(size=1)
    queue.put_nowait(message(1))
    with pytest.raises(asyncio.QueueFull):
        queue.put_nowait(message(2))
    assert client._client.acked == [1, 2]


async def test_a_message_of_an_old_connection_is_never_acknowledged_on_the_new_one() -> None:
    """A packet id means something on its own connection only: on another, a PUBACK for it
    acknowledges whichever message holds that id there (or none). The old client's socket
    can outlive its connection: aiomqtt leaves it open and read when one of paho's
    callbacks raised, and until the broker takes the session over for the new client."""
    tunnel = MqttTunnel(Settings(), Inbox(100, Metrics()).put)
    acked: dict[str, list[int]] = {"old": [], "new": []}
    old = tunnel._new_client()
    old._client.ack = lambda mid, qos: acked["old"].append(mid)  # type: ignore[method-assign, assignment, return-value]
    new = tunnel._new_client()
    new._client.ack = lambda mid, qos: acked["new"].append(mid)  # type: ignore[method-assign, assignment, return-value]
    late = MQTTMessage(mid=5, topic=b"koupleless_dev/b/base/heart")
    late.qos = 1
    old._on_message(old._client, None, late)
    assert acked == {"old": [5], "new": []}


async def test_a_backlog_is_read_without_waiting_on_the_iterator_and_yields_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mqtt_incoming, "YIELD_EVERY", 10)
    queue: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()
    for mid in range(25):
        queue.put_nowait(message(mid))
    client = Client(queue)
    others_ran = 0

    async def other() -> None:
        nonlocal others_ran
        while True:
            others_ran += 1
            await asyncio.sleep(0)

    running = asyncio.create_task(other())
    read: list[int] = []
    reader = incoming(cast(aiomqtt.Client, client))
    try:
        await asyncio.sleep(0)
        for _ in range(25):
            read.append((await reader.__anext__()).mid)
        assert read == list(range(25))
        assert client.waited == 0, "a message that was there waited on aiomqtt's iterator"
        assert others_ran >= 3, "25 messages read in one go held the event loop"
        # An empty queue waits on the iterator, which ends on a disconnect.
        client.disconnected = True
        with pytest.raises(aiomqtt.MqttError):
            await reader.__anext__()
        assert client.waited == 1
    finally:
        running.cancel()
        await reader.aclose()


async def test_messages_arriving_while_waiting_are_read() -> None:
    queue: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()
    client = Client(queue)
    reader = incoming(cast(aiomqtt.Client, client))
    pending: Any = asyncio.ensure_future(reader.__anext__())
    await asyncio.sleep(0)
    queue.put_nowait(message(5))
    assert (await asyncio.wait_for(pending, 1)).mid == 5
    await reader.aclose()


async def test_a_short_queue_keeps_room_for_the_brokers_window_behind_early_acks() -> None:
    """A queue of 30 with 20 acknowledged on arrival could not hold the window's 20 more;
    half of the 10 to spare go to acknowledgements on arrival, half to QoS 0 messages."""
    acks = Acknowledgements(queue_size=30)
    queue = bounded_queue(acks.dropped, acks.arrived)(maxsize=30)
    client = Client(queue)
    acks.attach(cast(aiomqtt.Client, client))
    for mid in range(1, 31):
        queue.put_nowait(message(mid))
    assert client._client.acked == list(range(1, 6))


async def test_a_probe_arriving_while_the_window_fills_a_short_queue_loses_nothing() -> None:
    """The operator's probe (QoS 0, every few seconds) takes a slot of the queue too. With
    no slot to spare past the early acknowledgements and the window, the window's last
    message is discarded and acknowledged, the broker sends the next into the discard, and
    so on until the reader takes one: a slow reader loses most of what bases send."""
    acks = Acknowledgements(queue_size=30)
    discarded: list[int] = []

    def full(item: aiomqtt.Message) -> None:
        discarded.append(item.mid)
        acks.dropped(item)

    queue = bounded_queue(full, acks.arrived)(maxsize=30)
    client = Client(queue)
    acks.attach(cast(aiomqtt.Client, client))
    sent = 0
    # The broker: sends while fewer than its window (20) are unacknowledged; nobody reads.
    while sent - len(client._client.acked) < 20 and sent < 200:
        sent += 1
        if sent == 15:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(message(0, qos=0))
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait(message(sent))
    assert discarded == [], f"{len(discarded)} discarded"
