"""A slow operator gets every heartbeat, late, and its own probe is as late (real Mosquitto).

At QoS 1 the broker sends no more than its in-flight window (20) ahead of our
acknowledgements and queues the rest, 1,000 at most: past that it drops them, and nobody
counts them. Live bases went silent that way on a box short of CPU, at 1,000 bases. At QoS 0
heartbeats come as fast as the socket takes them; what the operator cannot hold is counted,
and they queue on the probe's path, so the probe is as late as they are and liveness can
pause (tunnels/mqtt.py, WILDCARD_QOS). Here at QoS 1, 372 of 1,500 were lost.
"""

from __future__ import annotations

import asyncio
import time

from module_controller.protocol import BaseMetadata, BaseStatus, encode, wrap
from module_controller.tunnels.events import BaseHeartbeat, TunnelEvent
from module_controller.tunnels.mqtt import MqttTunnel
from tests.private_broker import PrivateBroker
from tests.waiting import wait_for

BASES = 1500
HANDLING_SECONDS = 0.005  # a slow operator: 200 messages a second


def heartbeat(identity: str) -> bytes:
    metadata = BaseMetadata(identity=identity, name="base", version="1")
    return encode(wrap(BaseStatus(base_metadata=metadata, local_ip="127.0.0.2")))


async def test_a_slow_operator_loses_no_heartbeat_and_its_probe_is_as_late(
    private_broker: PrivateBroker,
) -> None:
    settings = private_broker.operator_settings(broker_probe_seconds=0.25)
    sent: dict[str, float] = {}
    late: list[float] = []  # how late each heartbeat was handled

    async def deliver(event: TunnelEvent) -> None:
        if isinstance(event, BaseHeartbeat):
            late.append(time.monotonic() - sent[event.identity])
            await asyncio.sleep(HANDLING_SECONDS)

    tunnel = MqttTunnel(settings, deliver)
    running = asyncio.create_task(tunnel.run())
    probe_lags: list[float] = []

    async def watch_the_probe() -> None:
        while True:
            probe_lags.append(tunnel.intake_lag() or 0.0)
            await asyncio.sleep(0.05)

    watching = asyncio.create_task(watch_the_probe())
    try:
        await asyncio.wait_for(tunnel.connected.wait(), 10)
        async with private_broker.client() as base:
            for number in range(BASES):
                identity = f"b{number}"
                sent[identity] = time.monotonic()
                await base.publish(f"koupleless_dev/{identity}/base/heart", heartbeat(identity), 1)

        def dropped() -> int:
            return sum(tunnel.decoder.dropped.values())

        async def all_handled() -> bool:
            return len(late) + dropped() == BASES

        async def diagnose() -> str:
            return (
                f"{len(late)} of {BASES} heartbeats handled, {dropped()} counted as dropped: "
                "the rest were lost where nobody counts them (at the broker)"
            )

        # Handling them all takes 7.5 s.
        await wait_for(all_handled, timeout=20, what="every heartbeat handled", diagnose=diagnose)
    finally:
        watching.cancel()
        running.cancel()
        await asyncio.gather(watching, running, return_exceptions=True)
    latest, probe_latest = max(late), max(probe_lags)
    assert latest > 3, f"the operator was not slow enough to tell: at most {latest:.1f}s late"
    assert probe_latest > latest / 2, (
        f"heartbeats reached the operator up to {latest:.1f}s late, but its probe at most "
        f"{probe_latest:.1f}s: the probe does not travel their path"
    )


BUSY_BASES = 3000
TURN_SECONDS = 0.005  # each turn of the operator's event loop takes this long


def publish_from_a_thread(private_broker: PrivateBroker, count: int) -> dict[str, float]:
    """Heartbeats of `count` bases, from ten clients on an event loop of their own (ours is
    busy); returns when each was sent."""
    sent: dict[str, float] = {}

    async def client(first: int) -> None:
        async with private_broker.client() as base:
            for number in range(first, count, 10):
                identity = f"b{number}"
                sent[identity] = time.monotonic()
                await base.publish(f"koupleless_dev/{identity}/base/heart", heartbeat(identity), 1)

    async def all_clients() -> None:
        await asyncio.gather(*(client(first) for first in range(10)))

    asyncio.run(all_clients())
    return sent


async def test_a_busy_event_loop_still_reads_heartbeats_as_they_come(
    private_broker: PrivateBroker,
) -> None:
    """paho reads one message per readable event, and the event loop turns once per
    message: with 5 ms turns the operator read under 200 a second, and these 3,000 came
    up to 10 s late and were dropped as stale (tunnels/mqtt_reading.py)."""
    settings = private_broker.operator_settings(broker_probe_seconds=0.25)
    handled: dict[str, float] = {}

    async def deliver(event: TunnelEvent) -> None:
        if isinstance(event, BaseHeartbeat):
            handled[event.identity] = time.monotonic()

    tunnel = MqttTunnel(settings, deliver)
    running = asyncio.create_task(tunnel.run())

    async def busy() -> None:
        while True:
            time.sleep(TURN_SECONDS)  # the rest of a busy operator's work in this turn
            await asyncio.sleep(0)

    busying = asyncio.create_task(busy())
    try:
        await asyncio.wait_for(tunnel.connected.wait(), 10)
        sent = await asyncio.to_thread(publish_from_a_thread, private_broker, BUSY_BASES)

        async def all_handled() -> bool:
            return len(handled) + sum(tunnel.decoder.dropped.values()) == BUSY_BASES

        async def diagnose() -> str:
            return f"{len(handled)} handled, dropped {dict(tunnel.decoder.dropped)}"

        await wait_for(all_handled, timeout=30, what="every heartbeat handled", diagnose=diagnose)
    finally:
        busying.cancel()
        running.cancel()
        await asyncio.gather(busying, running, return_exceptions=True)
    assert not tunnel.decoder.dropped, f"dropped: {dict(tunnel.decoder.dropped)}"
    latest = max(handled[identity] - sent[identity] for identity in handled)
    assert latest < 3, f"heartbeats were read up to {latest:.1f}s after they were sent"
