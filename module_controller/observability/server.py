"""The HTTP endpoints people and kubelets look at: `/metrics`, `/healthz` and `/readyz`.

`/metrics` listens on METRICS_PORT and the probes on HEALTH_PORT, as in the Go controller
(9090 and 8081), so a NetworkPolicy or a ServiceMonitor can treat them apart. When both
ports are the same number, one listener serves all three paths.

Liveness says the operator runs: `/healthz` answers 200 only from the end of a good
start-up until the operator stops, and never again after a fatal failure (which also makes
`module-controller run` exit non-zero). It does not follow the broker or the API server:
restarting the operator because either is away would not bring it back. Readiness is the
AND of named checks the operator sets (`HealthChecks`), and it starts false for every check
declared, so a pod is not Ready before the operator has really connected. Each failing
check says why, as `[-]mqtt: connection refused`. Ours, not Kopf's `--liveness`
endpoint: that one has no named readiness checks that say why they fail.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiohttp import web

from module_controller.observability.metrics import Metrics

DEFAULT_METRICS_PORT = 9090
DEFAULT_HEALTH_PORT = 8081


@dataclass
class _Check:
    ready: bool = False
    detail: str = "not reported yet"


class HealthChecks:
    """Named readiness checks; ready when every one of them is. Also the operator's liveness.

    Declare the checks at start-up (`HealthChecks(["kubernetes", "mqtt"])`) and report them
    as things happen: `readiness.set("mqtt", False, "broker connection lost")`. Liveness
    lives here too because the code that meets a fatal failure holds only this object.
    """

    def __init__(self, checks: Iterable[str]) -> None:
        self._checks = {name: _Check() for name in checks}
        if not self._checks:
            raise ValueError("HealthChecks needs at least one check, or it would be ready at once")
        self._liveness = "start-up has not finished"  # "ok" while the operator runs
        self.fatal: str | None = None  # why the operator stopped for good, if it did

    def operator_started(self) -> None:
        """Start-up finished: /healthz answers 200 (unless a fatal failure came first)."""
        if self.fatal is None:
            self._liveness = "ok"

    def operator_stopped(self) -> None:
        if self.fatal is None:
            self._liveness = "the operator has stopped"

    def operator_failed(self, name: str, detail: str) -> None:
        """A failure the operator does not recover from: check `name` fails with `detail`,
        /healthz fails, and `module-controller run` exits non-zero (it reads `fatal`)."""
        self.set(name, False, detail)
        self.fatal = f"{name}: {self._checks[name].detail}"
        self._liveness = f"failed: {self.fatal}"

    @property
    def alive(self) -> bool:
        return self._liveness == "ok"

    def liveness_report(self) -> str:
        return "ok\n" if self.alive else f"not running: {self._liveness}\n"

    def set(self, name: str, ready: bool, detail: str = "") -> None:
        if name not in self._checks:
            # A typo here would otherwise leave the real check false forever.
            raise KeyError(f"unknown readiness check {name!r}; declared: {sorted(self._checks)}")
        # One line per check in the report, whatever an exception message contains.
        detail = " ".join(detail.split())
        self._checks[name] = _Check(ready, detail or ("ok" if ready else "not ready"))

    @property
    def ready(self) -> bool:
        return all(check.ready for check in self._checks.values())

    def report(self) -> str:
        """One line per check, in the style of Kubernetes' own `/readyz?verbose`: `[+]name ok`
        for a passing check, `[-]name: why` for a failing one."""
        lines = [
            f"[+]{name} {check.detail}" if check.ready else f"[-]{name}: {check.detail}"
            for name, check in self._checks.items()
        ]
        lines.append("readyz check passed" if self.ready else "readyz check failed")
        return "\n".join(lines) + "\n"


@dataclass
class ObservabilityServer:
    """The running listeners; `ports` maps each path to the port it really listens on."""

    runners: list[web.AppRunner]
    ports: dict[str, int] = field(default_factory=dict)


def _metrics_routes(metrics: Metrics) -> list[web.RouteDef]:
    async def serve_metrics(request: web.Request) -> web.Response:
        body, content_type = metrics.exposition(request.headers.get("Accept", ""))
        # The content type carries a version and charset, which aiohttp takes only as a
        # header, not through `content_type=`.
        return web.Response(body=body, headers={"Content-Type": content_type})

    return [web.get("/metrics", serve_metrics)]


def _health_routes(readiness: HealthChecks) -> list[web.RouteDef]:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(
            text=readiness.liveness_report(), status=200 if readiness.alive else 503
        )

    async def readyz(_: web.Request) -> web.Response:
        return web.Response(text=readiness.report(), status=200 if readiness.ready else 503)

    return [web.get("/healthz", healthz), web.get("/readyz", readyz)]


def _listen(host: str, port: int) -> socket.socket:
    """Bind the socket ourselves so port 0 works and the chosen port can be read back."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def _serve(routes: list[web.RouteDef], host: str, port: int) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app, access_log=None)  # kubelets probe every few seconds
    await runner.setup()
    try:
        sock = _listen(host, port)
        site = web.SockSite(runner, sock)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, sock.getsockname()[1]


async def start(
    metrics: Metrics,
    readiness: HealthChecks,
    *,
    metrics_port: int = DEFAULT_METRICS_PORT,
    health_port: int = DEFAULT_HEALTH_PORT,
    host: str = "0.0.0.0",
) -> ObservabilityServer:
    """Start listening; the default host is every interface, since kubelets and Prometheus
    reach the pod on its IP. Port 0 picks a free port (tests)."""
    server = ObservabilityServer(runners=[])
    try:
        if metrics_port == health_port and metrics_port != 0:
            routes = _metrics_routes(metrics) + _health_routes(readiness)
            runner, port = await _serve(routes, host, metrics_port)
            server.runners.append(runner)
            server.ports = dict.fromkeys(("/metrics", "/healthz", "/readyz"), port)
        else:
            runner, port = await _serve(_metrics_routes(metrics), host, metrics_port)
            server.runners.append(runner)
            server.ports["/metrics"] = port
            runner, port = await _serve(_health_routes(readiness), host, health_port)
            server.runners.append(runner)
            server.ports |= {"/healthz": port, "/readyz": port}
    except BaseException:
        await stop(server)
        raise
    return server


async def stop(server: ObservabilityServer) -> None:
    """Close the listeners and finish requests in flight."""
    while server.runners:
        await server.runners.pop().cleanup()
