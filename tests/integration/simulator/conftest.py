"""Fixtures for driving simulated bases the way a controller does, over the real broker.

``mqtt_broker`` (host, port, username, password) comes from ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiomqtt
import pytest

from module_controller.protocol.topics import all_base_messages, command_topic, parse_topic
from module_controller.simulator.base import SimulatedBase
from module_controller.simulator.config import BaseConfig, MqttSettings


class Broker(Protocol):
    host: str
    port: int
    username: str
    password: str


@dataclass
class Received:
    topic: str
    raw: bytes
    at_ms: int

    @property
    def json(self) -> Any:
        return json.loads(self.raw)


class FakeController:
    """Subscribes to every base message of its own env and publishes commands."""

    def __init__(self, client: aiomqtt.Client, env: str) -> None:
        self.client = client
        self.env = env
        self.messages: dict[tuple[str, str], list[Received]] = defaultdict(list)
        self._arrived = asyncio.Event()

    def record(self, topic: str, payload: bytes) -> None:
        parsed = parse_topic(topic)
        self.messages[(parsed.identity, parsed.name)].append(
            Received(topic, payload, time.time_ns() // 1_000_000)
        )
        self._arrived.set()
        self._arrived = asyncio.Event()

    async def send(
        self, identity: str, command: str, payload: Any, *, retain: bool = False
    ) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        await self.client.publish(command_topic(self.env, identity, command), data, retain=retain)

    async def publish_raw(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        await self.client.publish(topic, payload, qos=1, retain=retain)

    async def expect(
        self, identity: str, kind: str, count: int = 1, timeout: float = 10.0
    ) -> Received:
        """The ``count``-th message of ``kind`` from ``identity``, waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        while len(self.messages[(identity, kind)]) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = {f"{k[1]}": len(v) for k, v in self.messages.items() if k[0] == identity}
                raise AssertionError(
                    f"expected {count}x base/{kind} from {identity} within {timeout}s; "
                    f"got {seen or 'nothing'}"
                )
            event = self._arrived
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)
        return self.messages[(identity, kind)][count - 1]

    def count(self, identity: str, kind: str) -> int:
        return len(self.messages[(identity, kind)])


def random_loopback_ip() -> str:
    return f"127.{random.randint(64, 250)}.{random.randint(0, 255)}.{random.randint(1, 254)}"


def mqtt_settings(broker: Broker) -> MqttSettings:
    return MqttSettings(
        host=broker.host, port=broker.port, username=broker.username, password=broker.password
    )


@pytest.fixture
async def controller(mqtt_broker: Broker) -> AsyncIterator[FakeController]:
    # A fresh env per test: no retained message or base of another test is ever seen.
    env = f"t{uuid.uuid4().hex[:10]}"
    async with aiomqtt.Client(
        mqtt_broker.host,
        mqtt_broker.port,
        username=mqtt_broker.username,
        password=mqtt_broker.password,
        identifier=f"koupleless@@@test-{env}",
    ) as client:
        fake = FakeController(client, env)
        await client.subscribe(all_base_messages(env), qos=1)

        async def pump() -> None:
            async for message in client.messages:
                payload = message.payload
                assert isinstance(payload, bytes)
                fake.record(message.topic.value, payload)

        task = asyncio.create_task(pump())
        try:
            yield fake
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


StartBase = Callable[..., Awaitable[SimulatedBase]]


@pytest.fixture
async def start_base(mqtt_broker: Broker, controller: FakeController) -> AsyncIterator[StartBase]:
    """Start a connected base on the controller's env; all are stopped after the test."""
    started: list[SimulatedBase] = []

    async def start(**overrides: Any) -> SimulatedBase:
        options: dict[str, Any] = {
            "name": "base",
            "version": "1.1.1",
            "env": controller.env,
            "ip": random_loopback_ip(),
            "mqtt": mqtt_settings(mqtt_broker),
            "http_api": False,
        }
        options.update(overrides)
        base = SimulatedBase(BaseConfig(**options))
        started.append(base)
        await base.start()
        await base.wait_connected(10)
        return base

    yield start
    await asyncio.gather(*(base.stop() for base in started), return_exceptions=True)
