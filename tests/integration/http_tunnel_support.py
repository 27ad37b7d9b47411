"""What the HTTP tunnel's integration tests share: loopback addresses, settings with short
timeouts, a tunnel server and an Arklet client as context managers, and what they deliver."""

from __future__ import annotations

import itertools
import json
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import aiohttp

from module_controller.protocol import BizModel
from module_controller.settings import Settings
from module_controller.simulator.base import SimulatedBase
from module_controller.tunnels.arklet_http import ArkletHttpClient
from module_controller.tunnels.events import (
    BaselineQuery,
    TunnelEvent,
)
from module_controller.tunnels.http_server import HttpTunnelServer
from tests.waiting import wait_for

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


StartBase = Callable[..., Awaitable[SimulatedBase]]
