"""The operator's API client gives up on a server that never answers."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from kubernetes_asyncio import client

from module_controller.kube import with_request_timeout


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
