"""What a base receives from the operator's tunnel, through a real Mosquitto."""

from __future__ import annotations

import asyncio

import aiomqtt

from module_controller.protocol import BizModel
from module_controller.protocol.topics import base_subscriptions
from module_controller.tunnels.events import BrokerConnected, TunnelEvent
from module_controller.tunnels.mqtt import MqttTunnel
from tests.private_broker import PrivateBroker

BASE = "b1"


async def test_commands_reach_the_base_at_qos_0_and_the_baseline_at_qos_1(
    private_broker: PrivateBroker,
) -> None:
    """A base subscribes at QoS 1, so it would acknowledge a QoS 1 command before it
    answers, and its instant answer (a health or inventory query; an install on the
    simulator) would wait for the broker's delayed TCP ACK of that PUBACK, about 40 ms."""
    info = private_broker.info
    connected = asyncio.Event()

    async def deliver(event: TunnelEvent) -> None:
        if isinstance(event, BrokerConnected):
            connected.set()

    tunnel = MqttTunnel(private_broker.operator_settings(env="dev"), deliver)
    running = asyncio.create_task(tunnel.run())
    try:
        await asyncio.wait_for(connected.wait(), 10)
        async with aiomqtt.Client(
            info.host, info.port, username=info.username, password=info.password
        ) as base:
            for topic in base_subscriptions("dev", BASE):
                await base.subscribe(topic, qos=1)
            module = BizModel(biz_name="biz1", biz_version="1", biz_url="file:///biz1.jar")
            await tunnel.query_health(BASE)
            await tunnel.query_all_biz(BASE)
            await tunnel.install_biz(BASE, module)
            await tunnel.uninstall_biz(BASE, module)
            await tunnel.send_baseline(BASE, [module])
            received: dict[str, int] = {}

            async def receive() -> None:
                async for message in base.messages:
                    received[str(message.topic).rsplit("/", 1)[-1]] = message.qos
                    if len(received) == 5:
                        return

            await asyncio.wait_for(receive(), 10)
        assert received == {
            "health": 0,
            "queryAllBiz": 0,
            "installBiz": 0,
            "uninstallBiz": 0,
            "baseline": 1,
        }, f"what the base received, by topic and QoS: {received}"
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
