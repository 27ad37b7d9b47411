"""`/metrics`, `/healthz` and `/readyz` served over real loopback sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from module_controller.observability import server
from module_controller.observability.metrics import Metrics
from module_controller.observability.server import HealthChecks, ObservabilityServer


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def _get(
    http: aiohttp.ClientSession, running: ObservabilityServer, path: str
) -> tuple[int, str, str]:
    async with http.get(f"http://127.0.0.1:{running.ports[path]}{path}") as response:
        return response.status, response.headers["Content-Type"], await response.text()


async def test_readiness_follows_every_named_check(http: aiohttp.ClientSession) -> None:
    readiness = HealthChecks(["kubernetes", "mqtt"])
    running = await server.start(
        Metrics(), readiness, metrics_port=0, health_port=0, host="127.0.0.1"
    )
    try:
        status, _, body = await _get(http, running, "/readyz")
        assert status == 503, "nothing has reported yet, so the operator is not ready"
        assert "[-]kubernetes: not reported yet" in body

        readiness.set("kubernetes", True)
        status, _, body = await _get(http, running, "/readyz")
        assert status == 503, body
        assert "[+]kubernetes ok" in body
        assert "[-]mqtt" in body

        readiness.set("mqtt", True, "connected to 127.0.0.1:1883")
        status, _, body = await _get(http, running, "/readyz")
        assert (status, body.splitlines()[-1]) == (200, "readyz check passed"), body
        assert "[+]mqtt connected to 127.0.0.1:1883" in body

        readiness.set("mqtt", False, "broker connection lost:\n  [Errno 111] refused")
        status, _, body = await _get(http, running, "/readyz")
        assert status == 503
        assert "[-]mqtt: broker connection lost: [Errno 111] refused\n" in body

        # Liveness does not depend on the broker: restarting would not bring it back.
        readiness.operator_started()
        status, _, body = await _get(http, running, "/healthz")
        assert (status, body) == (200, "ok\n")
    finally:
        await server.stop(running)


async def test_metrics_are_served_in_prometheus_text_format(http: aiohttp.ClientSession) -> None:
    metrics = Metrics()
    metrics.set_bases(2)
    metrics.record_mqtt_dropped("stale")
    running = await server.start(
        metrics, HealthChecks(["mqtt"]), metrics_port=0, health_port=0, host="127.0.0.1"
    )
    try:
        assert running.ports["/metrics"] != running.ports["/healthz"]
        status, content_type, body = await _get(http, running, "/metrics")
        assert status == 200
        assert content_type.startswith("text/plain; version=")
        assert "module_controller_bases 2.0" in body.splitlines()
        assert 'module_controller_mqtt_messages_dropped_total{reason="stale"} 1.0' in body

        # Each port serves only its own paths.
        async with http.get(f"http://127.0.0.1:{running.ports['/metrics']}/readyz") as response:
            assert response.status == 404
    finally:
        await server.stop(running)


async def test_one_port_serves_all_paths_when_both_settings_name_it(
    http: aiohttp.ClientSession,
) -> None:
    # Find a free port by letting the OS pick one, then ask for it for both.
    probe = await server.start(
        Metrics(), HealthChecks(["x"]), metrics_port=0, health_port=0, host="127.0.0.1"
    )
    port = probe.ports["/metrics"]
    await server.stop(probe)

    readiness = HealthChecks(["x"])
    readiness.set("x", True)
    readiness.operator_started()
    running = await server.start(
        Metrics(), readiness, metrics_port=port, health_port=port, host="127.0.0.1"
    )
    try:
        assert set(running.ports.values()) == {port}
        for path in ("/metrics", "/healthz", "/readyz"):
            status, _, _ = await _get(http, running, path)
            assert status == 200, path
    finally:
        await server.stop(running)


async def test_stop_closes_the_listeners(http: aiohttp.ClientSession) -> None:
    running = await server.start(
        Metrics(), HealthChecks(["x"]), metrics_port=0, health_port=0, host="127.0.0.1"
    )
    ports = dict(running.ports)
    await server.stop(running)
    for path, port in ports.items():
        with pytest.raises(aiohttp.ClientConnectionError):
            async with http.get(f"http://127.0.0.1:{port}{path}"):
                pass


async def test_a_busy_port_fails_start_and_leaves_nothing_listening() -> None:
    first = await server.start(
        Metrics(), HealthChecks(["x"]), metrics_port=0, health_port=0, host="127.0.0.1"
    )
    try:
        with pytest.raises(OSError):
            # Metrics on a free port, health on the first server's port: the second bind fails.
            await server.start(
                Metrics(),
                HealthChecks(["x"]),
                metrics_port=0,
                health_port=first.ports["/healthz"],
                host="127.0.0.1",
            )
    finally:
        await server.stop(first)


async def test_healthz_fails_unless_the_operator_runs(http: aiohttp.ClientSession) -> None:
    readiness = HealthChecks(["kubernetes", "mqtt"])
    running = await server.start(
        Metrics(), readiness, metrics_port=0, health_port=0, host="127.0.0.1"
    )
    try:
        status, _, body = await _get(http, running, "/healthz")
        assert (status, body) == (503, "not running: start-up has not finished\n")

        readiness.operator_started()
        status, _, body = await _get(http, running, "/healthz")
        assert (status, body) == (200, "ok\n")

        readiness.operator_stopped()
        status, _, body = await _get(http, running, "/healthz")
        assert (status, body) == (503, "not running: the operator has stopped\n")
    finally:
        await server.stop(running)


async def test_a_fatal_failure_fails_healthz_and_its_check_for_good(
    http: aiohttp.ClientSession,
) -> None:
    readiness = HealthChecks(["kubernetes", "mqtt"])
    readiness.set("kubernetes", True)
    readiness.operator_started()
    running = await server.start(
        Metrics(), readiness, metrics_port=0, health_port=0, host="127.0.0.1"
    )
    try:
        readiness.operator_failed("kubernetes", "the leases task failed: RuntimeError('x')")
        readiness.operator_stopped()  # the shut-down that follows must not hide the cause
        readiness.operator_started()
        assert readiness.fatal == "kubernetes: the leases task failed: RuntimeError('x')"
        status, _, body = await _get(http, running, "/healthz")
        assert status == 503
        assert body == f"not running: failed: {readiness.fatal}\n"
        _, _, body = await _get(http, running, "/readyz")
        assert "[-]kubernetes: the leases task failed: RuntimeError('x')\n" in body
    finally:
        await server.stop(running)


def test_an_unknown_check_name_is_refused() -> None:
    readiness = HealthChecks(["kubernetes", "mqtt"])
    with pytest.raises(KeyError, match="mqqt"):
        readiness.set("mqqt", True)
    assert not readiness.ready


def test_readiness_needs_a_check() -> None:
    with pytest.raises(ValueError, match="at least one check"):
        HealthChecks([])
