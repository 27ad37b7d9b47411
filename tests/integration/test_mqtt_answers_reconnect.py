"""A base's answers, subscribed per base (tunnels/mqtt_answers.py), through a real Mosquitto."""

from __future__ import annotations

import asyncio

import aiomqtt

from module_controller.protocol import BaseTopic, encode, wrap
from module_controller.protocol.arklet import ArkletResponse
from module_controller.protocol.biz import BatchInstallData
from module_controller.protocol.operations import BatchInstallBizResponse
from module_controller.protocol.topics import base_subscriptions, base_topic
from module_controller.tunnels.events import TunnelEvent
from module_controller.tunnels.mqtt import MqttTunnel
from tests.private_broker import PrivateBroker
from tests.unit.test_mqtt_decoder import heartbeat
from tests.waiting import wait_for

BASE = "b1"


class Heard:
    """What the tunnel delivers, by event type."""

    def __init__(self) -> None:
        self.events: list[TunnelEvent] = []

    async def deliver(self, event: TunnelEvent) -> None:
        self.events.append(event)

    def kinds(self) -> list[str]:
        return [type(event).__name__ for event in self.events]

    async def seen(self, kind: str) -> bool:
        return kind in self.kinds()


async def test_an_answer_to_a_command_sent_before_a_reconnect_still_comes(
    private_broker: PrivateBroker,
) -> None:
    """A slow answer (an install takes seconds) to a command sent on the last connection
    comes on the next one, as it did when every replica subscribed every base's answers by
    a wildcard: the bases subscribed on the last connection are subscribed again at once,
    not only before their next command."""
    info = private_broker.info
    heard = Heard()
    kinds = heard.kinds
    tunnel = MqttTunnel(private_broker.operator_settings(env="dev"), heard.deliver)
    running = asyncio.create_task(tunnel.run())

    async def connections(number: int) -> bool:
        return tunnel.connections == number and kinds().count("BrokerConnected") == number

    try:
        await wait_for(lambda: connections(1), timeout=10, what="the tunnel connected")
        async with aiomqtt.Client(
            info.host, info.port, username=info.username, password=info.password
        ) as base:
            for topic in base_subscriptions("dev", BASE):
                await base.subscribe(topic, qos=1)
            await tunnel.query_all_biz(BASE)
            async for message in base.messages:
                assert str(message.topic).endswith("/queryAllBiz")
                break
            # Mosquitto ends the tunnel's session when another client takes its id.
            async with aiomqtt.Client(
                info.host,
                info.port,
                username=info.username,
                password=info.password,
                identifier=tunnel.client_id,
            ):
                pass
            await wait_for(lambda: connections(2), timeout=15, what="the tunnel reconnected")
            answer = encode(wrap([]))
            await base.publish(base_topic("dev", BASE, BaseTopic.SIMPLE_BIZ), answer, qos=1)
            # The broker keeps one publisher's order: once this is heard, the answer was.
            await base.publish(base_topic("dev", BASE, BaseTopic.HEART), heartbeat(BASE), qos=1)

            await wait_for(
                lambda: heard.seen("BaseHeartbeat"),
                timeout=10,
                what="the heartbeat after the answer",
            )
        assert "BaseInventory" in kinds(), f"the answer was lost: the tunnel heard {kinds()}"
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def test_the_answer_to_a_baseline_comes_to_the_replica_that_sent_it(
    private_broker: PrivateBroker,
) -> None:
    """A base that starts asks for its baseline before it is sent any command: the
    batchInstallBizResponse it answers the baseline with is one of its answers, and must
    come to the replica that sent the baseline, subscribed before it went."""
    info = private_broker.info
    heard = Heard()
    kinds, seen = heard.kinds, heard.seen
    tunnel = MqttTunnel(private_broker.operator_settings(env="dev"), heard.deliver)
    running = asyncio.create_task(tunnel.run())
    try:
        await wait_for(lambda: seen("BrokerConnected"), timeout=10, what="the tunnel connected")
        async with aiomqtt.Client(
            info.host, info.port, username=info.username, password=info.password
        ) as base:
            for topic in base_subscriptions("dev", BASE):
                await base.subscribe(topic, qos=1)
            await tunnel.send_baseline(BASE, [])
            async for message in base.messages:
                assert str(message.topic).endswith("/baseline")
                break
            output = ArkletResponse[BatchInstallData](
                code="SUCCESS", data=BatchInstallData(code="SUCCESS")
            )
            answer = encode(wrap(BatchInstallBizResponse(response=output)))
            topic = base_topic("dev", BASE, BaseTopic.BATCH_INSTALL_BIZ_RESPONSE)
            await base.publish(topic, answer, qos=1)
            await base.publish(base_topic("dev", BASE, BaseTopic.HEART), heartbeat(BASE), qos=1)
            await wait_for(lambda: seen("BaseHeartbeat"), timeout=10, what="the heartbeat")
        assert "BatchInstallResult" in kinds(), f"the answer was lost: the tunnel heard {kinds()}"
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
