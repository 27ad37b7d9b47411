"""The HTTP tunnel's server side: bases POST their heartbeats here (and may ask a baseline).

The Go controller's endpoints, on HTTP_TUNNEL_LISTEN_PORT (7777): ``POST /heartbeat`` with a
bare BaseStatus, answered ``200 SUCCESS`` (400 with the reason for a body that is not one,
405 for another method), and ``POST /queryBaseline`` with a BaseMetadata, answered with the
JSON list of modules the base should start with. A heartbeat goes into the inbox like an
MQTT one; the HTTP answer waits for the inbox, so a flood of heartbeats slows the bases
down instead of piling up in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from module_controller import naming
from module_controller.lograte import RateLimitedLog
from module_controller.protocol import Baseline, BaseMetadata, BaseStatus, BizModel, ProtocolError
from module_controller.protocol.codec import decode, encode
from module_controller.protocol.heartbeat import (
    HEARTBEAT_OK_TEXT,
    HEARTBEAT_PATH,
    QUERY_BASELINE_PATH,
)
from module_controller.settings import Settings
from module_controller.tunnels.events import BaseHeartbeat, BaselineQuery, TunnelEvent

log = logging.getLogger(__name__)

# A baseline is computed from a Deployment list: slow API server -> the base asks again.
BASELINE_TIMEOUT_SECONDS = 10.0
# A body that trickles in must not hold a connection (and a handler) for ever.
BODY_TIMEOUT_SECONDS = 5.0
LINGER_SECONDS = 1.0

Deliver = Callable[[TunnelEvent], Awaitable[None]]
AnswerBaseline = Callable[[BaselineQuery], Awaitable[list[BizModel]]]
Received = Callable[[str, str], None]  # (endpoint, outcome) for the metrics


class HttpTunnelServer:
    def __init__(
        self,
        settings: Settings,
        deliver: Deliver,
        answer_baseline: AnswerBaseline,
        on_request: Received | None = None,
    ) -> None:
        self.settings = settings
        self._deliver = deliver
        self._answer_baseline = answer_baseline
        self._on_request = on_request
        self._runner: web.AppRunner | None = None
        self._log = RateLimitedLog(log)
        self.port = 0

    async def start(self) -> int:
        """Listen on HTTP_TUNNEL_LISTEN_PORT (0: a free port); returns the port."""
        app = web.Application(client_max_size=self.settings.max_message_bytes)
        app.router.add_route("*", HEARTBEAT_PATH, self._heartbeat)
        app.router.add_route("*", QUERY_BASELINE_PATH, self._query_baseline)
        # After a refusal with the body unread, aiohttp would go on reading what the client
        # sends for 10 s (lingering): a trickling client keeps its handler that long.
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, lingering_time=LINGER_SECONDS
        )
        await self._runner.setup()
        port = self.settings.http_tunnel_listen_port
        if port:
            await web.TCPSite(self._runner, port=port).start()  # every interface, v4 and v6
        else:
            # Port 0 on "every interface" would give IPv4 and IPv6 two different ports.
            await web.TCPSite(self._runner, "0.0.0.0", 0).start()
            port = int(self._runner.addresses[0][1])
            # No IPv6 here, or that port taken there: IPv4 serves.
            with contextlib.suppress(OSError):
                await web.TCPSite(self._runner, "::", port).start()
        self.port = port
        log.info("HTTP tunnel listening on port %d (/heartbeat, /queryBaseline).", self.port)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _heartbeat(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            return self._refuse("heartbeat", 405, f"{request.method} not allowed: use POST")
        body = await self._body(request)
        if body is None:
            return self._refuse("heartbeat", 408, "the body did not arrive in time")
        try:
            status = decode(BaseStatus, body)
        except ProtocolError as error:
            return self._refuse("heartbeat", 400, f"not a BaseStatus: {error}")
        identity = status.base_metadata.identity
        bad = naming.invalid_identity_reason(identity)
        if bad is not None:
            return self._refuse("heartbeat", 400, f"identity {identity[:80]!r} refused: {bad}")
        # Commands go to localIP:port: an address we cannot call is no base of ours.
        if naming.ip_address(status.local_ip) is None:
            return self._refuse("heartbeat", 400, f"localIP {status.local_ip[:80]!r} is no IP")
        if not 0 <= status.port <= 65535:
            return self._refuse("heartbeat", 400, f"port {status.port} is no TCP port")
        await self._deliver(BaseHeartbeat(identity, status, tunnel="http"))
        self._count("heartbeat", "accepted")
        return web.Response(text=HEARTBEAT_OK_TEXT)

    async def _query_baseline(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            return self._refuse("queryBaseline", 405, f"{request.method} not allowed: use POST")
        body = await self._body(request)
        if body is None:
            return self._refuse("queryBaseline", 408, "the body did not arrive in time")
        try:
            metadata = decode(BaseMetadata, body)
        except ProtocolError as error:
            return self._refuse("queryBaseline", 400, f"not a BaseMetadata: {error}")
        bad = naming.invalid_identity_reason(metadata.identity)
        if bad is not None:
            return self._refuse("queryBaseline", 400, f"identity refused: {bad}")
        try:
            async with asyncio.timeout(BASELINE_TIMEOUT_SECONDS):
                modules = await self._answer_baseline(BaselineQuery(metadata.identity, metadata))
        except TimeoutError:
            return self._refuse("queryBaseline", 503, "the baseline took too long; ask again")
        except Exception as error:  # an API error must cost this answer, not the server
            log.warning("Baseline for base %s failed: %r", metadata.identity, error)
            return self._refuse("queryBaseline", 503, f"the baseline failed: {error}")
        self._count("queryBaseline", "accepted")
        return web.Response(body=encode(Baseline(modules)), content_type="application/json")

    @staticmethod
    async def _body(request: web.Request) -> bytes | None:
        try:
            async with asyncio.timeout(BODY_TIMEOUT_SECONDS):
                return await request.read()
        except TimeoutError:
            return None

    def _refuse(self, endpoint: str, status: int, reason: str) -> web.Response:
        self._count(endpoint, str(status))
        shown = reason if len(reason) <= 300 else reason[:300] + "..."
        self._log.warning(f"refused-{endpoint}-{status}", "Refused an HTTP %s: %s", endpoint, shown)
        return web.Response(status=status, text=shown)

    def _count(self, endpoint: str, outcome: str) -> None:
        if self._on_request is not None:
            self._on_request(endpoint, outcome)
