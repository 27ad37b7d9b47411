"""The MQTT connection of one simulated base: connect, subscribe, receive, publish.

Only moves bytes; what to publish and how to answer is the base's business. Behaves like the
runtime's Paho client: client id ``<prefix>@@@<identity>``, clean session, QoS 1
subscriptions, automatic reconnect with re-subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable

import aiomqtt

from module_controller.protocol.topics import base_subscriptions
from module_controller.simulator.config import MqttSettings
from module_controller.tasks import raise_if_cancelling
from module_controller.tunnels.tls import mqtt_tls_context

log = logging.getLogger(__name__)
# paho's own chatter (e.g. "connection reset" after a simulated crash) stays out of INFO logs.
paho_log = logging.getLogger(__name__ + ".paho")

RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 10.0


class BaseMqttLink:
    """``on_message(topic, payload)`` is awaited for each received message, in order.

    (Not the operator's MqttTunnel: that one listens to every base; this is one base's.)
    """

    def __init__(
        self,
        settings: MqttSettings,
        env: str,
        identity: str,
        on_message: Callable[[str, bytes], Awaitable[None]],
        on_connect: Callable[[bool], Awaitable[None]],
        label: str,
        on_disconnect: Callable[[], None] = lambda: None,
    ) -> None:
        self._settings = settings
        self._env = env
        self._identity = identity
        self._on_message = on_message
        self._on_connect = on_connect  # called with first=True only once per tunnel
        self._label = label
        self._on_disconnect = on_disconnect
        # TLS when a CA is configured, as the runtime switches to ``ssl://``.
        self._tls = mqtt_tls_context(
            settings.ca_path, settings.client_crt_path, settings.client_key_path
        )
        self._client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()
        self.connections = 0
        self._aborting = False

    @property
    def client_id(self) -> str:
        return f"{self._settings.client_prefix}@@@{self._identity}"

    async def run(self) -> None:
        """Stay connected until cancelled (or :meth:`abort`), reconnecting with back-off."""
        delay = RECONNECT_MIN_S
        while not self._aborting:
            try:
                await self._session()
                delay = RECONNECT_MIN_S
            except aiomqtt.MqttError as exc:
                raise_if_cancelling()
                if self._aborting:
                    break
                log.warning("%s: MQTT connection lost or refused: %s", self._label, exc)
            finally:
                if self.connected.is_set():
                    self.connected.clear()
                    self._on_disconnect()
                self._client = None
            if self._aborting:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    async def _session(self) -> None:
        settings = self._settings
        client = aiomqtt.Client(
            settings.host,
            settings.port,
            username=settings.username or None,
            password=settings.password or None,
            identifier=self.client_id,
            clean_session=True,
            keepalive=settings.keepalive_s,
            tls_context=self._tls,
            max_inflight_messages=1000,
            timeout=10,
            logger=paho_log,
        )
        async with client:
            self._client = client
            for topic in base_subscriptions(self._env, self._identity):
                await client.subscribe(topic, qos=1)
            self.connections += 1
            self.connected.set()
            await self._on_connect(self.connections == 1)
            async for message in client.messages:
                payload = message.payload
                data = payload if isinstance(payload, bytes) else str(payload or "").encode()
                await self._on_message(message.topic.value, data)

    async def publish(self, topic: str, payload: bytes) -> bool:
        """Publish with QoS 1, not retained. False (logged) when not connected."""
        client = self._client
        if client is None or not self.connected.is_set():
            log.debug("%s: not connected, dropped publish to %s", self._label, topic)
            return False
        try:
            await client.publish(topic, payload, qos=1, retain=False)
        except aiomqtt.MqttError as exc:
            log.warning("%s: publish to %s failed: %s", self._label, topic, exc)
            return False
        return True

    def abort(self) -> None:
        """Drop the TCP connection without an MQTT DISCONNECT: a crashed JVM."""
        self._aborting = True
        client = self._client
        if client is None:
            return
        # aiomqtt has no public "abort"; shutting the socket makes its reader fail, which
        # ends the session as a broken connection (the broker sees no DISCONNECT).
        sock = client._client.socket()
        if isinstance(sock, socket.socket | ssl.SSLSocket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
