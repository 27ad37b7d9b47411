"""The MQTT tunnel: one broker connection, kept up for the operator's whole life.

It subscribes again after every reconnect (the Go controller loses its per-base
subscriptions on reconnect), decodes every message into the protocol's models before
anything else sees it, drops what is malformed, oversized, stale or spoofed with a counted
reason and a rate-limited log line, and publishes commands without the retain flag (the Go
controller's retained commands replay on every base reconnect).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import aiomqtt
from pydantic import BaseModel

from module_controller import naming
from module_controller.lograte import RateLimitedLog
from module_controller.protocol import (
    ArkletCommand,
    BaseTopic,
    BizModel,
    Envelope,
    ProtocolError,
    command_topic,
    decode_base_message,
    encode,
    now_ms,
)
from module_controller.protocol.biz import Baseline
from module_controller.protocol.messages import (
    AGE_CHECKED_TOPICS,
    BatchInstallMessage,
    BizOperationMessage,
    HealthMessage,
    HeartMessage,
    LegacyBizMessage,
    QueryBaselineMessage,
    SimpleBizMessage,
)
from module_controller.protocol.topics import base_topic, env_root
from module_controller.settings import Settings
from module_controller.tasks import raise_if_cancelling
from module_controller.tunnels.events import (
    BaseHealthReport,
    BaseHeartbeat,
    BaseInventory,
    BaselineQuery,
    BatchInstallResult,
    BizOperationResult,
    BrokerConnected,
    BrokerDisconnected,
    TunnelEvent,
)
from module_controller.tunnels.mqtt_errors import describe_mqtt_error
from module_controller.tunnels.tls import mqtt_tls_context

log = logging.getLogger(__name__)

# The base -> controller topics the operator listens to, for every base of its env.
SUBSCRIBED_KINDS = (
    BaseTopic.HEART,
    BaseTopic.QUERY_BASELINE,
    BaseTopic.HEALTH,
    BaseTopic.SIMPLE_BIZ,
    BaseTopic.BIZ,
    BaseTopic.BIZ_OPERATION,
    BaseTopic.BATCH_INSTALL_BIZ_RESPONSE,
)


class TunnelUnavailable(RuntimeError):
    """A command could not be sent because the broker connection is down."""


class DropReason:
    # The same words as the metrics' MqttDropReason label values.
    OVERSIZED = "oversized"
    UNKNOWN_TOPIC = "unknown_topic"
    BAD_IDENTITY = "bad_identity"
    MALFORMED = "malformed"
    STALE = "stale"
    IDENTITY_MISMATCH = "identity_mismatch"
    FAILED_REPLY = "failed_reply"
    CLIENT_QUEUE_FULL = "client_queue_full"


Publisher = Callable[[str, bytes], Awaitable[None]]
LOGGED_TEXT_LIMIT = 300


def _shorten(value: str | Exception) -> str:
    text = str(value)
    if len(text) <= LOGGED_TEXT_LIMIT:
        return text
    return f"{text[:LOGGED_TEXT_LIMIT]}... ({len(text)} characters)"


DropHook = Callable[[str], None]


class MessageDecoder:
    """Bytes and topic in, a TunnelEvent (or a counted drop) out. No I/O: unit-testable."""

    def __init__(
        self, settings: Settings, on_drop: DropHook | None = None, clock: Callable[[], int] = now_ms
    ) -> None:
        self.settings = settings
        self.dropped: Counter[str] = Counter()
        self._on_drop = on_drop
        self._clock = clock
        self._log = RateLimitedLog(log)

    def record_drop(self, reason: str, message: str, *args: object) -> None:
        self.dropped[reason] += 1
        if self._on_drop is not None:
            self._on_drop(reason)
        # A hostile payload may be megabytes; its error text quotes it. Say enough, not all.
        shown = tuple(_shorten(arg) if isinstance(arg, str | Exception) else arg for arg in args)
        self._log.warning(reason, "Dropped an MQTT message: " + message, *shown)

    def decode(self, topic: str, payload: bytes) -> TunnelEvent | None:
        """The event a message carries, or None when it was dropped; never raises."""
        try:
            return self._decode(topic, payload)
        except Exception as error:  # a bug in decoding must cost one message, not the tunnel
            self.record_drop(DropReason.MALFORMED, "%s could not be decoded: %r", topic, error)
            return None

    def _decode(self, topic: str, payload: bytes) -> TunnelEvent | None:
        if len(payload) > self.settings.max_message_bytes:
            self.record_drop(DropReason.OVERSIZED, "%d bytes on %s", len(payload), topic)
            return None
        try:
            parsed, message = decode_base_message(topic, payload)
        except ProtocolError as error:
            reason = DropReason.UNKNOWN_TOPIC if error.what == "topic" else DropReason.MALFORMED
            self.record_drop(reason, "%s (topic %s)", error, topic)
            return None
        identity = parsed.identity
        bad = naming.invalid_identity_reason(identity)
        if bad is not None:
            self.record_drop(DropReason.BAD_IDENTITY, "identity %r refused: %s", identity[:80], bad)
            return None
        kind = parsed.base_kind
        assert isinstance(message, Envelope)
        if kind in AGE_CHECKED_TOPICS:
            max_age_ms = int(self.settings.message_max_age_seconds * 1000)
            age_ms = self._clock() - message.publish_timestamp
            if age_ms >= max_age_ms:
                self.record_drop(
                    DropReason.STALE,
                    "%s from %s is %.1fs old (limit %.0fs; are the clocks in sync?)",
                    kind,
                    identity,
                    age_ms / 1000,
                    self.settings.message_max_age_seconds,
                )
                return None
        return self._event(identity, message)

    def _event(self, identity: str, message: BaseModel) -> TunnelEvent | None:
        if isinstance(message, HeartMessage):
            if message.data.base_metadata.identity != identity:
                self.record_drop(
                    DropReason.IDENTITY_MISMATCH,
                    "heartbeat on the topic of %s claims identity %r",
                    identity,
                    message.data.base_metadata.identity[:80],
                )
                return None
            return BaseHeartbeat(identity, message.data)
        if isinstance(message, QueryBaselineMessage):
            return BaselineQuery(identity, message.data)
        if isinstance(message, HealthMessage):
            reply = message.data
            if not reply.ok or reply.data is None:
                self.record_drop(
                    DropReason.FAILED_REPLY, "health of %s failed: %s", identity, reply.message
                )
                return None
            return BaseHealthReport(identity, reply.data.health_data)
        if isinstance(message, SimpleBizMessage):
            return BaseInventory(identity, tuple(message.data))
        if isinstance(message, LegacyBizMessage):
            return self._legacy_inventory(identity, message)
        if isinstance(message, BizOperationMessage):
            return BizOperationResult(identity, message.data)
        if isinstance(message, BatchInstallMessage):
            return BatchInstallResult(identity, message.data)
        self.record_drop(DropReason.UNKNOWN_TOPIC, "no handler for %s", type(message).__name__)
        return None

    def _legacy_inventory(self, identity: str, message: LegacyBizMessage) -> TunnelEvent | None:
        """Runtime 1.3.0/1.3.1 report the inventory as full BizInfo beans."""
        from module_controller.protocol import SimpleBizInfo
        from module_controller.protocol.states import BizState

        reply = message.data
        if not reply.ok or reply.data is None:
            self.record_drop(
                DropReason.FAILED_REPLY, "biz list of %s failed: %s", identity, reply.message
            )
            return None
        modules = tuple(
            SimpleBizInfo(
                name=info.biz_name,
                version=info.biz_version,
                state=info.biz_state or BizState.UNRESOLVED,
                latest_state_record=max(
                    info.biz_state_records or [], key=lambda r: r.change_time, default=None
                ),
            )
            for info in reply.data
        )
        return BaseInventory(identity, modules)


def subscriptions(env: str) -> list[str]:
    return [f"{env_root(env)}/+/base/{kind}" for kind in SUBSCRIBED_KINDS]


def mqtt_client_id(settings: Settings) -> str:
    """The operator's MQTT client id, as the Go controller forms it."""
    return f"{settings.mqtt_client_prefix}@@@{settings.client_id}"


def probe_topic(settings: Settings) -> str:
    """The topic of the operator's own probe: only it publishes and listens there.

    Under the env's root, where a broker's ACL most likely lets the controller in, and
    never matching the bases' `<root>/+/base/...` subscriptions.
    """
    client = re.sub(r"[^A-Za-z0-9_.@-]", "_", mqtt_client_id(settings))
    return f"{env_root(settings.env)}/module-controller/{client}/probe"


def _bounded_client_queue(on_full: Callable[[], None]) -> type[asyncio.Queue[aiomqtt.Message]]:
    """aiomqtt's incoming queue, bounded, counting what it must discard when full.

    It fills only while the operator's own (bounded) inbox makes the reader wait; aiomqtt
    then discards and logs, and we count it: a lost reply is found again by the next
    inventory poll, a lost heartbeat by the next one.
    """

    class CountingQueue(asyncio.Queue[aiomqtt.Message]):
        def put_nowait(self, item: aiomqtt.Message) -> None:
            try:
                super().put_nowait(item)
            except asyncio.QueueFull:
                on_full()
                raise

    return CountingQueue


class MqttTunnel:
    """Keeps one connection to the broker and turns its messages into TunnelEvents."""

    def __init__(
        self,
        settings: Settings,
        deliver: Callable[[TunnelEvent], Awaitable[None]],
        *,
        on_drop: DropHook | None = None,
        on_reconnect: Callable[[], None] | None = None,
        on_published: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.decoder = MessageDecoder(settings, on_drop)
        self.connected = asyncio.Event()
        self.connections = 0
        # When a message last came through the broker (any topic, our probe included).
        self.last_delivery = time.monotonic()
        self.probe_topic = probe_topic(settings)
        # Whether our probe came back on this connection: a broker whose ACL denies the
        # probe topic still delivers the bases' messages, which then are the only proof.
        self.probe_returned = False
        self._deliver = deliver
        self._client: aiomqtt.Client | None = None
        self._on_reconnect = on_reconnect
        self._on_published = on_published
        self._tls = mqtt_tls_context(
            settings.mqtt_ca_path, settings.mqtt_client_crt_path, settings.mqtt_client_key_path
        )

    @property
    def client_id(self) -> str:
        return mqtt_client_id(self.settings)

    def _new_client(self) -> aiomqtt.Client:
        client = aiomqtt.Client(
            self.settings.mqtt_broker,
            self.settings.mqtt_port,
            username=self.settings.mqtt_username or None,
            password=self.settings.mqtt_password or None,
            identifier=self.client_id,
            clean_session=True,
            keepalive=self.settings.mqtt_keepalive_seconds,
            timeout=10,
            tls_context=self._tls,
            queue_type=_bounded_client_queue(self._client_queue_full),
            max_queued_incoming_messages=self.settings.event_queue_size,
        )
        # Hundreds of bases starting together mean hundreds of baseline answers in flight;
        # that is normal here, not the warning aiomqtt prints past 10.
        client.pending_calls_threshold = 10_000
        return client

    async def run(self) -> None:
        """Connect, subscribe, dispatch; on any broker trouble, back off and do it all again."""
        delay = 1.0
        while True:
            client = self._new_client()
            try:
                async with client:
                    for topic in subscriptions(self.settings.env):
                        await client.subscribe(topic, qos=1)
                    await client.subscribe(self.probe_topic, qos=0)
                    self.last_delivery = time.monotonic()
                    self.probe_returned = False
                    self._client = client
                    self.connections += 1
                    if self.connections > 1 and self._on_reconnect is not None:
                        self._on_reconnect()
                    self.connected.set()
                    log.info(
                        "Connected to the MQTT broker %s:%d as %s; listening on %s/+/base/...",
                        self.settings.mqtt_broker,
                        self.settings.mqtt_port,
                        self.client_id,
                        env_root(self.settings.env),
                    )
                    await self._deliver(BrokerConnected())
                    delay = 1.0
                    stop_probing = asyncio.Event()
                    prober = asyncio.create_task(
                        self._probe(client, stop_probing), name="mqtt-probe"
                    )
                    try:
                        async for message in client.messages:
                            self.last_delivery = time.monotonic()
                            topic = str(message.topic)
                            if topic == self.probe_topic:
                                self.probe_returned = True
                            else:
                                await self._dispatch(topic, message.payload)
                    finally:
                        # The flag, not only the cancel: Python 3.11's wait_for (inside
                        # aiomqtt's publish) can swallow a cancellation, leaving this hung.
                        stop_probing.set()
                        prober.cancel()
                        await asyncio.gather(prober, return_exceptions=True)
            except aiomqtt.MqttError as error:
                raise_if_cancelling()
                reason = describe_mqtt_error(error, self.settings)
                log.warning(
                    "The MQTT broker %s:%d is unreachable (%s); retrying in %.0fs.",
                    self.settings.mqtt_broker,
                    self.settings.mqtt_port,
                    reason,
                    delay,
                )
            else:  # the message stream ended without an error: treat it as a disconnect
                reason = "the broker closed the connection"
            finally:
                was_connected = self._client is client
                self._client = None
                self.connected.clear()
            # Also when it never connected: /readyz must say why, not "not reported yet".
            await self._deliver(BrokerDisconnected(reason, was_connected))
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.mqtt_reconnect_max_seconds)

    def _client_queue_full(self) -> None:
        self.decoder.record_drop(
            DropReason.CLIENT_QUEUE_FULL,
            "the MQTT client's incoming queue is full (%d messages): the dispatcher is behind",
            self.settings.event_queue_size,
        )

    def delivery_silence(self) -> float | None:
        """Seconds since a message last came through the broker; None when disconnected."""
        if not self.connected.is_set():
            return None
        return time.monotonic() - self.last_delivery

    async def _probe(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        """Send ourselves a message every few seconds, to prove the broker delivers.

        A frozen broker keeps the TCP connection open and answers nothing: without this,
        its silence would look like every base going silent at once.
        """
        period = self.settings.broker_probe_seconds
        number = 0
        while not stop.is_set():
            number += 1
            try:
                # QoS 0 and a bound: a frozen broker must not hold this loop.
                async with asyncio.timeout(period):
                    await client.publish(self.probe_topic, str(number).encode(), qos=0)
            except (aiomqtt.MqttError, TimeoutError) as error:
                log.debug("The broker probe could not be sent: %s", error)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(period):
                    await stop.wait()

    async def _dispatch(self, topic: str, payload: object) -> None:
        if isinstance(payload, bytes | bytearray):
            raw = bytes(payload)
        elif isinstance(payload, str):
            raw = payload.encode()
        else:
            raw = b""
        event = self.decoder.decode(topic, raw)
        if event is not None:
            await self._deliver(event)

    async def _publish(self, topic: str, payload: bytes) -> None:
        client = self._client
        if client is None:
            raise TunnelUnavailable(f"not connected to the MQTT broker; {topic} not sent")
        try:
            await client.publish(topic, payload, qos=1, retain=False)
        except aiomqtt.MqttError as error:
            raise TunnelUnavailable(f"publishing {topic} failed: {error}") from error
        if self._on_published is not None:
            self._on_published(topic.rsplit("/", 1)[-1])

    async def query_health(self, identity: str) -> None:
        await self._publish(command_topic(self.settings.env, identity, ArkletCommand.HEALTH), b"{}")

    async def query_all_biz(self, identity: str) -> None:
        topic = command_topic(self.settings.env, identity, ArkletCommand.QUERY_ALL_BIZ)
        await self._publish(topic, b"{}")

    async def install_biz(self, identity: str, biz: BizModel) -> None:
        topic = command_topic(self.settings.env, identity, ArkletCommand.INSTALL_BIZ)
        await self._publish(topic, encode(biz))

    async def uninstall_biz(self, identity: str, biz: BizModel) -> None:
        topic = command_topic(self.settings.env, identity, ArkletCommand.UNINSTALL_BIZ)
        await self._publish(topic, encode(biz))

    async def send_baseline(self, identity: str, modules: list[BizModel]) -> None:
        topic = base_topic(self.settings.env, identity, BaseTopic.BASELINE)
        await self._publish(topic, encode(Baseline(modules)))
