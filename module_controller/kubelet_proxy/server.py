"""The kubelet proxy: `kubectl logs <module pod>` shows the log of the base's own pod.

With KUBELET_PROXY_ENABLED the virtual nodes advertise the proxy's address (`address.py`)
and KUBELET_PROXY_PORT as their kubelet port (`status.daemonEndpoints.kubeletEndpoint.Port`),
so the API server sends a module pod's log request here, over TLS. The proxy finds the
base's pod (`lookup.py`) and streams that pod's log back through the API server
(`pods/log`), chunk by chunk, for as long as the caller follows it. The Go controller does
the same (its staging/kubelet_proxy).

Log streams go through an API client of their own: a followed log holds its connection for
as long as someone watches, and must not take the connections the operator's own work
needs. At most MAX_STREAMS are served at once; more are refused with 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller.kubelet_proxy.lookup import ApiReader, BaseContainer, locate_base
from module_controller.kubelet_proxy.paths import (
    LogQuery,
    LogTarget,
    Refusal,
    log_query,
    parse_path,
)
from module_controller.kubelet_proxy.tls import server_context

log = logging.getLogger(__name__)

MAX_STREAMS = 64
CONNECT_SECONDS = 10.0
# A log read that is not followed: the API server may pause between chunks, not forever.
READ_SECONDS = 60.0
# What an operator that stops gives log streams in flight to end by themselves.
SHUTDOWN_SECONDS = 2.0
MAX_ERROR_BODY = 4096

Locate = Callable[[LogTarget], Awaitable[BaseContainer]]
OpenLog = Callable[[BaseContainer, LogQuery], contextlib.AbstractAsyncContextManager[Any]]


def _api_message(status: int | None, body: bytes | str | None) -> str:
    """The sentence of an API server error (a Status object), else its text."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    text = (body or "")[:MAX_ERROR_BODY].strip()
    try:
        message = json.loads(text).get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or text or f"status {status}")


def _refusal_of_api_error(what: str, status: int | None, message: str) -> Refusal:
    """How an API server error on the operator's own reads reaches kubectl."""
    if status == 403:
        return Refusal(
            500,
            f"the module controller may not {what} (its ClusterRole needs pods get and "
            f"pods/log get): {message}",
        )
    if status is not None and 400 <= status < 500:
        return Refusal(400, f"{what}: {message}")
    return Refusal(503, f"{what}: the API server answered {status}: {message}")


class ClusterLogSource:
    """Finds base pods and opens their logs, through the API server."""

    def __init__(self, api: client.ApiClient, env: str) -> None:
        self.reader = ApiReader(api)
        self.env = env
        # Same credentials and server, connections of its own (see the module docstring).
        self.log_api = client.ApiClient(configuration=api.configuration)

    async def close(self) -> None:
        await self.log_api.close()

    async def locate(self, target: LogTarget) -> BaseContainer:
        try:
            return await locate_base(self.reader, self.env, target)
        except ApiException as error:
            message = _api_message(error.status, error.body)
            raise _refusal_of_api_error("read pods and nodes", error.status, message) from None
        except (aiohttp.ClientError, TimeoutError) as error:
            raise Refusal(503, f"cannot reach the API server: {error!r}") from None

    @contextlib.asynccontextmanager
    async def open_log(self, base: BaseContainer, query: LogQuery) -> AsyncIterator[Any]:
        """The base pod's log as an aiohttp response body (`.iter_any()`), open while inside.

        `call_api` rather than `read_namespaced_pod_log`: the generated method has no
        sinceTime, and this way one request takes every option as the kubelet got it.
        """
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=CONNECT_SECONDS,
            sock_read=None if query.follow else READ_SECONDS,
        )
        try:
            response = await self.log_api.call_api(
                "/api/v1/namespaces/{namespace}/pods/{name}/log",
                "GET",
                path_params={"namespace": base.namespace, "name": base.pod},
                query_params=[("container", base.container), *query.api_params()],
                # What client-go sends: the API server refuses a plain text/plain here.
                header_params={"Accept": "application/json, */*"},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=timeout,
            )
        except (aiohttp.ClientError, TimeoutError) as error:
            raise Refusal(503, f"cannot reach the API server: {error!r}") from None
        try:
            if response.status != 200:
                message = _api_message(response.status, await response.content.read())
                raise _refusal_of_api_error(
                    f"read the log of base pod {base.namespace}/{base.pod}",
                    response.status,
                    message,
                )
            yield response.content
        finally:
            # A followed log is never read to its end: close, do not return it to the pool.
            response.close()


def make_app(locate: Locate, open_log: OpenLog, max_streams: int = MAX_STREAMS) -> web.Application:
    """The proxy's HTTP application; `locate` and `open_log` reach the cluster."""
    streams = 0

    async def handle(request: web.Request) -> web.StreamResponse:
        nonlocal streams
        try:
            target = parse_path(request.method, request.path)
            query = log_query(request.query)
            base = await locate(target)
            if streams >= max_streams:
                raise Refusal(503, f"{streams} logs are being streamed, the most at once")
            streams += 1
            try:
                return await _stream(request, target, base, query, open_log)
            finally:
                streams -= 1
        except Refusal as refusal:
            log.info(
                "Kubelet proxy: %s %s: %d %s",
                request.method,
                request.path_qs,
                refusal.status,
                refusal.message,
            )
            return web.Response(status=refusal.status, text=refusal.message + "\n")

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", handle)
    return app


async def _stream(
    request: web.Request,
    target: LogTarget,
    base: BaseContainer,
    query: LogQuery,
    open_log: OpenLog,
) -> web.StreamResponse:
    """Relay the base pod's log as it comes; a Refusal only before the first byte."""
    async with open_log(base, query) as body:
        log.debug(
            "Kubelet proxy: the log of %s/%s is base pod %s/%s's (container %s)%s.",
            target.namespace,
            target.pod,
            base.namespace,
            base.pod,
            base.container,
            ", followed" if query.follow else "",
        )
        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await response.prepare(request)
        try:
            async for chunk in body.iter_any():
                await response.write(chunk)
        except ConnectionResetError:
            return response  # the caller left (aiohttp's own reset error is a ClientError too)
        except (aiohttp.ClientError, TimeoutError) as error:
            # Headers are sent: all that is left is to end the stream, and say why here.
            log.warning(
                "Kubelet proxy: the log of %s/%s broke off: %r", base.namespace, base.pod, error
            )
        await response.write_eof()
        return response


class KubeletProxy:
    """Serves the kubelet log API for module pods on `port` over TLS (every interface)."""

    def __init__(
        self,
        api: client.ApiClient,
        env: str,
        port: int,
        *,
        tls_crt: Path | None = None,
        tls_key: Path | None = None,
        client_ca: Path | None = None,
        host: str | None = None,
    ) -> None:
        self.api = api
        self.env = env
        self.requested_port = port
        self.tls = (tls_crt, tls_key, client_ca)
        self.host = host  # None: every interface, IPv4 and IPv6
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._source: ClusterLogSource | None = None

    async def start(self) -> None:
        context = await asyncio.to_thread(server_context, *self.tls)
        source = ClusterLogSource(self.api, self.env)
        try:
            runner = await listen(
                make_app(source.locate, source.open_log), self.host, self.requested_port, context
            )
        except OSError as error:
            await source.close()
            raise OSError(
                error.errno,
                f"the kubelet proxy cannot listen on port {self.requested_port} "
                f"(KUBELET_PROXY_PORT): {error.strerror or error}",
            ) from None
        self._runner, self._source = runner, source
        self.port = bound_port(runner)
        log.info(
            "Kubelet proxy: serving kubectl logs for module pods on port %s (TLS, %s, %s).",
            self.port,
            "configured certificate" if self.tls[0] else "self-signed certificate",
            "client certificates of the given CA only" if self.tls[2] else "any client",
        )

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        source, self._source = self._source, None
        if runner is not None:
            await runner.cleanup()
        if source is not None:
            await source.close()


async def listen(
    app: web.Application, host: str | None, port: int, context: ssl.SSLContext
) -> web.AppRunner:
    """Serve `app` over TLS on `host` (None: every interface) and `port` (0: a free one)."""
    # handler_cancellation: a caller that leaves a followed log ends our side too, even while
    # the base is quiet and no write could fail.
    runner = web.AppRunner(
        app, access_log=None, handler_cancellation=True, shutdown_timeout=SHUTDOWN_SECONDS
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=context).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("the runner listens on no TCP socket")


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now (for tests and the testbed: the proxy's port is advertised)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
