"""The HTTP tunnel heartbeat (spec §3.2): POST BaseStatus to ``<endpoint>/heartbeat``.

First beat at once, then every 12 s; failures are logged and the timer keeps running.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from urllib.parse import urlsplit

import aiohttp

from module_controller.protocol.codec import encode
from module_controller.protocol.heartbeat import HEARTBEAT_PATH, BaseStatus
from module_controller.protocol.states import EnumStyle

log = logging.getLogger(__name__)


def check_loopback_endpoint(endpoint: str) -> str:
    """The simulator only ever talks to loopback; refuse any other controller address."""
    host = urlsplit(endpoint).hostname or ""
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"heartbeat endpoint {endpoint!r} is not a loopback address")
    return endpoint.rstrip("/")


async def run_http_heartbeat(
    endpoint: str,
    status: Callable[[], BaseStatus | None],
    period_s: float,
    local_ip: str,
) -> None:
    """Beat until cancelled. ``status()`` returns None while heartbeats are switched off."""
    url = check_loopback_endpoint(endpoint) + HEARTBEAT_PATH
    timeout = aiohttp.ClientTimeout(sock_connect=30, sock_read=10)
    # Send from the base's own loopback IP, as a real base sends from its host.
    connector = aiohttp.TCPConnector(local_addr=(local_ip, 0), force_close=True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        while True:
            beat = status()
            if beat is not None:
                await _post(session, url, encode(beat, style=EnumStyle.TO_STRING))
            await asyncio.sleep(period_s)


async def _post(session: aiohttp.ClientSession, url: str, body: bytes) -> None:
    try:
        async with session.post(
            url, data=body, headers={"Content-Type": "application/json"}
        ) as response:
            if response.status != 200:
                log.warning("heartbeat to %s: HTTP %s", url, response.status)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        log.warning("heartbeat to %s failed: %s", url, exc)
