"""Per-base answer subscriptions (tunnels/mqtt_answers.py): made before a base's first
command, shared, retried after a failure, dropped when another replica commands the base."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import aiomqtt
import pytest

from module_controller.protocol import now_ms
from module_controller.protocol.topics import per_base_subscriptions
from module_controller.settings import Settings
from module_controller.tunnels.events import TunnelUnavailable
from module_controller.tunnels.mqtt import MqttTunnel
from module_controller.tunnels.mqtt_answers import REFUSED, AnswerSubscriptions


class Broker:
    """Records (un)subscriptions in order; a SUBACK waits until `acknowledge` is set."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.acknowledge = asyncio.Event()
        self.acknowledge.set()
        self.grant = 1
        self.error: Exception | None = None

    async def subscribe(self, topics: list[tuple[str, int]]) -> Sequence[object]:
        self.calls.append(("subscribe", [topic for topic, _ in topics]))
        if self.error is not None:
            raise self.error
        await self.acknowledge.wait()
        return [self.grant] * len(topics)

    async def unsubscribe(self, topics: list[str]) -> None:
        self.calls.append(("unsubscribe", topics))

    def answers(self) -> AnswerSubscriptions:
        return AnswerSubscriptions("dev", self.subscribe, self.unsubscribe)


async def test_commands_wait_for_the_suback_and_share_one_subscription() -> None:
    broker = Broker()
    broker.acknowledge.clear()
    answers = broker.answers()
    first = asyncio.create_task(answers.ensure("b1"))
    second = asyncio.create_task(answers.ensure("b1"))
    await asyncio.sleep(0.01)
    assert not first.done() and not second.done(), "a command went before its SUBACK"
    broker.acknowledge.set()
    await asyncio.wait_for(asyncio.gather(first, second), 1)
    await answers.ensure("b1")
    assert broker.calls == [("subscribe", per_base_subscriptions("dev", "b1"))]
    assert answers.subscribed("b1") and not answers.subscribed("b2")


@pytest.mark.parametrize("trouble", ["refused", "error"])
async def test_a_failed_subscription_fails_the_command_and_the_next_one_tries_again(
    trouble: str,
) -> None:
    broker = Broker()
    if trouble == "refused":
        broker.grant = REFUSED
    else:
        broker.error = aiomqtt.MqttError("Operation timed out")
    answers = broker.answers()
    with pytest.raises(TunnelUnavailable) as failed:
        await answers.ensure("b1")
    assert ("ACL" if trouble == "refused" else "timed out") in str(failed.value)
    assert not answers.subscribed("b1")
    broker.grant, broker.error = 1, None
    await answers.ensure("b1")
    assert [call for call, _ in broker.calls] == ["subscribe", "subscribe"]
    assert answers.subscribed("b1")


async def test_a_base_another_replica_commands_is_unsubscribed_and_subscribed_again_later() -> None:
    broker = Broker()
    answers = broker.answers()
    await answers.ensure("b1")
    answers.forget("b1")
    answers.forget("b1")  # a second answer of theirs: nothing more to do
    assert not answers.subscribed("b1")
    await answers.ensure("b1")  # ours again: its answers must come here again
    await asyncio.sleep(0)
    topics = per_base_subscriptions("dev", "b1")
    assert broker.calls == [("subscribe", topics), ("unsubscribe", topics), ("subscribe", topics)]
    answers.forget("b2")  # never subscribed: nothing to undo
    assert len(broker.calls) == 3


async def waiting_for_a_suback(
    broker: Broker,
) -> tuple[AnswerSubscriptions, asyncio.Task[None]]:
    """A command to b1 waiting for a SUBACK the broker holds back."""
    broker.acknowledge.clear()
    answers = broker.answers()
    waiting = asyncio.create_task(answers.ensure("b1"))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    return answers, waiting


async def test_commands_waiting_when_the_connection_ends_fail_at_once() -> None:
    """aiomqtt leaves a SUBACK of a dead connection to its timeout (10 s)."""
    broker = Broker()
    answers, waiting = await waiting_for_a_suback(broker)
    answers.close()
    with pytest.raises(TunnelUnavailable, match="connection ended"):
        await asyncio.wait_for(waiting, 1)


async def test_a_cancelled_command_is_cancelled_not_failed() -> None:
    broker = Broker()
    answers, waiting = await waiting_for_a_suback(broker)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    broker.acknowledge.set()
    await answers.ensure("b1")  # the shared subscription went on
    assert len(broker.calls) == 1


async def test_another_replicas_answer_unsubscribes_its_base_but_a_heartbeat_does_not() -> None:
    broker = Broker()
    tunnel = MqttTunnel(Settings(), _ignore, not_ours=lambda identity: identity == "theirs")
    tunnel._answers = broker.answers()
    await tunnel._answers.ensure("theirs")  # it was ours once
    beat = json.dumps({"publishTimestamp": now_ms(), "data": {}}).encode()
    await tunnel._dispatch("koupleless_dev/theirs/base/heart", beat)
    assert tunnel._answers.subscribed("theirs")
    inventory = json.dumps({"publishTimestamp": now_ms(), "data": []}).encode()
    await tunnel._dispatch("koupleless_dev/theirs/base/simpleBiz", inventory)
    await asyncio.sleep(0)
    assert not tunnel._answers.subscribed("theirs")
    assert broker.calls[-1] == ("unsubscribe", per_base_subscriptions("dev", "theirs"))


async def test_no_command_goes_without_a_connection() -> None:
    tunnel = MqttTunnel(Settings(), _ignore)
    with pytest.raises(TunnelUnavailable, match="not connected"):
        await tunnel.query_health("b1")


async def _ignore(event: object) -> None:
    pass


async def test_a_subscription_that_failed_is_made_again_on_the_next_connection() -> None:
    """A connection that dies while its subscriptions are restored (they time out) must
    not lose the bases to subscribe again on the one after."""
    broker = Broker()
    answers = broker.answers()
    await answers.ensure("b1")
    broker.error = aiomqtt.MqttError("Operation timed out")
    await answers.restore(["b2"])
    assert sorted(answers.bases()) == ["b1", "b2"]
    broker.error = None
    following = broker.answers()
    await following.restore(answers.bases())
    assert following.subscribed("b1") and following.subscribed("b2")
