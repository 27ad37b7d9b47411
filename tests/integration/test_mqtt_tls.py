"""MQTT over TLS with client certificates, against the testbed's TLS listener (openssl-made
certificates): the operator's tunnel and a simulated base connect; a wrong CA, a client
certificate the broker does not trust or an expired one is a clear reason (for /readyz and
the log), and the tunnel keeps trying instead of crashing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from module_controller.settings import Settings
from module_controller.simulator.base import SimulatedBase
from module_controller.simulator.config import BaseConfig, MqttSettings
from module_controller.testbed.tls import TlsFiles
from module_controller.tunnels.events import BrokerConnected, BrokerDisconnected, TunnelEvent
from module_controller.tunnels.mqtt import MqttTunnel
from tests.private_broker import PrivateBroker
from tests.waiting import wait_for


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    broker = PrivateBroker(tmp_path_factory.mktemp("tls-broker"), with_tls=True)
    try:
        yield broker
    finally:
        broker.stop()


def tls_files(broker: PrivateBroker) -> TlsFiles:
    assert broker.info.tls is not None and broker.info.tls_port is not None
    return broker.info.tls


def operator_settings(broker: PrivateBroker, ca: str, crt: str, key: str) -> Settings:
    return broker.operator_settings(
        mqtt_port=broker.info.tls_port,
        mqtt_ca_path=Path(ca),
        mqtt_client_crt_path=Path(crt),
        mqtt_client_key_path=Path(key),
        mqtt_reconnect_max_seconds=1,
        broker_probe_seconds=0.5,
        broker_suspect_seconds=2,
    )


async def connection_outcomes(settings: Settings) -> list[TunnelEvent]:
    """The first connection's outcome, and when it failed, the second attempt's too."""
    events: list[TunnelEvent] = []

    async def deliver(event: TunnelEvent) -> None:
        events.append(event)

    tunnel = MqttTunnel(settings, deliver)
    # A refused client certificate is only noticed when the connect times out: 3 s, not 10.
    tunnel.answer_timeout = 3.0
    running = asyncio.create_task(tunnel.run())
    try:

        async def outcome() -> TunnelEvent | None:
            return events[0] if events else None

        event = cast(
            TunnelEvent,
            await wait_for(outcome, timeout=15, what="the first connection's outcome"),
        )
        if isinstance(event, BrokerConnected):

            async def probe_back() -> bool:
                return tunnel.probe_returned

            await wait_for(probe_back, timeout=10, what="our probe back through TLS")
        else:
            # Failing, it keeps trying (and says the same) rather than crashing.
            async def tried_again() -> bool:
                return len(events) >= 2

            # An untrusted client certificate costs a whole connect timeout.
            await wait_for(tried_again, timeout=15, what="a second attempt")
            assert not running.done()
        return events[:2]
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def test_the_operator_connects_over_tls_with_its_client_certificate(
    tls_broker: PrivateBroker,
) -> None:
    tls = tls_files(tls_broker)
    settings = operator_settings(tls_broker, tls.ca, tls.client_crt, tls.client_key)
    (event,) = await connection_outcomes(settings)
    assert isinstance(event, BrokerConnected)


# (CA, certificate, key) as TlsFiles attribute names, the setting every attempt's reason
# must point at, and the cause one of them must name. With TLS 1.3 a broker refuses a
# client certificate only by an alert after the handshake (the connect would merely time
# out): the tunnel keeps the alert to say why.
REFUSALS = {
    "wrong CA": (("other_ca", "client_crt", "client_key"), "MQTT_CA_PATH", "TLS verification"),
    "untrusted client certificate": (
        ("ca", "stranger_crt", "stranger_key"),
        "MQTT_CLIENT_CRT_PATH",
        "unknown ca",
    ),
    "expired client certificate": (
        ("ca", "expired_crt", "expired_key"),
        "MQTT_CLIENT_CRT_PATH",
        "certificate expired",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_a_refused_tls_session_is_a_clear_reason_not_a_crash(
    tls_broker: PrivateBroker, case: str
) -> None:
    files, hint, cause = REFUSALS[case]
    tls = tls_files(tls_broker)
    ca, crt, key = (getattr(tls, name) for name in files)
    attempts = await connection_outcomes(operator_settings(tls_broker, ca, crt, key))
    reasons = [event.reason for event in attempts if isinstance(event, BrokerDisconnected)]
    assert len(reasons) == 2, attempts
    # Each attempt says where to look. The broker's alert may be lost to a reset (see
    # _TlsAlerts); it is rare, and the next attempt names the cause.
    assert all(hint in reason for reason in reasons), reasons
    assert any(cause in reason for reason in reasons), reasons


async def test_a_simulated_base_connects_over_tls_with_a_client_certificate(
    tls_broker: PrivateBroker,
) -> None:
    tls = tls_files(tls_broker)
    info = tls_broker.info
    mqtt = MqttSettings(
        host=info.host,
        port=info.tls_port or 0,
        username=info.username,
        password=info.password,
        ca_path=tls.ca,
        client_crt_path=tls.client_crt,
        client_key_path=tls.client_key,
    )
    base = SimulatedBase(BaseConfig(env="tls", mqtt=mqtt))
    await base.start()
    try:

        async def connected() -> bool:
            return base.connected

        await wait_for(connected, timeout=15, what="the simulated base connected over TLS")
    finally:
        await base.stop()
