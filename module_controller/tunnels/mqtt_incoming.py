"""How the MQTT client's messages come in: a bounded queue, acknowledged early while it is
short, read without aiomqtt's cost per message.

Backpressure: a QoS 1 message (a base's answer) is acknowledged only once the inbox has
taken it, so while the operator is behind, the broker holds what bases answer (it stops at
its in-flight window, 20 in Mosquitto). But that window also caps the throughput when the
operator is *not* behind: at most 20 messages per round trip from the broker through our
event loop and back. So while few messages wait here, each is acknowledged as it arrives;
past that, the window applies again. Nothing is lost by acknowledging early: the session is
clean, so a message taken but not handled when the operator stops would not be sent again
anyway. Heartbeats come at QoS 0 (tunnels/mqtt.py says why): nothing holds them back but
this queue's bound, past which they are dropped and counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable

import aiomqtt

# Acknowledged on arrival while at most this many messages wait to be handled.
ACK_ON_ARRIVAL_BELOW = 20
# Messages handled from a backlog before the event loop gets a turn.
YIELD_EVERY = 100
# QoS 1 messages Mosquitto sends without our acknowledgement (max_inflight_messages).
BROKER_WINDOW = 20


class Acknowledgements:
    """Which messages were acknowledged on arrival, so that none is acknowledged twice."""

    def __init__(self, queue_size: int) -> None:
        self._client: aiomqtt.Client | None = None
        # The queue must still hold the broker's window behind what was acknowledged on
        # arrival: what it discards is acknowledged too, freeing a slot of the window for
        # the next, and the broker would stream everything into the discard. Half the
        # room past the window only: the other half is for QoS 0 (heartbeats, our probe)
        # arriving meanwhile. A queue smaller than the window overflows whatever is
        # acknowledged.
        room = (queue_size - BROKER_WINDOW) // 2
        self._ack_on_arrival_below = (
            min(ACK_ON_ARRIVAL_BELOW, room) if room >= 0 else ACK_ON_ARRIVAL_BELOW
        )
        self._early: set[int] = set()  # id() of messages still queued: unique while alive

    def attach(self, client: aiomqtt.Client) -> None:
        """The connection acknowledged on (made after its queue, which reports to us)."""
        self._client = client

    def arrived(self, message: aiomqtt.Message, waiting: int) -> None:
        if waiting <= self._ack_on_arrival_below and self._ack(message):
            self._early.add(id(message))

    def handled(self, message: aiomqtt.Message) -> None:
        """Acknowledge a message now that the inbox took it, unless that was done already."""
        if id(message) in self._early:
            self._early.discard(id(message))
        else:
            self._ack(message)

    def dropped(self, message: aiomqtt.Message) -> None:
        """A message the queue could not take: acknowledged all the same, or it would hold
        a slot of the broker's in-flight window for the rest of the connection."""
        self._ack(message)

    def _ack(self, message: aiomqtt.Message) -> bool:
        """Acknowledge a QoS 1 message; False for what needs none, or with no connection."""
        if not message.qos or self._client is None:
            return False
        self._client._client.ack(message.mid, message.qos)
        return True


def bounded_queue(
    on_full: Callable[[aiomqtt.Message], None],
    on_arrival: Callable[[aiomqtt.Message, int], None],
) -> type[asyncio.Queue[aiomqtt.Message]]:
    """aiomqtt's incoming queue, bounded, handing what it must discard to `on_full` and what
    it took to `on_arrival` (with how many messages wait now).

    Past ACK_ON_ARRIVAL_BELOW the broker sends no more QoS 1 messages than its in-flight
    window until we acknowledge, so this fills only past that (an EVENT_QUEUE_SIZE below
    it) or with QoS 0 messages (heartbeats) while the inbox is full.
    """

    class CountingQueue(asyncio.Queue[aiomqtt.Message]):
        def put_nowait(self, item: aiomqtt.Message) -> None:
            try:
                super().put_nowait(item)
            except asyncio.QueueFull:
                on_full(item)
                raise
            on_arrival(item, self.qsize())

    return CountingQueue


async def incoming(client: aiomqtt.Client) -> AsyncGenerator[aiomqtt.Message, None]:
    """`client.messages`, without its cost per message while a backlog waits: aiomqtt makes
    a task and an `asyncio.wait` for each one (a tenth of the operator's CPU at 1,000
    bases). Only an empty queue waits on aiomqtt's iterator, which also ends on disconnect.
    """
    queue = client._queue
    waiting = client.messages
    while True:
        for _ in range(YIELD_EVERY):
            try:
                message = queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            yield message
        else:
            await asyncio.sleep(0)  # a long backlog must not hold the event loop
            continue
        yield await waiting.__anext__()
