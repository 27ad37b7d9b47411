"""A full inbox makes the broker hold what bases send at QoS 1 (all but heartbeats, which come
at QoS 0: tests/integration/test_mqtt_intake_lag.py); nothing is lost without a count.

The tunnel acknowledges a QoS 1 message only once the inbox has taken it, so while the
dispatcher is behind, the broker stops at its in-flight window (Mosquitto: 20, though
2.0.11 lets a burst past it once acknowledgements resume) and queues the rest, instead of
the client acknowledging every message on arrival and discarding what its bounded queue
cannot hold (what it did with automatic acknowledgement: 100 of these 500 lost).
Whatever the client must still discard is counted (and acknowledged, and logged).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from module_controller.inbox import Inbox
from module_controller.observability.metrics import Metrics
from module_controller.protocol import BaseMetadata, encode, wrap
from module_controller.settings import Settings
from module_controller.tunnels.decoder import DropReason
from module_controller.tunnels.events import BaselineQuery, BrokerConnected
from module_controller.tunnels.mqtt import MqttTunnel
from module_controller.tunnels.mqtt_incoming import ACK_ON_ARRIVAL_BELOW, BROKER_WINDOW
from tests.private_broker import PrivateBroker
from tests.waiting import wait_for

MESSAGES = 500
INBOX = 200  # well above the broker's in-flight window, as the default (10,000) is
STUCK_MESSAGES = 200


def baseline_query(identity: str) -> bytes:
    return encode(wrap(BaseMetadata(identity=identity, name="base", version="1")))


async def test_a_full_inbox_holds_messages_at_the_broker_and_loses_none(
    private_broker: PrivateBroker,
) -> None:
    settings = private_broker.operator_settings(event_queue_size=INBOX)
    inbox = Inbox(INBOX, Metrics())
    tunnel = MqttTunnel(settings, inbox.put)
    running = asyncio.create_task(tunnel.run())
    try:
        assert isinstance(await asyncio.wait_for(inbox.get(), 10), BrokerConnected)
        async with private_broker.client() as base:
            for number in range(MESSAGES):  # nobody takes anything out of the inbox meanwhile
                await base.publish(
                    f"koupleless_dev/b{number}/base/queryBaseline",
                    baseline_query(f"b{number}"),
                    qos=1,
                )

        async def inbox_full() -> bool:
            return len(inbox) == INBOX

        await wait_for(inbox_full, timeout=10, what="the inbox to fill up")
        assert tunnel.delivery_silence() == 0.0, "our own backlog passed for broker silence"
        held_by_client = tunnel._client._queue.qsize() if tunnel._client else -1
        assert 0 <= held_by_client < 50, "the broker went on sending: nothing held it back"
        assert tunnel.decoder.dropped[DropReason.CLIENT_QUEUE_FULL] == 0
        heard: set[str] = set()

        async def all_heard() -> bool:
            while len(inbox):
                event = inbox.get_nowait()
                if isinstance(event, BaselineQuery):
                    heard.add(event.identity)
            dropped = tunnel.decoder.dropped[DropReason.CLIENT_QUEUE_FULL]
            return len(heard) + dropped == MESSAGES

        async def diagnose() -> str:
            dropped = dict(tunnel.decoder.dropped)
            return f"heard {len(heard)} of {MESSAGES}; dropped {dropped}"

        await wait_for(
            all_heard,
            timeout=30,
            what="every query heard or counted as dropped",
            diagnose=diagnose,
            interval=0.01,
        )
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


@contextlib.asynccontextmanager
async def stuck_tunnel(broker: PrivateBroker, settings: Settings) -> AsyncIterator[MqttTunnel]:
    """A tunnel whose handling is stuck for good on the first message, once bases have
    published STUCK_MESSAGES baseline queries."""
    stuck = asyncio.Event()

    async def deliver(event: object) -> None:
        if not isinstance(event, BrokerConnected):
            stuck.set()
            await asyncio.Event().wait()  # handled never

    tunnel = MqttTunnel(settings, deliver)
    running = asyncio.create_task(tunnel.run())
    try:
        await asyncio.wait_for(tunnel.connected.wait(), 10)
        async with broker.client() as base:
            for number in range(STUCK_MESSAGES):
                await base.publish(
                    f"koupleless_dev/b{number}/base/queryBaseline",
                    baseline_query(f"b{number}"),
                    qos=1,
                )
        await asyncio.wait_for(stuck.wait(), 10)
        yield tunnel
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


def held(tunnel: MqttTunnel) -> int:
    """How many messages wait in the tunnel's client queue."""
    return tunnel._client._queue.qsize() if tunnel._client else -1


async def test_while_few_wait_messages_are_acknowledged_on_arrival_past_the_window(
    private_broker: PrivateBroker,
) -> None:
    """The broker's in-flight window (20) would otherwise cap the throughput at 20 messages
    per round trip through a busy event loop, even with an empty inbox (mqtt_incoming.py).
    The handling is stuck on the first message here: the client takes about the window
    more than that, acknowledged on arrival, and then the window holds the rest back."""
    settings = private_broker.operator_settings()
    async with stuck_tunnel(private_broker, settings) as tunnel:

        async def past_the_window() -> bool:
            return held(tunnel) >= ACK_ON_ARRIVAL_BELOW + 10

        async def diagnose() -> str:
            return f"the client holds {held(tunnel)} messages"

        await wait_for(
            past_the_window, timeout=10, what="more than the window taken", diagnose=diagnose
        )
        await asyncio.sleep(0.5)  # what the broker would still send, if it would
        assert held(tunnel) < 100, "the window no longer holds the broker back"


async def test_a_client_queue_below_twice_the_window_still_holds_the_broker_back(
    private_broker: PrivateBroker,
) -> None:
    """EVENT_QUEUE_SIZE may be as low as 10. Acknowledging 20 on arrival, with the broker's
    window of 20 more behind them, would overflow a queue of 30: each message it discards
    is acknowledged, which frees a slot of the window for the next, and the broker streams
    everything into the discard. Without early acknowledgement a queue of 30 held."""
    settings = private_broker.operator_settings(
        event_queue_size=30, broker_probe_seconds=15, broker_suspect_seconds=20
    )
    async with stuck_tunnel(private_broker, settings) as tunnel:

        def dropped() -> int:
            return tunnel.decoder.dropped[DropReason.CLIENT_QUEUE_FULL]

        async def filled() -> bool:  # the window, and what was acknowledged on arrival
            return held(tunnel) > BROKER_WINDOW or dropped() > 0

        async def diagnose() -> str:
            return f"the client holds {held(tunnel)} messages, dropped {dropped()}"

        await wait_for(filled, timeout=10, what="the client queue to fill", diagnose=diagnose)
        await asyncio.sleep(0.5)  # what the broker would still send, if it would
        assert dropped() == 0, f"{dropped()} discarded: the broker was not held back"
