"""The controller's side of the HTTP tunnel (spec §1, §3), against real simulated bases.

No Kubernetes and no broker: a real HttpTunnelServer on a free port takes heartbeats from
simulated bases that speak only HTTP (each on a loopback address of its own), and a real
ArkletHttpClient calls their Arklet HTTP API, its answers collected as tunnel events.
Timeouts are short (about a second) so that the failure paths stay quick.

The second half plays a hostile base and Murphy; each test there names, after "Was:", the
problem it found (all fixed since: they stay as regression tests).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web

from module_controller import naming
from module_controller.protocol import BizModel
from module_controller.protocol.arklet import ARKLET_DEFAULT_PORT
from module_controller.protocol.states import BizState
from module_controller.registry import BaseRegistry
from module_controller.settings import Settings
from module_controller.simulator.base import SimulatedBase
from module_controller.simulator.config import BaseConfig, IdentityStyle
from module_controller.tunnels import http_server
from module_controller.tunnels.arklet_http import ArkletHttpClient
from module_controller.tunnels.events import (
    ArkletCallFailed,
    BaseHealthReport,
    BaseHeartbeat,
    BaseInventory,
    BaselineQuery,
    BizOperationResult,
    TunnelEvent,
)
from module_controller.tunnels.http_server import HttpTunnelServer
from module_controller.tunnels.router import TunnelRouter
from tests.waiting import wait_for

# Each test takes a few seconds at most; a hang must not hold the suite for 5 minutes.
pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")
E = TypeVar("E")

# 127.0.<random>.<n>: unique per test in this run, and unlikely to meet a parallel run's.
_THIRD_OCTET = random.randint(100, 250)
_HOSTS = itertools.count(2)


def unique_loopback_ip() -> str:
    return f"127.0.{_THIRD_OCTET}.{next(_HOSTS) % 250 + 2}"


def free_port() -> int:
    """A port free on IPv4 and IPv6 alike (a dual-stack socket asks the kernel for one).

    Not HTTP_TUNNEL_LISTEN_PORT=0: the server then binds 0.0.0.0 and :: to two different
    free ports and reports either one (see test_a_free_port_serves_ipv4_and_ipv6_alike).
    """
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        probe.bind(("::", 0))
        return int(probe.getsockname()[1])


def tunnel_settings(**overrides: Any) -> Settings:
    """HTTP tunnel only, on a free port, with timeouts short enough for tests."""
    settings = Settings(
        enable_http_tunnel=True,
        http_tunnel_listen_port=free_port(),
        arklet_http_timeout_seconds=1.0,
        install_timeout_seconds=1.0,
    )
    # model_copy does not validate: fine for the plain numbers the tests change.
    return settings.model_copy(update=overrides)


def biz(name: str, version: str = "0.0.1") -> BizModel:
    return BizModel(biz_name=name, biz_version=version, biz_url=f"file:///opt/{name}.jar")


async def until(what: str, check: Callable[[], T | None], timeout: float = 5.0) -> T:
    async def condition() -> T | None:
        return check()

    return await wait_for(condition, timeout=timeout, what=what, interval=0.02)


class Events:
    """What the tunnel delivered, in order (the inbox, in the runtime)."""

    def __init__(self) -> None:
        self.seen: list[TunnelEvent] = []

    async def deliver(self, event: TunnelEvent) -> None:
        self.seen.append(event)

    def of(self, kind: type[E]) -> list[E]:
        return [event for event in self.seen if isinstance(event, kind)]


StartBase = Callable[..., Awaitable[SimulatedBase]]


@pytest.fixture
async def start_base() -> AsyncIterator[StartBase]:
    """Starts simulated bases that speak HTTP only; stops them at the end of the test."""
    started: list[SimulatedBase] = []

    async def start(heartbeat_port: int | None = None, ip: str | None = None) -> SimulatedBase:
        endpoint = None if heartbeat_port is None else f"http://127.0.0.1:{heartbeat_port}"
        config = BaseConfig(
            name="base",
            version="1.1.1",
            mqtt=None,
            http_api=True,
            http_heartbeat_endpoint=endpoint,
            http_heartbeat_period_s=0.2,
            ip=ip or unique_loopback_ip(),
            identity_style=IdentityStyle.IP,
        )
        base = SimulatedBase(config)
        await base.start()
        started.append(base)
        return base

    yield start
    for base in started:
        await base.stop()


@asynccontextmanager
async def tunnel_server(
    settings: Settings,
    deliver: Callable[[TunnelEvent], Awaitable[None]],
    answer: Callable[[BaselineQuery], Awaitable[list[BizModel]]] | None = None,
) -> AsyncIterator[HttpTunnelServer]:
    async def no_modules(query: BaselineQuery) -> list[BizModel]:
        return []

    server = HttpTunnelServer(settings, deliver, answer or no_modules)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@asynccontextmanager
async def arklet_client(
    settings: Settings, addresses: dict[str, tuple[str, int]], events: Events
) -> AsyncIterator[ArkletHttpClient]:
    client = ArkletHttpClient(settings, events.deliver, addresses.get, first_retry_seconds=0.1)
    await client.start()
    try:
        yield client
    finally:
        await client.stop()


async def settled(client: ArkletHttpClient, timeout: float = 5.0) -> None:
    """Every call has ended and its events are delivered."""
    await until(
        "the Arklet calls to end",
        lambda: client.in_flight() == 0 and len(client.tasks) == 0,
        timeout,
    )


async def post(port: int, path: str, body: bytes | str, method: str = "POST") -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"http://127.0.0.1:{port}{path}", data=body) as response,
    ):
        return response.status, await response.text()


def heartbeat_body(identity: str, local_ip: str, port: Any = 1238, state: str = "activated") -> str:
    return json.dumps(
        {
            "baseMetadata": {
                "identity": identity,
                "name": "base",
                "version": "1.1.1",
                "clusterName": "default",
            },
            "localIP": local_ip,
            "localHostName": "host",
            "port": port,
            "state": state,
        }
    )


# --- the tunnel server: /heartbeat ------------------------------------------------------------


async def test_a_heartbeat_arrives_as_an_http_heartbeat_with_the_base_address(
    start_base: StartBase,
) -> None:
    events = Events()
    async with tunnel_server(tunnel_settings(), events.deliver) as server:
        base = await start_base(heartbeat_port=server.port)
        beat = await until("a heartbeat", lambda: next(iter(events.of(BaseHeartbeat)), None))
    assert beat.tunnel == "http"
    assert beat.identity == base.identity == base.config.ip
    assert beat.status.local_ip == base.config.ip
    assert beat.status.port == base.port, "the Arklet port: it may drift from 1238"
    assert beat.status.is_activated


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\x00junk{", "not a BaseStatus"),
        (b"[1, 2]", "not a BaseStatus"),
        (b'{"localIP": "127.0.0.9"}', "baseMetadata"),
        (b"", "not a BaseStatus"),
    ],
)
async def test_a_body_that_is_not_a_heartbeat_is_400_with_the_reason(
    body: bytes, reason: str
) -> None:
    events = Events()
    async with tunnel_server(tunnel_settings(), events.deliver) as server:
        status, text = await post(server.port, "/heartbeat", body)
    assert status == 400
    assert reason in text
    assert events.seen == []


@pytest.mark.parametrize("path", ["/heartbeat", "/queryBaseline"])
@pytest.mark.parametrize("method", ["GET", "PUT"])
async def test_only_post_is_accepted(path: str, method: str) -> None:
    events = Events()
    async with tunnel_server(tunnel_settings(), events.deliver) as server:
        status, text = await post(server.port, path, b"", method=method)
    assert status == 405
    assert "POST" in text
    assert events.seen == []


async def test_an_oversized_heartbeat_is_refused() -> None:
    events = Events()
    settings = tunnel_settings()
    # Valid JSON so that only its size can be the reason to refuse it.
    padding = "x" * (settings.max_message_bytes + 10)
    body = heartbeat_body("b1", "127.0.0.9").replace('"host"', json.dumps(padding))
    async with tunnel_server(settings, events.deliver) as server:
        status, _ = await post(server.port, "/heartbeat", body)
    assert status == 413
    assert events.seen == []


@pytest.mark.parametrize("identity", ["a/b", "#", "x" * 200, " leading-space"])
async def test_an_identity_naming_refuses_is_400(identity: str) -> None:
    assert naming.invalid_identity_reason(identity) is not None
    events = Events()
    async with tunnel_server(tunnel_settings(), events.deliver) as server:
        status, text = await post(server.port, "/heartbeat", heartbeat_body(identity, "127.0.0.9"))
    assert status == 400
    assert "refused" in text
    assert events.seen == []


async def test_a_free_port_serves_ipv4_and_ipv6_alike() -> None:
    """Was: with HTTP_TUNNEL_LISTEN_PORT=0, TCPSite(host=None) binds 0.0.0.0 and ::
    each to a free port of its own, and start() returns addresses[0], whose family varies
    from process to process (asyncio collects the bind addresses in a set): about every
    other start, the port it reports refuses IPv4 bases. Bind one port for both (bind the
    first family, then the other on the same port), or report the IPv4 one."""
    settings = tunnel_settings(http_tunnel_listen_port=0)
    async with tunnel_server(settings, Events().deliver) as server:
        for host in ("127.0.0.1", "[::1]"):
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://{host}:{server.port}/heartbeat") as response,
            ):
                assert response.status == 405, host


# --- the tunnel server: /queryBaseline --------------------------------------------------------

METADATA = json.dumps({"identity": "b1", "name": "base", "version": "1.1.1", "clusterName": "c"})


async def test_query_baseline_answers_the_modules_as_a_json_list() -> None:
    asked: list[BaselineQuery] = []

    async def answer(query: BaselineQuery) -> list[BizModel]:
        asked.append(query)
        return [biz("biz1"), biz("biz2", "0.0.2")]

    async with tunnel_server(tunnel_settings(), Events().deliver, answer) as server:
        status, text = await post(server.port, "/queryBaseline", METADATA)
    assert status == 200
    assert json.loads(text) == [
        {"bizName": "biz1", "bizVersion": "0.0.1", "bizUrl": "file:///opt/biz1.jar"},
        {"bizName": "biz2", "bizVersion": "0.0.2", "bizUrl": "file:///opt/biz2.jar"},
    ]
    assert [(q.identity, q.metadata.cluster_name) for q in asked] == [("b1", "c")]


async def test_query_baseline_is_503_when_the_answer_fails() -> None:
    async def answer(query: BaselineQuery) -> list[BizModel]:
        raise RuntimeError("the API server said 500")

    async with tunnel_server(tunnel_settings(), Events().deliver, answer) as server:
        status, text = await post(server.port, "/queryBaseline", METADATA)
    assert status == 503
    assert "the API server said 500" in text


async def test_query_baseline_is_503_when_the_answer_is_too_slow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http_server, "BASELINE_TIMEOUT_SECONDS", 0.3)

    async def answer(query: BaselineQuery) -> list[BizModel]:
        await asyncio.sleep(30)  # a stuck Deployment list
        return []

    async with tunnel_server(tunnel_settings(), Events().deliver, answer) as server:
        started = time.monotonic()
        status, text = await post(server.port, "/queryBaseline", METADATA)
    assert status == 503
    assert "ask again" in text
    assert time.monotonic() - started < 5


async def test_query_baseline_refuses_junk_with_400() -> None:
    async with tunnel_server(tunnel_settings(), Events().deliver) as server:
        junk = await post(server.port, "/queryBaseline", b"{not json")
        bad_identity = await post(server.port, "/queryBaseline", json.dumps({"identity": "a/b"}))
    assert junk[0] == 400
    assert bad_identity[0] == 400


# --- the Arklet client against a simulated base ----------------------------------------------


async def test_install_inventory_health_uninstall_against_a_simulated_base(
    start_base: StartBase,
) -> None:
    base = await start_base()
    events = Events()
    addresses = {base.identity: (base.config.ip, base.port)}
    async with arklet_client(tunnel_settings(), addresses, events) as client:
        await client.install_biz(base.identity, biz("biz1"))
        await settled(client)
        (installed,) = events.of(BizOperationResult)
        assert installed.identity == base.identity
        assert installed.result.command == "installBiz"
        assert (installed.result.biz_name, installed.result.biz_version) == ("biz1", "0.0.1")
        assert installed.result.response.ok
        await base.wait_for_module("biz1", "0.0.1", BizState.ACTIVATED)

        await client.query_all_biz(base.identity)
        await client.query_health(base.identity)
        await settled(client)
        (inventory,) = events.of(BaseInventory)
        assert inventory.identity == base.identity
        assert [(m.name, m.version, m.state) for m in inventory.modules] == [
            ("biz1", "0.0.1", BizState.ACTIVATED)
        ]
        (health,) = events.of(BaseHealthReport)
        assert health.identity == base.identity
        assert health.health.master_biz_info is not None
        assert health.health.master_biz_info.biz_name == "base"

        await client.uninstall_biz(base.identity, biz("biz1"))
        await settled(client)
        uninstalled = events.of(BizOperationResult)[-1]
        assert uninstalled.result.command == "uninstallBiz"
        assert uninstalled.result.response.ok
        assert base.module("biz1", "0.0.1") is None
    assert events.of(ArkletCallFailed) == []
    commands = [entry.command for entry in base.received()]
    # The inventory and health calls run side by side: either may arrive first.
    assert commands[0] == "installBiz" and commands[-1] == "uninstallBiz"
    assert sorted(commands[1:3]) == ["health", "queryAllBiz"]


async def test_an_install_that_fails_on_the_base_is_a_failed_result_with_its_message(
    start_base: StartBase,
) -> None:
    base = await start_base()
    base.faults.fail_start = {"broken"}
    events = Events()
    addresses = {base.identity: (base.config.ip, base.port)}
    async with arklet_client(tunnel_settings(), addresses, events) as client:
        await client.install_biz(base.identity, biz("broken"))
        await settled(client)
    (result,) = events.of(BizOperationResult)
    assert not result.result.response.ok
    assert "simulated start failure of broken" in str(result.result.response.message)
    assert events.of(ArkletCallFailed) == [], "the base answered: its API is fine"


async def test_an_install_may_take_longer_than_a_query(start_base: StartBase) -> None:
    # An install downloads and starts a jar: it has INSTALL_TIMEOUT_SECONDS, not the
    # query timeout.
    base = await start_base()
    base.faults.install_delay_s = 1.0
    events = Events()
    settings = tunnel_settings(arklet_http_timeout_seconds=0.5, install_timeout_seconds=5)
    addresses = {base.identity: (base.config.ip, base.port)}
    async with arklet_client(settings, addresses, events) as client:
        await client.install_biz(base.identity, biz("biz1"))
        await settled(client)
    assert events.of(ArkletCallFailed) == []
    (result,) = events.of(BizOperationResult)
    assert result.result.response.ok


async def test_a_failed_health_answer_is_neither_a_report_nor_silence(
    start_base: StartBase,
) -> None:
    # The base answered (its API works) but its health failed: nothing to report.
    base = await start_base()
    base.faults.health_code = "FAILED"
    events = Events()
    addresses = {base.identity: (base.config.ip, base.port)}
    async with arklet_client(tunnel_settings(), addresses, events) as client:
        await client.query_health(base.identity)
        await settled(client)
    assert len(base.received("health")) == 1
    assert events.seen == []


async def test_a_refused_connection_is_tried_three_times_then_answered_as_not_delivered() -> None:
    # Nothing listens on this address: every connection is refused.
    events = Events()
    addresses = {"ghost": (unique_loopback_ip(), ARKLET_DEFAULT_PORT)}
    async with arklet_client(tunnel_settings(), addresses, events) as client:
        started = time.monotonic()
        await client.install_biz("ghost", biz("biz1"))
        await client.query_health("ghost")
        await settled(client)
        elapsed = time.monotonic() - started
    failures = {failure.command: failure for failure in events.of(ArkletCallFailed)}
    assert set(failures) == {"installBiz", "health"}
    assert "3 times" in failures["installBiz"].reason
    assert elapsed >= 0.1 + 0.2, "two waits between three attempts"
    (result,) = events.of(BizOperationResult)
    assert result.identity == "ghost"
    assert (result.result.command, result.result.biz_name) == ("installBiz", "biz1")
    assert not result.result.response.ok
    assert "not delivered" in str(result.result.response.message)
    assert events.of(BaseHealthReport) == [], "a health call is not answered for the base"


async def test_a_base_that_listens_between_two_attempts_gets_the_call(
    start_base: StartBase,
) -> None:
    ip = unique_loopback_ip()
    events = Events()
    addresses = {ip: (ip, ARKLET_DEFAULT_PORT)}
    # Slow retries here, so that the base is up before the third attempt.
    client = ArkletHttpClient(
        tunnel_settings(), events.deliver, addresses.get, first_retry_seconds=0.4
    )
    await client.start()
    try:
        await client.install_biz(ip, biz("biz1"))
        # Attempts go at 0, 0.4 and 1.2 s: the base comes up between the first two.
        await asyncio.sleep(0.2)
        base = await start_base(ip=ip)
        assert base.port == ARKLET_DEFAULT_PORT, "this test needs 1238 free on its own IP"
        await settled(client)
    finally:
        await client.stop()
    (result,) = events.of(BizOperationResult)
    assert result.result.response.ok
    assert events.of(ArkletCallFailed) == []
    assert len(base.received("installBiz")) == 1


async def test_a_frozen_api_fails_the_call_without_inventing_an_answer(
    start_base: StartBase,
) -> None:
    base = await start_base()
    base.faults.http_api_frozen = True
    events = Events()
    addresses = {base.identity: (base.config.ip, base.port)}
    async with arklet_client(tunnel_settings(), addresses, events) as client:
        await client.install_biz(base.identity, biz("biz1"))
        await client.query_health(base.identity)
        await settled(client)
    assert sorted(failure.command for failure in events.of(ArkletCallFailed)) == [
        "health",
        "installBiz",
    ]
    assert all("no answer within" in failure.reason for failure in events.of(ArkletCallFailed))
    # The base received the install and may still carry it out: no failure is invented.
    assert events.of(BizOperationResult) == []
    assert len(base.received("installBiz")) == 1


async def test_a_command_the_base_ignores_fails_alone(start_base: StartBase) -> None:
    base = await start_base()
    base.faults.ignore_commands = {"queryAllBiz"}
    events = Events()
    addresses = {base.identity: (base.config.ip, base.port)}
    async with arklet_client(tunnel_settings(), addresses, events) as client:
        await client.query_all_biz(base.identity)
        await client.query_health(base.identity)
        await settled(client)
    assert [failure.command for failure in events.of(ArkletCallFailed)] == ["queryAllBiz"]
    assert len(events.of(BaseHealthReport)) == 1


async def test_the_same_call_twice_in_flight_is_sent_once(start_base: StartBase) -> None:
    base = await start_base()
    base.faults.install_delay_s = 0.5
    events = Events()
    addresses = {base.identity: (base.config.ip, base.port)}
    async with arklet_client(tunnel_settings(install_timeout_seconds=5), addresses, events) as c:
        await c.install_biz(base.identity, biz("biz1"))
        await c.install_biz(base.identity, biz("biz1"))
        await c.query_health(base.identity)
        await c.query_health(base.identity)
        await settled(c)
        assert len(base.received("installBiz")) == 1
        assert len(base.received("health")) == 1
        assert len(events.of(BizOperationResult)) == 1
        # Once answered it may be sent again (here the base answers REPEAT_BIZ).
        await c.install_biz(base.identity, biz("biz1"))
        await settled(c)
        assert len(base.received("installBiz")) == 2


async def _most_in_flight(
    client: ArkletHttpClient, bases: list[SimulatedBase], events: Events, sent: int
) -> int:
    """Installs received by the bases and not yet answered, at most, until all answered."""
    most = 0
    deadline = time.monotonic() + 10
    while len(events.of(BizOperationResult)) < sent:
        received = sum(len(base.received("installBiz")) for base in bases)
        most = max(most, received - len(events.of(BizOperationResult)))
        assert time.monotonic() < deadline, f"only {len(events.seen)} answers of {sent}"
        await asyncio.sleep(0.01)
    return most


async def test_calls_to_one_base_are_bounded(start_base: StartBase) -> None:
    base = await start_base()
    base.faults.install_delay_s = 0.3
    events = Events()
    settings = tunnel_settings(install_timeout_seconds=10, arklet_http_max_calls_per_base=2)
    addresses = {base.identity: (base.config.ip, base.port)}
    async with arklet_client(settings, addresses, events) as client:
        for number in range(6):
            await client.install_biz(base.identity, biz(f"biz{number}"))
        most = await _most_in_flight(client, [base], events, 6)
        await settled(client)
    assert most == 2, "two at a time: never more, and the bound is used"
    assert all(result.result.response.ok for result in events.of(BizOperationResult))


async def test_calls_over_all_bases_are_bounded(start_base: StartBase) -> None:
    bases = [await start_base(), await start_base()]
    for base in bases:
        base.faults.install_delay_s = 0.3
    events = Events()
    settings = tunnel_settings(
        install_timeout_seconds=10, arklet_http_max_calls=3, arklet_http_max_calls_per_base=4
    )
    addresses = {base.identity: (base.config.ip, base.port) for base in bases}
    async with arklet_client(settings, addresses, events) as client:
        for number in range(4):
            for base in bases:
                await client.install_biz(base.identity, biz(f"biz{number}"))
        most = await _most_in_flight(client, bases, events, 8)
        await settled(client)
    assert most == 3


async def test_an_answer_that_comes_after_the_timeout_is_not_waited_for(
    start_base: StartBase,
) -> None:
    """A slow install times out without a result; the base's inventory tells what happened."""
    base = await start_base()
    base.faults.install_delay_s = 1.5
    events = Events()
    addresses = {base.identity: (base.config.ip, base.port)}
    async with arklet_client(tunnel_settings(), addresses, events) as client:
        await client.install_biz(base.identity, biz("biz1"))
        await settled(client)
        assert [failure.command for failure in events.of(ArkletCallFailed)] == ["installBiz"]
        assert events.of(BizOperationResult) == []
        await base.wait_for_module("biz1", "0.0.1", BizState.ACTIVATED)
        await client.query_all_biz(base.identity)
        await settled(client)
    (inventory,) = events.of(BaseInventory)
    assert [m.name for m in inventory.modules] == ["biz1"]


async def test_stopping_mid_call_ends_the_call_quietly(start_base: StartBase) -> None:
    base = await start_base()
    base.faults.http_api_frozen = True
    events = Events()
    addresses = {base.identity: (base.config.ip, base.port)}
    client = ArkletHttpClient(
        tunnel_settings(install_timeout_seconds=30), events.deliver, addresses.get
    )
    await client.start()
    await client.install_biz(base.identity, biz("biz1"))
    await base.wait_for_command("installBiz")
    started = time.monotonic()
    await client.stop()
    assert time.monotonic() - started < 3
    assert client.in_flight() == 0 and len(client.tasks) == 0
    assert events.seen == [], "a call cut by the stop is not a failure of the base"


# --- adversary: a hostile base, and Murphy ----------------------------------------------------


async def test_a_call_after_stop_delivers_nothing() -> None:
    """Was: a command sent after stop() (the module sync stops after the client)
    runs in a new task nobody stops, finds no session and delivers ArkletCallFailed plus an
    invented "not delivered: the operator is stopping" install failure."""
    events = Events()
    addresses = {"b1": (unique_loopback_ip(), ARKLET_DEFAULT_PORT)}
    client = ArkletHttpClient(tunnel_settings(), events.deliver, addresses.get)
    await client.start()
    await client.stop()
    await client.install_biz("b1", biz("biz1"))
    await settled(client)
    assert events.seen == []


async def test_an_answer_sent_in_pieces_is_read_whole() -> None:
    """Was: the client reads the answer with one content.read(n), which returns the
    first piece that arrived; an answer split over TCP segments (a big inventory, a slow
    base, a proxy) is taken for "not an Arklet answer"."""
    answer = json.dumps(
        {"code": "SUCCESS", "baseIdentity": "b1", "data": {"healthData": {"cpu": {"count": 8}}}}
    ).encode()

    async def slow_arklet(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(answer)
        await response.prepare(request)
        await response.write(answer[:20])
        await asyncio.sleep(0.2)
        await response.write(answer[20:])
        return response

    app = web.Application()
    app.router.add_post("/health", slow_arklet)
    runner = web.AppRunner(app)
    await runner.setup()
    ip = unique_loopback_ip()
    site = web.TCPSite(runner, ip, 0)
    await site.start()
    port = int(runner.addresses[0][1])
    events = Events()
    try:
        async with arklet_client(tunnel_settings(), {"b1": (ip, port)}, events) as client:
            await client.query_health("b1")
            await settled(client)
    finally:
        await runner.cleanup()
    assert events.of(ArkletCallFailed) == []
    assert len(events.of(BaseHealthReport)) == 1


async def test_an_answer_from_another_base_is_not_taken_for_this_one(
    start_base: StartBase,
) -> None:
    """Was: the answer's baseIdentity is never compared. When a base's address now
    serves another base (it died and another took its IP:port, port drift, a forged
    heartbeat), that base's inventory is taken for this one's, and an install that
    landed there is reported as done here."""
    ours, other = await start_base(), await start_base()
    events = Events()
    # Our base's address, as its last heartbeat said, now leads to the other base.
    addresses = {ours.identity: (other.config.ip, other.port)}
    async with arklet_client(tunnel_settings(), addresses, events) as client:
        await client.query_all_biz(ours.identity)
        await client.install_biz(ours.identity, biz("biz1"))
        await settled(client)
    assert events.of(BaseInventory) == [], "the other base's modules are not ours"
    assert not [r for r in events.of(BizOperationResult) if r.result.response.ok]


async def test_an_ipv6_base_is_reachable(start_base: StartBase) -> None:
    """Was: the URL is f"http://{ip}:{port}/...", so an IPv6 localIP (valid per
    naming.ip_address) gives http://::1:1238/health, an invalid URL: every call fails and
    the node of an IPv6 base goes NotReady. IPv6 hosts need brackets."""
    base = await start_base(ip="::1")
    events = Events()
    addresses = {base.identity: ("::1", base.port)}
    async with arklet_client(tunnel_settings(), addresses, events) as client:
        await client.query_health(base.identity)
        await settled(client)
    assert events.of(ArkletCallFailed) == []
    assert len(events.of(BaseHealthReport)) == 1


@pytest.mark.parametrize("port", [-1, 65536, 10**12])
async def test_a_heartbeat_with_an_impossible_port_is_refused(port: int) -> None:
    """Was: BaseStatus.port has no bounds, so the base is registered and every
    call to it fails as an invalid URL (NotReady after BASE_NOT_READY_SECONDS, installs
    wait the install timeout); port -1 also makes the tunnel-port label "-1", a label
    value the API server refuses, so the node cannot even be written."""
    events = Events()
    async with tunnel_server(tunnel_settings(), events.deliver) as server:
        status, _ = await post(server.port, "/heartbeat", heartbeat_body("b1", "127.0.0.9", port))
    assert status == 400
    assert events.seen == []


async def test_port_zero_means_the_default_arklet_port() -> None:
    """The Go controller's fallback: a heartbeat without a port means Arklet's 1238."""
    heard = Heard(tunnel_settings())
    async with tunnel_server(heard.settings, heard.deliver) as server:
        status, _ = await post(server.port, "/heartbeat", heartbeat_body("b1", "127.0.0.9", 0))
    assert status == 200
    assert heard.router.address_of("b1") == ("127.0.0.9", ARKLET_DEFAULT_PORT)


class Heard:
    """Heartbeats applied to a real registry, addresses read back through the router."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = BaseRegistry(settings)
        self.router = TunnelRouter(self.registry, None, None)

    async def deliver(self, event: TunnelEvent) -> None:
        if isinstance(event, BaseHeartbeat):
            self.registry.heartbeat(event.identity, event.status, event.tunnel)


async def post_from(ip: str, port: int, body: str) -> int:
    """POST a heartbeat from the loopback address `ip`, as a base on that host would."""
    connector = aiohttp.TCPConnector(local_addr=(ip, 0), force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(f"http://127.0.0.1:{port}/heartbeat", data=body) as response,
    ):
        return response.status


@pytest.mark.parametrize("local_ip", ["", "not-an-ip"])
async def test_a_heartbeat_without_a_usable_ip_sends_no_command_to_the_operator_host(
    local_ip: str,
) -> None:
    """Was: BaseRecord.ip falls back to 127.0.0.1 for a localIP that is not an IP
    (the Go fallback for the node's InternalIP), and the router sends that base's Arklet
    calls there: to the operator's own pod, on a port the sender chose (its metrics, its
    health server, the kubelet proxy, or any sidecar). Refuse such a heartbeat (400), or
    use the address it came from."""
    heard = Heard(tunnel_settings())
    sender = unique_loopback_ip()
    async with tunnel_server(heard.settings, heard.deliver) as server:
        await post_from(sender, server.port, heartbeat_body("junk-ip", local_ip, 9090))
    address = heard.router.address_of("junk-ip")
    assert address is None or address[0] == sender, f"calls would go to {address}"


async def test_a_heartbeat_claiming_a_known_base_from_elsewhere_does_not_take_its_calls(
    start_base: StartBase,
) -> None:
    """Was: anyone who reaches the tunnel port can post a heartbeat with a live
    base's identity and its own localIP:port; the registry takes the new address at once,
    and from then on that base's installs, uninstalls and queries go to the attacker,
    whose answers the controller believes."""
    heard = Heard(tunnel_settings())
    async with tunnel_server(heard.settings, heard.deliver) as server:
        base = await start_base(heartbeat_port=server.port)
        await until("the base is registered", lambda: base.identity in heard.registry.bases)
        base.faults.heartbeats_stopped = True  # so that only the attacker speaks now
        genuine = (base.config.ip, base.port)
        assert heard.router.address_of(base.identity) == genuine
        attacker = unique_loopback_ip()
        await post_from(attacker, server.port, heartbeat_body(base.identity, attacker, 4444))
    assert heard.router.address_of(base.identity) == genuine


async def test_a_heartbeat_body_that_trickles_in_is_cut_off() -> None:
    """Was: the server reads a body without a deadline. A client that sends the
    headers and then nothing (slowloris) holds a connection and a handler for ever; a few
    thousand exhaust the operator's file descriptors, and with them its API server and
    broker connections. A real heartbeat is under 1 KiB and sent at once."""
    events = Events()
    async with tunnel_server(tunnel_settings(), events.deliver) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(b"POST /heartbeat HTTP/1.1\r\nHost: x\r\nContent-Length: 300\r\n\r\n{")
            await writer.drain()
            try:
                # Answered (408, 400) or closed: either way the server let go.
                await asyncio.wait_for(reader.read(100), timeout=8)
            except TimeoutError:
                pytest.fail("the server still waits for a heartbeat body after 8 s")
        finally:
            writer.close()
    assert events.seen == []


async def test_installs_stuck_on_a_frozen_base_do_not_starve_the_other_bases(
    start_base: StartBase,
) -> None:
    """Was: an install holds its slot of ARKLET_HTTP_MAX_CALLS for up to
    INSTALL_TIMEOUT_SECONDS (120 s). A rollout to a few frozen bases (16 bases x 4 modules
    fill the 64 slots) stops every other base's health and inventory calls, and installs,
    for two minutes; those calls only wait, so nothing says why. Give the quick calls
    (health, queryAllBiz) slots of their own, or let long calls hold fewer of them."""
    frozen, healthy = await start_base(), await start_base()
    frozen.faults.http_api_frozen = True
    events = Events()
    settings = tunnel_settings(
        install_timeout_seconds=4, arklet_http_max_calls=2, arklet_http_max_calls_per_base=2
    )
    addresses = {base.identity: (base.config.ip, base.port) for base in (frozen, healthy)}
    async with arklet_client(settings, addresses, events) as client:
        await client.install_biz(frozen.identity, biz("biz1"))
        await client.install_biz(frozen.identity, biz("biz2"))
        await frozen.wait_for_command("installBiz", count=2)
        started = time.monotonic()
        await client.query_health(healthy.identity)
        await until("the healthy base's health", lambda: events.of(BaseHealthReport), 6)
        waited = time.monotonic() - started
        await settled(client)
    assert waited < 1.5, f"the healthy base's health waited {waited:.1f}s for a slot"


async def test_what_a_client_keeps_per_base_goes_when_the_calls_end(
    start_base: StartBase,
) -> None:
    """Was: ArkletHttpClient._per_base keeps one semaphore per identity ever called
    and never drops it. Bases with UUID identities get a new one per restart, and a hostile
    sender can make up identities: the dict grows for the operator's lifetime."""
    base = await start_base()
    events = Events()
    identities = [f"base-{number}" for number in range(200)]
    addresses = {identity: (base.config.ip, base.port) for identity in identities}
    settings = tunnel_settings(arklet_http_timeout_seconds=3)
    async with arklet_client(settings, addresses, events) as client:
        for identity in identities:
            await client.query_health(identity)
        for number in range(200):  # bases that went away before their call ran
            await client.query_health(f"gone-{number}")
        await settled(client, timeout=15)
        assert len(client._per_base) == 0, f"{len(client._per_base)} semaphores kept"
