"""The operator's MQTT tunnel against a broker that freezes (SIGSTOP) and thaws (SIGCONT)."""

from __future__ import annotations

import asyncio

from module_controller.tunnels.events import BrokerConnected, BrokerDisconnected, TunnelEvent
from module_controller.tunnels.mqtt import MqttTunnel
from tests.private_broker import PrivateBroker
from tests.waiting import wait_for


async def test_the_tunnel_notices_a_frozen_broker_and_comes_back_after_the_thaw(
    private_broker: PrivateBroker,
) -> None:
    settings = private_broker.operator_settings(
        mqtt_keepalive_seconds=5,
        broker_probe_seconds=0.5,
        broker_suspect_seconds=2,
        mqtt_reconnect_max_seconds=2,
    )
    events: list[TunnelEvent] = []

    async def deliver(event: TunnelEvent) -> None:
        events.append(event)

    tunnel = MqttTunnel(settings, deliver)
    running = asyncio.create_task(tunnel.run())

    async def diagnose() -> str:
        return f"events={events} silence={tunnel.delivery_silence()}"

    try:

        async def probe_back() -> bool:
            return tunnel.probe_returned

        await wait_for(probe_back, timeout=10, what="the probe to come back", diagnose=diagnose)
        private_broker.freeze()

        async def silent() -> bool:
            silence = tunnel.delivery_silence()
            return silence is not None and silence >= 2

        await wait_for(silent, timeout=5, what="the silence to show", diagnose=diagnose)

        async def dropped() -> bool:
            return any(isinstance(event, BrokerDisconnected) for event in events)

        # Keepalive 5 s: paho gives up after two unanswered keepalive periods.
        await wait_for(dropped, timeout=20, what="the dead connection dropped", diagnose=diagnose)
        private_broker.thaw()

        async def delivering_again() -> bool:
            silence = tunnel.delivery_silence()
            connected = isinstance(events[-1], BrokerConnected)
            return connected and silence is not None and silence < 1.5 and tunnel.probe_returned

        await wait_for(
            delivering_again, timeout=30, what="delivery after the thaw", diagnose=diagnose
        )
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
