"""Broker failures become one line saying what to check, from aiomqtt's real errors."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiomqtt
import pytest
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from module_controller.settings import Settings
from module_controller.tunnels.mqtt import _TlsAlerts
from module_controller.tunnels.mqtt_errors import describe_mqtt_error

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], object]


def _settings(port: int, **overrides: object) -> Settings:
    return Settings(mqtt_broker="127.0.0.1", mqtt_port=port, **overrides)  # type: ignore[arg-type]


@asynccontextmanager
async def _server(handle: Handler, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    """A loopback server running `handle` per connection; its connections end with it."""
    connections: set[asyncio.Task[object]] = set()

    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connections.add(task)
        try:
            await handle(reader, writer)  # type: ignore[misc]
        except (asyncio.CancelledError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(guarded, "127.0.0.1", 0, ssl=ssl_context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in connections:
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)
        await server.wait_closed()


def _connack(return_code: int) -> Handler:
    """A broker that answers any CONNECT with an MQTT 3.1.1 CONNACK of `return_code`."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.write(bytes([0x20, 0x02, 0x00, return_code]))
        await writer.drain()
        await reader.read(1024)  # until the client hangs up

    return handle


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1024)
    await reader.read(1024)


async def _connect_error(settings: Settings, tls: ssl.SSLContext | None = None) -> BaseException:
    client = aiomqtt.Client(
        settings.mqtt_broker, settings.mqtt_port, timeout=1, tls_context=tls, username="u"
    )
    with pytest.raises(aiomqtt.MqttError) as caught:
        async with asyncio.timeout(10):
            await client.__aenter__()
    return caught.value


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("return_code", "expected"),
    [
        (5, "not authorized (check MQTT_USERNAME / MQTT_PASSWORD)"),
        (4, "bad user name or password (check MQTT_USERNAME / MQTT_PASSWORD)"),
        (3, "the broker is unavailable (it refused the connection)"),
    ],
)
async def test_a_refused_connect_says_what_to_check(return_code: int, expected: str) -> None:
    async with _server(_connack(return_code)) as port:
        settings = _settings(port)
        error = await _connect_error(settings)
    assert describe_mqtt_error(error, settings) == expected


async def test_nothing_listening_is_connection_refused() -> None:
    settings = _settings(_closed_port())
    error = await _connect_error(settings)
    assert describe_mqtt_error(error, settings) == (
        f"connection refused: nothing listens on 127.0.0.1:{settings.mqtt_port} "
        "(check MQTT_BROKER / MQTT_PORT)"
    )


async def test_a_broker_that_never_answers_is_a_timeout() -> None:
    async with _server(_silent) as port:
        settings = _settings(port)
        error = await _connect_error(settings)
    assert describe_mqtt_error(error, settings) == (
        f"timed out waiting for the broker at 127.0.0.1:{port}"
    )


async def test_tls_to_a_plain_port_says_the_handshake_failed() -> None:
    async def plain_broker(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # a TLS hello is no MQTT CONNECT: a broker hangs up

    async with _server(plain_broker) as port:
        settings = _settings(port)
        error = await _connect_error(settings, ssl.create_default_context())
    described = describe_mqtt_error(error, settings)
    assert described.startswith(f"TLS handshake with 127.0.0.1:{port} failed: "), described
    assert "MQTT_PORT" in described


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}-key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate")
async def test_an_untrusted_broker_certificate_names_mqtt_ca_path(tmp_path: Path) -> None:
    trusted_ca, _ = _self_signed(tmp_path, "trusted")
    served_cert, served_key = _self_signed(tmp_path, "served")
    served = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    served.load_cert_chain(served_cert, served_key)
    async with _server(_connack(0), served) as port:
        settings = _settings(port, mqtt_ca_path=trusted_ca)
        client_tls = ssl.create_default_context(cafile=str(trusted_ca))
        error = await _connect_error(settings, client_tls)
    described = describe_mqtt_error(error, settings)
    assert described.startswith(f"TLS verification of the broker 127.0.0.1:{port} failed: ")
    assert described.endswith(f"(check MQTT_CA_PATH {trusted_ca})")


def _as_aiomqtt_raises(original: OSError) -> aiomqtt.MqttError:
    """aiomqtt's conversion of a socket error: `raise MqttError(str(exc)) from None`."""
    try:
        try:
            raise original
        except OSError as exc:
            raise aiomqtt.MqttError(str(exc)) from None
    except aiomqtt.MqttError as wrapped:
        return wrapped


def test_an_unknown_host_names_mqtt_broker() -> None:
    settings = Settings(mqtt_broker="brokr.example")
    error = _as_aiomqtt_raises(socket.gaierror(-2, "Name or service not known"))
    assert describe_mqtt_error(error, settings) == (
        "cannot resolve MQTT_BROKER 'brokr.example': Name or service not known"
    )


def test_refusal_codes_of_paho_2_and_of_mqtt_3_mean_the_same() -> None:
    settings = Settings()
    by_reason = MqttConnectError(ReasonCode(PacketTypes.CONNACK, "Not authorized"))
    by_number = MqttConnectError(5)
    assert describe_mqtt_error(by_reason, settings) == describe_mqtt_error(by_number, settings)
    client_id = MqttConnectError(ReasonCode(PacketTypes.CONNACK, "Client identifier not valid"))
    assert "CLIENT_ID" in describe_mqtt_error(client_id, settings)


def test_a_lost_connection_gives_the_reason_not_the_code() -> None:
    settings = Settings()
    try:
        try:
            raise aiomqtt.MqttCodeError(7, "Unexpected disconnection")
        except aiomqtt.MqttCodeError as lost:
            raise aiomqtt.MqttError("Disconnected during message iteration") from lost
    except aiomqtt.MqttError as error:
        described = describe_mqtt_error(error, settings)
    assert described == "unexpected disconnection: The connection was lost."


def test_text_only_errors_still_read_as_causes() -> None:
    settings = Settings(mqtt_broker="b", mqtt_port=1883)
    assert describe_mqtt_error(aiomqtt.MqttError("Operation timed out"), settings) == (
        "timed out waiting for the broker at b:1883"
    )
    assert describe_mqtt_error(RuntimeError("odd\nthing"), settings) == "odd thing (b:1883)"


# What paho logged in that CI run, the first attempt then the second.
_LOST_ALERT = "failed to receive on socket: EOF occurred in violation of protocol (_ssl.c:2427)"
_ALERT = (
    "failed to receive on socket: [SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca "
    "(_ssl.c:2580)"
)


def _paho_line(text: str) -> logging.LogRecord:
    return logging.LogRecord("paho", logging.ERROR, __file__, 0, text, None, None)


def test_a_tls_alert_lost_to_a_reset_still_counts_as_the_broker_ending_the_session() -> None:
    """A broker refusing our certificate alerts, then closes: closed with our CONNECT still
    unread, its socket is reset, and the alert may be lost with it (seen once in CI, on
    Mosquitto). paho then logs an EOF: the attempt must still say the broker ended the TLS
    session (and where to look), not that it timed out."""
    alerts = _TlsAlerts()
    _TlsAlerts.last = None
    alerts.filter(_paho_line(_LOST_ALERT))
    assert _TlsAlerts.last == "closed at once, its alert lost"
    # An alert that does come names the cause, whichever came first.
    alerts.filter(_paho_line(_ALERT))
    assert _TlsAlerts.last == "tlsv1 alert unknown ca"
    alerts.filter(_paho_line(_LOST_ALERT))
    assert _TlsAlerts.last == "tlsv1 alert unknown ca"
    _TlsAlerts.last = None
