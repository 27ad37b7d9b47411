"""The Arklet HTTP API of one simulated base (spec §1.1-§1.2), served on its loopback IP.

A bare ``aiohttp.web.Server`` on ``loop.create_server``: no Application/router per base, so a
thousand bases stay cheap. The port is scanned upwards from the configured one, as arklet does
when ``koupleless.arklet.http.port`` is unset.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from module_controller.protocol.arklet import (
    ARKLET_PORT_SCAN,
    CMD_NOT_FOUND_TEXT,
    POST_ONLY_TEXT,
    ArkletCommand,
    ArkletResponse,
    ResponseCode,
    internal_error_text,
)
from module_controller.protocol.codec import encode
from module_controller.protocol.states import EnumStyle
from module_controller.simulator.ark import JavaException
from module_controller.simulator.arklet import Arklet

JSON_EXCEPTION = "com.alibaba.fastjson.JSONException"

log = logging.getLogger(__name__)


class ArkletHttpServer:
    """Serves one base's Arklet. ``on_request(command, body)`` records what arrived."""

    def __init__(
        self,
        arklet: Arklet,
        identity: Callable[[], str],
        on_request: Callable[[str, Any], None],
        hangs: Callable[[str], bool] = lambda command: False,
    ) -> None:
        self._arklet = arklet
        self._hangs = hangs
        self._identity = identity
        self._on_request = on_request
        self._server: asyncio.Server | None = None
        self._web_server: web.Server | None = None
        self.port = 0

    async def start(self, ip: str, first_port: int) -> int:
        """Listen on the first free port from ``first_port``; returns it."""
        # BaseRequest already caps bodies at 1 MiB, arklet's aggregator limit.
        self._web_server = web.Server(self._handle)
        loop = asyncio.get_running_loop()
        last_error: OSError | None = None
        for port in range(first_port, first_port + ARKLET_PORT_SCAN):
            try:
                self._server = await loop.create_server(self._web_server, ip, port)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                last_error = exc
                continue
            self.port = port
            return port
        raise OSError(f"no free Arklet port on {ip} from {first_port}") from last_error

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            if self._web_server is not None:
                await self._web_server.shutdown(timeout=1.0)
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method != "POST":
            response: web.StreamResponse = web.Response(status=500, text=POST_ONLY_TEXT)
        else:
            response = await self._handle_post(request)
        # Arklet closes the connection after every response.
        response.force_close()
        return response

    async def _handle_post(self, request: web.BaseRequest) -> web.Response:
        name = request.path.lstrip("/")
        raw = await request.read()
        try:
            command = ArkletCommand(name)
        except ValueError:
            self._on_request(name, raw.decode("utf-8", "replace"))  # unknown command
            return self._reply(
                ArkletResponse[Any](
                    code=ResponseCode.CMD_NOT_FOUND,
                    message=CMD_NOT_FOUND_TEXT,
                    base_identity=self._identity(),
                )
            )
        try:
            body = _parse_body(raw)
        except JavaException as exc:
            self._on_request(command.value, raw.decode("utf-8", "replace"))
            return self._internal_error(command, exc)
        self._on_request(command.value, body)
        if self._hangs(command.value):
            await asyncio.Event().wait()  # never answered; ends when the server stops
        try:
            output = await self._arklet.execute(command, body)
        except JavaException as exc:
            return self._internal_error(command, exc)
        output.base_identity = self._identity()
        return self._reply(output)

    def _internal_error(self, command: str, exc: JavaException) -> web.Response:
        """Any exception: CMD_PROCESS_INTERNAL_ERROR with the stack trace, no baseIdentity."""
        log.info("arklet %s failed: %s", command, exc.message)
        return self._reply(
            ArkletResponse[Any](
                code=ResponseCode.CMD_PROCESS_INTERNAL_ERROR,
                message=internal_error_text(exc.message),
                error_stack_trace=exc.stack_trace(),
            )
        )

    @staticmethod
    def _reply(output: ArkletResponse[Any]) -> web.Response:
        return web.Response(
            status=200,
            body=encode(output, style=EnumStyle.TO_STRING),
            content_type="application/json",
        )


def _parse_body(raw: bytes) -> dict[str, Any]:
    """An empty body is ``{}``; anything but a JSON object is a fastjson error."""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise JavaException(f"{JSON_EXCEPTION}: {exc}", java_class=JSON_EXCEPTION) from exc
    if not isinstance(value, dict):
        raise JavaException(
            f"{JSON_EXCEPTION}: can not cast to JSONObject", java_class=JSON_EXCEPTION
        )
    return value
