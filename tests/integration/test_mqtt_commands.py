"""What a base receives from the operator's tunnel, through a real Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import aiomqtt

from module_controller.protocol import BaseTopic, BizModel, encode, wrap
from module_controller.protocol.topics import base_subscriptions, base_topic
from module_controller.tunnels.events import BrokerConnected, TunnelEvent
from module_controller.tunnels.mqtt import MqttTunnel
from tests.private_broker import PrivateBroker
from tests.unit.test_mqtt_decoder import heartbeat
from tests.waiting import wait_for

BASE = "b1"


@contextlib.asynccontextmanager
async def connected_tunnel(private_broker: PrivateBroker) -> AsyncIterator[MqttTunnel]:
    """The operator's tunnel, running and connected to the broker."""
    connected = asyncio.Event()

    async def deliver(event: TunnelEvent) -> None:
        if isinstance(event, BrokerConnected):
            connected.set()

    tunnel = MqttTunnel(private_broker.operator_settings(env="dev"), deliver)
    running = asyncio.create_task(tunnel.run())
    try:
        await asyncio.wait_for(connected.wait(), 10)
        yield tunnel
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def test_commands_reach_the_base_at_qos_0_and_the_baseline_at_qos_1(
    private_broker: PrivateBroker,
) -> None:
    """A base subscribes at QoS 1, so it would acknowledge a QoS 1 command before it
    answers, and its instant answer (a health or inventory query; an install on the
    simulator) would wait for the broker's delayed TCP ACK of that PUBACK, about 40 ms."""
    info = private_broker.info
    async with (
        connected_tunnel(private_broker) as tunnel,
        aiomqtt.Client(
            info.host, info.port, username=info.username, password=info.password
        ) as base,
    ):
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


async def test_only_the_replica_commanding_a_base_receives_its_answers(
    private_broker: PrivateBroker,
) -> None:
    """Both replicas hear the base's heartbeat; its answer to a command comes to the
    replica that sent the command (subscribed before it went) and not to the other."""
    info = private_broker.info
    heard: dict[str, list[TunnelEvent]] = {"a": [], "b": []}
    tunnels: dict[str, MqttTunnel] = {}
    running: list[asyncio.Task[None]] = []
    for name in heard:

        async def deliver(event: TunnelEvent, into: list[TunnelEvent] = heard[name]) -> None:
            into.append(event)

        settings = private_broker.operator_settings(env="dev", client_id=f"replica-{name}")
        tunnels[name] = MqttTunnel(settings, deliver)
        running.append(asyncio.create_task(tunnels[name].run()))

    def kinds(name: str) -> list[str]:
        return [type(event).__name__ for event in heard[name]]

    def until(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
        async def condition() -> bool:
            return check()

        return condition

    try:
        await wait_for(
            until(lambda: all("BrokerConnected" in kinds(name) for name in heard)),
            timeout=10,
            what="both replicas connected",
        )
        async with aiomqtt.Client(
            info.host, info.port, username=info.username, password=info.password
        ) as base:
            for topic in base_subscriptions("dev", BASE):
                await base.subscribe(topic, qos=1)
            heart = base_topic("dev", BASE, BaseTopic.HEART)
            await base.publish(heart, heartbeat(BASE), qos=1)
            await wait_for(
                until(lambda: all("BaseHeartbeat" in kinds(name) for name in heard)),
                timeout=10,
                what="the heartbeat heard by both replicas",
            )
            await tunnels["a"].query_all_biz(BASE)
            async for message in base.messages:  # the command: answered at once
                assert str(message.topic).endswith("/queryAllBiz")
                answer = encode(wrap([]))
                await base.publish(base_topic("dev", BASE, BaseTopic.SIMPLE_BIZ), answer, qos=1)
                break
            # A second heartbeat after the answer: the broker keeps one publisher's order,
            # so a replica that hears it has passed the answer by.
            await base.publish(heart, heartbeat(BASE), qos=1)
            await wait_for(
                until(lambda: all(kinds(name).count("BaseHeartbeat") == 2 for name in heard)),
                timeout=10,
                what="the second heartbeat heard by both replicas",
            )
        assert "BaseInventory" in kinds("a"), f"the replica that asked heard {kinds('a')}"
        assert "BaseInventory" not in kinds("b"), f"the other replica heard {kinds('b')}"
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


async def test_commands_leave_at_once_nagle_is_off(private_broker: PrivateBroker) -> None:
    """With Nagle's algorithm on, a command waited behind our unacknowledged PUBACKs for the
    broker's delayed TCP ACK: 22 ms p50 from pod bound to installBiz at 150 bases, not 3."""
    async with connected_tunnel(private_broker) as tunnel:
        assert tunnel._client is not None
        sock = tunnel._client._client.socket()
        assert isinstance(sock, socket.socket)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
