"""The MQTT tunnel: one broker connection, kept up for the operator's whole life.

It subscribes every base's heartbeats, and a base's answers only before sending it a
command (tunnels/mqtt_answers.py), again on every connection (the Go controller loses its
per-base subscriptions on reconnect). It decodes every message into the protocol's models
before anything else sees it, drops what is malformed, oversized, stale or spoofed with a counted
reason and a rate-limited log line, and publishes commands at QoS 0 as the Go controller
does, but without its retain flag (its retained commands replay on every base reconnect).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable

import aiomqtt

from module_controller.protocol import (
    ArkletCommand,
    BaseTopic,
    BizModel,
    command_topic,
    encode,
)
from module_controller.protocol.biz import Baseline
from module_controller.protocol.topics import PER_BASE_TOPICS, base_topic, env_root
from module_controller.settings import Settings
from module_controller.tasks import raise_if_cancelling
from module_controller.tunnels.decoder import DropHook, DropReason, MessageDecoder
from module_controller.tunnels.events import (
    BrokerConnected,
    BrokerDisconnected,
    TunnelEvent,
    TunnelUnavailable,
)
from module_controller.tunnels.mqtt_answers import AnswerSubscriptions
from module_controller.tunnels.mqtt_errors import describe_mqtt_error
from module_controller.tunnels.mqtt_incoming import Acknowledgements, bounded_queue, incoming
from module_controller.tunnels.mqtt_reading import read_in_batches
from module_controller.tunnels.tls import mqtt_tls_context

log = logging.getLogger(__name__)

# The base -> controller topics every replica listens to, for every base of its env.
WILDCARD_KINDS = (BaseTopic.HEART, BaseTopic.QUERY_BASELINE)
# All it may receive: the rest only from the bases it commands (tunnels/mqtt_answers.py).
SUBSCRIBED_KINDS = WILDCARD_KINDS + PER_BASE_TOPICS
_ANSWER_KINDS = frozenset(PER_BASE_TOPICS)


# Heartbeats come at QoS 0, past the broker's in-flight window of QoS 1 messages, which
# caps those at 20 per round trip through our event loop. On a box short of CPU, at 1,000
# bases, heartbeats waited behind that window in the broker's queue, and it dropped some
# when full: live bases went silent, though the operator's probe (QoS 0) came back on time.
# At QoS 0 they travel the probe's own path, so a late probe says they are late too
# (intake_lag). A lost heartbeat costs nothing: the next one comes a period later.
WILDCARD_QOS = {BaseTopic.HEART: 0, BaseTopic.QUERY_BASELINE: 1}
# Probes sent and not yet back that are remembered (the oldest: they tell the lag).
PROBES_REMEMBERED = 100


def subscriptions(env: str) -> list[str]:
    """The wildcards subscribed on every connection."""
    return [f"{env_root(env)}/+/base/{kind}" for kind in WILDCARD_KINDS]


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


class _QueueFullLines(logging.Filter):
    """aiomqtt logs every message its full queue discards; the tunnel says it, rate-limited."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "queue is full" not in record.getMessage()


class _TlsAlerts(logging.Filter):
    """Keeps the last TLS alert paho logs: a broker that refuses our client certificate
    says so only in an alert after the handshake, and the connect then merely times out.

    Its alert can be lost: closing a socket with our CONNECT still unread makes the kernel
    reset the connection, and what we had not read yet (the alert) goes with it. paho then
    logs an EOF "in violation of protocol" instead, kept here unless an alert came."""

    last: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "alert" in text.lower() and "SSL" in text:
            _TlsAlerts.last = text.rsplit("] ", 1)[-1].split(" (_ssl", 1)[0]
        elif "EOF occurred in violation of protocol" in text and _TlsAlerts.last is None:
            _TlsAlerts.last = "closed at once, its alert lost"
        return True


_client_log = logging.getLogger(__name__ + ".client")
_client_log.addFilter(_QueueFullLines())
_client_log.addFilter(_TlsAlerts())


# Arklet commands go at QoS 0, as the Go controller sends them. At QoS 1 the base
# acknowledges the command first, and an answer it sends at once then waits in its socket
# for the broker's delayed TCP ACK of that PUBACK (Nagle's algorithm, which paho leaves
# on): 43.6 ms a round trip against 1.3 ms, measured here on Mosquitto 2.0.11.
# QoS 1 bought nothing in return: a command lost with the connection is not sent again on
# reconnect either way, but when its answer is overdue (the planner's timeouts and polls).
COMMAND_QOS = 0

# Decoded whoever owns the base: its liveness. (A replica taking a base over starts from
# the memory figures its node shows, not from health answers it never received.)
HEARD_FROM_EVERY_BASE = frozenset({BaseTopic.HEART})


def _send_at_once(client: aiomqtt.Client) -> None:
    """Turn Nagle's algorithm off on the connection's socket.

    With it on, a command waited in our socket while an earlier write (a PUBACK: we
    acknowledge every QoS 1 message a base sends; heartbeats were QoS 1 then) was not yet
    acknowledged by the broker's TCP, which delays its ACKs: pod bound -> base got
    installBiz took 22 ms p50 with one replica at 150 bases x 5 pods, 3 ms with this
    (benchmarks/replica_scale.py).
    """
    sock = client._client.socket()
    if isinstance(sock, socket.socket):  # TLS sockets too; not a websocket's wrapper
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


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
        not_ours: Callable[[str], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.decoder = MessageDecoder(settings, on_drop)
        self.connected = asyncio.Event()
        self.connections = 0
        # When a message last came through the broker (any topic, our probe included).
        self.last_delivery = time.monotonic()
        self.probe_topic = probe_topic(settings)
        # How long aiomqtt waits for the broker's answer to a connect (and a subscribe): a
        # broker that drops a refused TLS session silently costs this much per attempt.
        self.answer_timeout = 10.0
        # Whether our probe came back on this connection: a broker whose ACL denies the
        # probe topic still delivers the bases' messages, which then are the only proof.
        self.probe_returned = False
        # (number, when sent) of the probes not back yet, oldest first.
        self._probes_out: deque[tuple[int, float]] = deque()
        # How long the last probe back took: the oldest probe out alone reads low by up to a
        # probe period (it was sent after the last one back).
        self._last_round_trip = 0.0
        self._deliver = deliver
        self._waiting_on_inbox = False
        self._client: aiomqtt.Client | None = None
        self._answers: AnswerSubscriptions | None = None  # those of self._client
        # The bases subscribed on the last connection, while none is up: to subscribe again.
        self._answered: list[str] = []
        self._acks = Acknowledgements(settings.event_queue_size)  # no connection yet
        self._on_reconnect = on_reconnect
        self._on_published = on_published
        # identity -> whether another replica owns the base: its messages other than its
        # heartbeat are not decoded here (every replica hears every heartbeat; answers come
        # on the subscriptions of the replica commanding the base; see shards/).
        self._not_ours = not_ours
        self._tls = mqtt_tls_context(
            settings.mqtt_ca_path, settings.mqtt_client_crt_path, settings.mqtt_client_key_path
        )

    @property
    def client_id(self) -> str:
        return mqtt_client_id(self.settings)

    def _new_client(self) -> aiomqtt.Client:
        # One per connection: a packet id means nothing on another, where a PUBACK for it
        # would acknowledge whichever message holds that id there.
        acks = self._acks = Acknowledgements(self.settings.event_queue_size)

        def discarded(message: aiomqtt.Message) -> None:
            self._client_queue_full()
            acks.dropped(message)

        client = aiomqtt.Client(
            self.settings.mqtt_broker,
            self.settings.mqtt_port,
            username=self.settings.mqtt_username or None,
            password=self.settings.mqtt_password or None,
            identifier=self.client_id,
            clean_session=True,
            keepalive=self.settings.mqtt_keepalive_seconds,
            timeout=self.answer_timeout,
            tls_context=self._tls,
            queue_type=bounded_queue(discarded, acks.arrived),
            max_queued_incoming_messages=self.settings.event_queue_size,
            logger=_client_log,
        )
        acks.attach(client)
        read_in_batches(client._client)
        # Backpressure to the broker (mqtt_incoming.py): paho would acknowledge every
        # message on arrival. aiomqtt has no option for it; paho's client has.
        client._client.manual_ack_set(True)
        # Hundreds of bases starting together mean hundreds of baseline answers in flight;
        # that is normal here, not the warning aiomqtt prints past 10.
        client.pending_calls_threshold = 10_000
        return client

    async def run(self) -> None:
        """Connect, subscribe, dispatch; on any broker trouble, back off and do it all again."""
        delay = 1.0
        while True:
            client = self._new_client()
            acks = self._acks
            _TlsAlerts.last = None  # only what this attempt hears counts
            try:
                async with client:
                    _send_at_once(client)
                    for kind, topic in zip(
                        WILDCARD_KINDS, subscriptions(self.settings.env), strict=True
                    ):
                        await client.subscribe(topic, qos=WILDCARD_QOS[kind])
                    await client.subscribe(self.probe_topic, qos=0)
                    self.last_delivery = time.monotonic()
                    self.probe_returned = False
                    self._probes_out.clear()
                    self._last_round_trip = 0.0
                    answers = AnswerSubscriptions.of(self.settings.env, client)
                    await answers.restore(
                        identity
                        for identity in self._answered
                        if self._not_ours is None or not self._not_ours(identity)
                    )
                    self._answers = answers
                    self._answered = []  # answers.bases() from now on
                    self._client = client
                    self.connections += 1
                    if self.connections > 1 and self._on_reconnect is not None:
                        self._on_reconnect()
                    self.connected.set()
                    log.info(
                        "Connected to the MQTT broker %s:%d as %s; listening on %s/+/base/heart",
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
                        async for message in incoming(client):
                            self.last_delivery = time.monotonic()
                            topic = str(message.topic)
                            if topic == self.probe_topic:
                                self._probe_back(message.payload)
                            else:
                                await self._dispatch(topic, message.payload)
                            acks.handled(message)
                    finally:
                        # The flag, not only the cancel: Python 3.11's wait_for (inside
                        # aiomqtt's publish) can swallow a cancellation, leaving this hung.
                        stop_probing.set()
                        prober.cancel()
                        await asyncio.gather(prober, return_exceptions=True)
            except aiomqtt.MqttError as error:
                raise_if_cancelling()
                reason = describe_mqtt_error(error, self.settings)
                if _TlsAlerts.last is not None and self._client is not client:
                    reason = (
                        f"the broker ended the TLS session ({_TlsAlerts.last}): does it trust "
                        "the CA of MQTT_CLIENT_CRT_PATH, and is the certificate still valid?"
                    )
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
                if self._answers is not None:
                    self._answered = self._answers.bases()  # subscribed again on the next
                    self._answers.close()
                    self._answers = None
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
        """Seconds since a message last came through the broker; None when disconnected.

        0 while the reader waits for a full inbox: the operator is behind, and a silence
        it makes itself must not pass for a frozen broker."""
        if not self.connected.is_set():
            return None
        if self._waiting_on_inbox:
            return 0.0
        return time.monotonic() - self.last_delivery

    def intake_lag(self) -> float | None:
        """How late messages reach us now: how long the last probe back took, or, when
        longer, how long the oldest of our probes not yet back has been out. None when
        disconnected.

        The probe queues behind the heartbeats, at the broker, in our socket and in the
        client's queue: when it is late, so are they, whether the broker or we are slow."""
        if not self.connected.is_set():
            return None
        if not self._probes_out:
            return self._last_round_trip
        return max(self._last_round_trip, time.monotonic() - self._probes_out[0][1])

    def _probe_back(self, payload: object) -> None:
        self.probe_returned = True
        try:
            number = int(payload) if isinstance(payload, bytes | str) else -1
        except ValueError:
            return  # not one of ours
        while self._probes_out and self._probes_out[0][0] <= number:
            _, sent = self._probes_out.popleft()
            self._last_round_trip = time.monotonic() - sent

    def _probe_sent(self, number: int) -> None:
        # When too many are out, the oldest are kept: they tell how late the intake is.
        if len(self._probes_out) < PROBES_REMEMBERED:
            self._probes_out.append((number, time.monotonic()))

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
                self._probe_sent(number)  # first: it may be back before publish() returns
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
        parts = topic.split("/")
        if (
            self._not_ours is not None
            and len(parts) == 4
            and parts[3] not in HEARD_FROM_EVERY_BASE
            and self._not_ours(parts[1])
        ):
            # Another replica's base: it decodes and acts on this one. Its answers came on
            # our subscription of when it was ours: they are not ours to receive now.
            if self._answers is not None and parts[3] in _ANSWER_KINDS:
                self._answers.forget(parts[1])
            return
        event = self.decoder.decode(topic, raw)
        if event is None:
            return
        self._waiting_on_inbox = True
        try:
            await self._deliver(event)
        finally:
            self._waiting_on_inbox = False
            # Time spent waiting for a full inbox was ours, not the broker's silence.
            self.last_delivery = time.monotonic()

    async def _publish(self, topic: str, payload: bytes, *, qos: int = COMMAND_QOS) -> None:
        client = self._client
        if client is None:
            raise TunnelUnavailable(f"not connected to the MQTT broker; {topic} not sent")
        try:
            await client.publish(topic, payload, qos=qos, retain=False)
        except aiomqtt.MqttError as error:
            raise TunnelUnavailable(f"publishing {topic} failed: {error}") from error
        if self._on_published is not None:
            self._on_published(topic.rsplit("/", 1)[-1])

    def forget_answers(self, gone: Callable[[str], bool]) -> None:
        """Unsubscribe the answers of the bases that left (`gone`): one that comes back is
        subscribed again before its next command."""
        self._answered = [identity for identity in self._answered if not gone(identity)]
        if self._answers is not None:
            for identity in self._answers.bases():
                if gone(identity):
                    self._answers.forget(identity)

    async def _command(
        self, identity: str, topic: str, payload: bytes, *, qos: int = COMMAND_QOS
    ) -> None:
        """Send a command once the base's answers are subscribed here, so none is missed."""
        answers = self._answers
        if answers is None:
            raise TunnelUnavailable(f"not connected to the MQTT broker; {topic} not sent")
        await answers.ensure(identity)
        if self._answers is not answers:
            raise TunnelUnavailable(f"the broker connection changed; {topic} not sent")
        await self._publish(topic, payload, qos=qos)

    def _arklet(self, identity: str, command: ArkletCommand) -> str:
        return command_topic(self.settings.env, identity, command)

    async def query_health(self, identity: str) -> None:
        await self._command(identity, self._arklet(identity, ArkletCommand.HEALTH), b"{}")

    async def query_all_biz(self, identity: str) -> None:
        await self._command(identity, self._arklet(identity, ArkletCommand.QUERY_ALL_BIZ), b"{}")

    async def install_biz(self, identity: str, biz: BizModel) -> None:
        topic = self._arklet(identity, ArkletCommand.INSTALL_BIZ)
        await self._command(identity, topic, encode(biz))

    async def uninstall_biz(self, identity: str, biz: BizModel) -> None:
        topic = self._arklet(identity, ArkletCommand.UNINSTALL_BIZ)
        await self._command(identity, topic, encode(biz))

    async def send_baseline(self, identity: str, modules: list[BizModel]) -> None:
        """A command too: the base answers it on batchInstallBizResponse."""
        topic = base_topic(self.settings.env, identity, BaseTopic.BASELINE)
        await self._command(identity, topic, encode(Baseline(modules)), qos=1)
