"""The operator's API client gives up on a server that never answers, and does not look
for a proxy on every request when none is configured."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import BasicAuth, web
from aiohttp.helpers import get_env_proxy_for_url
from kubernetes_asyncio import client
from yarl import URL

from module_controller.kube import PROXY_VARIABLES, with_request_timeout, without_env_lookups
from tests.local_server import serving


async def test_a_request_to_a_silent_server_ends_at_the_deadline() -> None:
    release = asyncio.Event()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()  # answers nothing until the test is over
        writer.close()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    configuration = client.Configuration(host=f"http://127.0.0.1:{port}")
    api = with_request_timeout(client.ApiClient(configuration), 0.5)
    began = time.monotonic()
    try:
        with pytest.raises((asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
            await client.CoreV1Api(api).list_node()
    finally:
        await api.close()
        release.set()
        server.close()
        await server.wait_closed()
    assert time.monotonic() - began < 5


async def _list_nodes_counting_env_lookups(monkeypatch: pytest.MonkeyPatch) -> int:
    """List nodes from a local server with the operator's client; how often aiohttp looked
    for a proxy in the environment meanwhile."""
    lookups = 0

    def counted(url: URL) -> tuple[URL, BasicAuth | None]:
        nonlocal lookups
        lookups += 1
        return get_env_proxy_for_url(url)

    # Where the session looks it up: aiohttp.client imported it from aiohttp.helpers.
    monkeypatch.setattr("aiohttp.client.get_env_proxy_for_url", counted)

    async def nodes(_: web.Request) -> web.Response:
        return web.json_response({"kind": "NodeList", "apiVersion": "v1", "items": []})

    app = web.Application()
    app.router.add_get("/api/v1/nodes", nodes)
    async with serving(app) as url:
        api = without_env_lookups(client.ApiClient(client.Configuration(host=url)))
        try:
            for _ in range(3):
                await client.CoreV1Api(api).list_node()
        finally:
            await api.close()
    return lookups


async def test_requests_skip_the_environment_lookups_when_no_proxy_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert await _list_nodes_counting_env_lookups(monkeypatch) == 0


async def test_a_proxy_in_the_environment_is_still_honoured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")  # the test speaks http
    assert await _list_nodes_counting_env_lookups(monkeypatch) == 3
