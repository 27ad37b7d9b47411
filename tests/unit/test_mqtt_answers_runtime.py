"""Per-base answer subscriptions (tunnels/mqtt_answers.py) as the runtime uses them: the
periodic polls, and the subscriptions of bases that left."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest
from kubernetes_asyncio import client

from module_controller.protocol import BizState
from module_controller.protocol.topics import per_base_subscriptions
from module_controller.runtime import Runtime
from module_controller.settings import Settings
from module_controller.tunnels.mqtt_answers import REFUSED, AnswerSubscriptions
from tests.unit.wiring_support import heartbeat


class Broker:
    """Grants every subscription but those of the `refused` bases (an ACL)."""

    def __init__(self, refused: set[str] | None = None) -> None:
        self.refused = refused or set()
        self.calls: list[tuple[str, list[str]]] = []
        self.published: list[str] = []

    async def subscribe(self, topics: list[tuple[str, int]]) -> Sequence[object]:
        self.calls.append(("subscribe", [topic for topic, _ in topics]))
        return [REFUSED if topic.split("/")[1] in self.refused else 1 for topic, _ in topics]

    async def unsubscribe(self, topics: list[str]) -> None:
        self.calls.append(("unsubscribe", topics))

    async def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> None:
        self.published.append(topic)


def runtime_on(api: client.ApiClient, broker: Broker, identities: list[str]) -> Runtime:
    runtime = Runtime(Settings(), api)
    for identity in identities:
        beat = heartbeat(identity)
        runtime.registry.heartbeat(beat.identity, beat.status)
    runtime.ownership.holds = lambda node_name: True  # type: ignore[method-assign]
    assert runtime.mqtt is not None
    runtime.mqtt._answers = AnswerSubscriptions("dev", broker.subscribe, broker.unsubscribe)
    runtime.mqtt._client = broker  # type: ignore[assignment]
    return runtime


@pytest.mark.parametrize("poll", ["_poll_inventories", "_poll_health"])
async def test_a_base_whose_answers_the_broker_refuses_does_not_stop_the_poll_of_the_others(
    poll: str,
) -> None:
    broker = Broker(refused={"b1"})
    async with client.ApiClient() as api:
        runtime = runtime_on(api, broker, ["b1", "b2", "b3"])
        await getattr(runtime, poll)()
    asked = sorted(topic.split("/")[1] for topic in broker.published)
    assert asked == ["b2", "b3"], f"the poll stopped at the refused base: {broker.published}"


async def test_the_answers_of_a_base_that_left_are_unsubscribed() -> None:
    """A base's answer subscriptions go with it, connected or not: without that they
    piled up, at the broker and here, one per base that ever came, and were carried from
    connection to connection."""
    broker = Broker()
    async with client.ApiClient() as api:
        runtime = runtime_on(api, broker, ["b1", "b2"])
        tunnel = runtime.mqtt
        assert tunnel is not None and tunnel._answers is not None
        await runtime._poll_inventories()
        assert sorted(tunnel._answers.bases()) == ["b1", "b2"]
        leaving = heartbeat("b1")
        deactivated = leaving.status.model_copy(update={"state": BizState.DEACTIVATED})
        assert runtime.registry.heartbeat("b1", deactivated), "b1 did not leave"
        await runtime._poll_inventories()
        await _settled(lambda: ("unsubscribe", per_base_subscriptions("dev", "b1")) in broker.calls)
        assert tunnel._answers.bases() == ["b2"]
        # Disconnected: the bases to subscribe again on the next connection.
        tunnel._answered, tunnel._answers = ["b1", "b2"], None
        await runtime._poll_inventories()
        assert tunnel._answered == ["b2"]


async def _settled(condition: Callable[[], bool]) -> None:
    for _ in range(20):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("not settled after 20 loop turns")
