"""The `kubernetes` readiness check follows an API server that answers, then stops."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from kubernetes_asyncio import client

from module_controller.observability.api_probe import ApiProbe
from module_controller.observability.server import HealthChecks
from tests.waiting import wait_for

VERSION = {
    "major": "1",
    "minor": "36",
    "gitVersion": "v1.36.3",
    "gitCommit": "0",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.24",
    "compiler": "gc",
    "platform": "linux/amd64",
}


@dataclass
class FakeApiServer:
    """Answers /version while `answering` is set; otherwise holds each request unanswered."""

    port: int = 0
    answering: asyncio.Event = field(default_factory=asyncio.Event)
    status: int = 200


@pytest.fixture
async def fake_api() -> AsyncIterator[FakeApiServer]:
    fake = FakeApiServer()
    fake.answering.set()

    async def version(_: web.Request) -> web.Response:
        await fake.answering.wait()
        if fake.status != 200:
            return web.json_response({"kind": "Status"}, status=fake.status)
        return web.json_response(VERSION)

    app = web.Application()
    app.add_routes([web.get("/version/", version), web.get("/version", version)])
    runner = web.AppRunner(app, shutdown_timeout=0.1)  # held requests need not finish
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.port = runner.addresses[0][1]
    try:
        yield fake
    finally:
        fake.answering.set()  # release held requests so the runner can stop
        await runner.cleanup()


def _api(port: int) -> client.ApiClient:
    return client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{port}"))


def _line(readiness: HealthChecks, name: str = "kubernetes") -> str:
    (line,) = [text for text in readiness.report().splitlines() if name in text]
    return line


async def test_the_check_follows_the_api_server(fake_api: FakeApiServer) -> None:
    readiness = HealthChecks(["kubernetes"])
    api = _api(fake_api.port)
    probe = ApiProbe(api, readiness, interval=0.1, timeout=0.3)
    probe.start()
    try:
        await wait_for(
            lambda: asyncio.sleep(0, readiness.ready),
            timeout=10,
            what="the probe to report the API server",
        )
        assert _line(readiness) == "[+]kubernetes API server v1.36.3 answers"

        fake_api.answering.clear()  # the API server stops answering

        async def silent_for_a_second() -> bool:
            match = re.fullmatch(r"\[-\]kubernetes: no answer for (\d+)s \(.+\)", _line(readiness))
            return match is not None and int(match[1]) >= 1

        await wait_for(
            silent_for_a_second,
            timeout=10,
            what="no answer for 1s or more",
            diagnose=lambda: asyncio.sleep(0, readiness.report()),
        )
        assert not readiness.ready

        fake_api.answering.set()
        await wait_for(lambda: asyncio.sleep(0, readiness.ready), timeout=10, what="ready again")
    finally:
        await probe.stop()
        await api.close()


async def test_an_error_answer_is_reported_as_such(fake_api: FakeApiServer) -> None:
    readiness = HealthChecks(["kubernetes"])
    fake_api.status = 503
    api = _api(fake_api.port)
    try:
        assert not await ApiProbe(api, readiness, timeout=5).probe_once()
    finally:
        await api.close()
    assert _line(readiness) == "[-]kubernetes: the API server answers 503 Service Unavailable"


async def test_a_refusing_address_counts_from_the_last_answer() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again at once: nothing listens there
    now = [100.0]
    readiness = HealthChecks(["kubernetes"])
    api = _api(port)
    try:
        probe = ApiProbe(api, readiness, timeout=5, clock=lambda: now[0])
        now[0] = 120.0
        assert not await probe.probe_once()
    finally:
        await api.close()
    line = _line(readiness)
    assert line.startswith("[-]kubernetes: no answer for 20s ("), line
    assert "Connect call failed" in line or "refused" in line.lower(), line
