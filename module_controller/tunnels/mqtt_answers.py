"""Per-base subscriptions to a base's answers, made by the replica that commands it.

Every replica hears every heartbeat (a wildcard), but a base's answers (health, module
lists, install and uninstall results) are subscribed only by a replica about to send it a
command, as the Go controller subscribes them once it owns the base. With several replicas,
each then receives the answers of its own bases only, not those of the whole fleet.

A command waits for its base's subscription to be acknowledged (SUBACK), so its answer
cannot come before the broker routes it here. The subscriptions belong to one connection
(the session is clean): a new connection subscribes again the bases of the last one before
it is used, so an answer to a command sent before the reconnect still comes (the Go
controller forgets to), and any other base before its next command.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence

import aiomqtt

from module_controller.protocol.topics import per_base_subscriptions
from module_controller.tunnels.events import TunnelUnavailable

log = logging.getLogger(__name__)

# A refused subscription, in a SUBACK's granted QoS (MQTT 3.1.1 §3.9.3).
REFUSED = 0x80


class AnswersRefused(TunnelUnavailable):
    """The broker refused one base's answer topics (its ACL): the connection is fine, and
    other bases' may well not be refused."""


Subscribe = Callable[[list[tuple[str, int]]], Awaitable[Sequence[object]]]
Unsubscribe = Callable[[list[str]], Awaitable[object]]


class AnswerSubscriptions:
    """The bases whose answer topics one broker connection is subscribed to."""

    def __init__(self, env: str, subscribe: Subscribe, unsubscribe: Unsubscribe) -> None:
        self._env = env
        self._subscribe = subscribe
        self._unsubscribe = unsubscribe
        # identity -> its subscription, done or in flight (shared by concurrent commands).
        self._subscriptions: dict[str, asyncio.Task[None]] = {}
        self._unsubscribing: set[asyncio.Task[None]] = set()

    @classmethod
    def of(cls, env: str, client: aiomqtt.Client) -> AnswerSubscriptions:
        async def subscribe(topics: list[tuple[str, int]]) -> Sequence[object]:
            return await client.subscribe(topics)

        async def unsubscribe(topics: list[str]) -> None:
            await client.unsubscribe(topics)

        return cls(env, subscribe, unsubscribe)

    def subscribed(self, identity: str) -> bool:
        task = self._subscriptions.get(identity)
        return task is not None and task.done() and not _failed(task)

    def bases(self) -> list[str]:
        """The bases whose answers are subscribed here, being subscribed, or failed to be
        (a restore that timed out on a dying connection): the next connection's to restore."""
        return list(self._subscriptions)

    async def restore(self, identities: Iterable[str]) -> None:
        """On a new connection, subscribe again the bases of the last one, and wait for
        their SUBACKs: an answer to a command sent before the reconnect (an install takes
        seconds) still comes here. A failure is tried again before the base's next command."""
        subscriptions = [self._subscription(identity) for identity in identities]
        await asyncio.gather(*subscriptions, return_exceptions=True)

    def _subscription(self, identity: str) -> asyncio.Task[None]:
        task = self._subscriptions.get(identity)
        if task is None or _failed(task):
            task = asyncio.create_task(self._subscribe_base(identity), name=f"sub-{identity}")
            self._subscriptions[identity] = task
            task.add_done_callback(_failed)  # its failure is retrieved, whoever waits
        return task

    async def ensure(self, identity: str) -> None:
        """Return once the base's answers come here; raises TunnelUnavailable if they
        cannot (then the next command tries again)."""
        task = self._subscription(identity)
        try:
            # Shielded: a caller giving up must not cancel it for the others waiting on it.
            await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and (current is None or not current.cancelling()):
                raise TunnelUnavailable(
                    f"the broker connection ended while subscribing to base {identity}"
                ) from None
            raise

    def forget(self, identity: str) -> None:
        """Another replica commands the base now, or it left: its answers are not ours."""
        task = self._subscriptions.get(identity)
        if task is None or not task.done():
            return  # in flight: the next answer of another replica's tells us again
        del self._subscriptions[identity]
        if _failed(task):
            return
        topics = per_base_subscriptions(self._env, identity)
        leaving = asyncio.create_task(self._unsubscribe_base(identity, topics))
        self._unsubscribing.add(leaving)
        leaving.add_done_callback(self._unsubscribing.discard)

    def close(self) -> None:
        """The connection is gone, and its subscriptions with it: commands waiting for one
        fail now rather than at its timeout (aiomqtt does not fail them on a disconnect)."""
        for task in [*self._subscriptions.values(), *self._unsubscribing]:
            task.cancel()
            _failed(task)  # retrieved: no "exception was never retrieved" warning
        self._subscriptions.clear()

    async def _subscribe_base(self, identity: str) -> None:
        topics = per_base_subscriptions(self._env, identity)
        try:
            granted = await self._subscribe([(topic, 1) for topic in topics])
        except aiomqtt.MqttError as error:
            raise TunnelUnavailable(
                f"subscribing to the answers of base {identity} failed: {error}"
            ) from error
        refused = [topic for topic, qos in zip(topics, granted, strict=False) if _refused(qos)]
        if refused:
            raise AnswersRefused(
                f"the broker refused the subscription to {', '.join(refused)}: does its ACL "
                "let the controller read its bases' answers?"
            )
        log.debug("Subscribed to the answers of base %s.", identity)

    async def _unsubscribe_base(self, identity: str, topics: list[str]) -> None:
        try:
            await self._unsubscribe(topics)
        except aiomqtt.MqttError as error:
            # Harmless: its answers still come, and are dropped as another replica's.
            log.debug("Unsubscribing the answers of base %s failed: %s", identity, error)


def _failed(task: asyncio.Task[None]) -> bool:
    return task.done() and (task.cancelled() or task.exception() is not None)


def _refused(granted: object) -> bool:
    value = getattr(granted, "value", granted)  # paho gives ints (3.1.1) or ReasonCodes (5)
    return isinstance(value, int) and value >= REFUSED
