"""Operator start-up and shut-down: settings, the API client, the runtime's tasks.

A start that fails stops the operator, and `module-controller run` exits 1 with the cause
on its last line, so that Kubernetes restarts the pod (with its back-off) and the cause
shows in `kubectl describe` and the logs. Retrying inside the process would look alive
while doing nothing. Before it fails, the start-up undoes what it started (listeners,
client, tasks), so nothing is left bound or running either way.

`/healthz` answers 200 only from the end of a good start-up until shut-down begins.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import aiohttp
import kopf
from kubernetes_asyncio.client.rest import ApiException

from module_controller.kube import new_api_client
from module_controller.modules.peer import PEER_SELECTOR
from module_controller.observability import server
from module_controller.observability.api_probe import ApiProbe
from module_controller.observability.metrics import Metrics
from module_controller.observability.server import HealthChecks
from module_controller.operator_memo import OperatorMemo, operator_memo
from module_controller.runtime import Runtime, health_check_names
from module_controller.settings import SettingsError, load_settings

log = logging.getLogger(__name__)


def describe_startup_error(error: BaseException) -> str:
    """One line for why start-up failed; the usual causes are the API server's."""
    if isinstance(error, ApiException):
        return f"the Kubernetes API server answered {error.status} {error.reason}"
    if isinstance(error, TimeoutError):
        return "the Kubernetes API server did not answer in time"
    if isinstance(error, aiohttp.ClientConnectorError):
        return f"cannot reach the Kubernetes API server: {error}"
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class NoDiffBase(kopf.DiffBaseStorage):
    """No diff base: this operator has only `on.event` handlers, which get no diff.

    Kopf builds an object's diff base on every event, whatever the handlers: a deep copy of
    the whole body, another to clear its progress stanzas, then a diff. Measured during a
    release of 200 module pods, while Kopf still watched them, that was a fifth of the
    operator's CPU. Handlers that do want a diff (`on.update`, `on.field`, timers,
    daemons) would need Kopf's own storage back: tests/unit/test_handlers.py fails then.
    """

    def build(
        self,
        *,
        body: kopf.Body,
        extra_fields: Iterable[kopf.FieldSpec] | None = None,
    ) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    ours_memo = operator_memo(memo)
    try:
        ours = load_settings()
    except SettingsError as error:
        raise _fail(ours_memo, str(error)) from None
    # Only peer Deployments reach the operator (handlers/peer.py), whether that is on or not.
    settings.watching.label_selectors["apps", "deployments"] = PEER_SELECTOR
    # Module pods, node Leases and our nodes are watched by the runtime (kube_watch.py), not
    # Kopf. Nothing Kopf watches needs discovering, so no need for its namespace and CRD
    # scanning (nor for the RBAC rules it would need).
    settings.scanning.disabled = True
    settings.persistence.diffbase_storage = NoDiffBase()
    metrics = Metrics()
    health = HealthChecks(health_check_names(ours))
    ours_memo.health = health
    try:
        http = await server.start(
            metrics, health, metrics_port=ours.metrics_port, health_port=ours.health_port
        )
    except OSError as error:
        ports = f"{ours.metrics_port} and {ours.health_port}"
        raise _fail(
            ours_memo, f"cannot listen on ports {ports}: {error.strerror or error}"
        ) from None
    ours_memo.http = http
    log.info(
        "Serving /metrics on port %s and /healthz, /readyz on port %s.",
        http.ports.get("/metrics"),
        http.ports.get("/healthz"),
    )
    try:
        api = await new_api_client()
        ours_memo.api = api
        runtime = Runtime(ours, api, metrics, health, ours_memo.stop_flag)
        ours_memo.runtime = runtime
        await runtime.start()
        probe = ApiProbe(api, health)
        ours_memo.api_probe = probe
        probe.start()
    except BaseException as error:
        await _undo(ours_memo)
        if isinstance(error, Exception):
            reason = f"start-up failed: {describe_startup_error(error)}"
            raise _fail(ours_memo, reason) from error
        raise  # cancelled: Kopf is stopping anyway
    health.operator_started()
    tunnels = []
    if ours.enable_mqtt_tunnel:
        tunnels.append(f"MQTT broker {ours.mqtt_broker}:{ours.mqtt_port}")
    if runtime.http_server is not None:
        tunnels.append(f"HTTP tunnel on port {runtime.http_server.port}")
    log.info(
        "Module controller %s started for env %s (%s).",
        ours.client_id,
        ours.env,
        ", ".join(tunnels),
    )


@kopf.on.cleanup()
async def stop(memo: Any, **_: Any) -> None:
    ours_memo = operator_memo(memo)
    if ours_memo.health is not None:
        ours_memo.health.operator_stopped()
    await _undo(ours_memo)
    if ours_memo.stop_flag is not None:
        # Stopping anyway (a signal): Kopf 1.45 leaves its stop-flag waiter pending on a
        # signal and then waits 5 s for it as a hung task before it exits.
        ours_memo.stop_flag.set()


def _fail(memo: OperatorMemo, reason: str) -> kopf.PermanentError:
    """The error that ends start-up for good; `run` prints `reason` and exits 1."""
    memo.startup_failure = reason
    return kopf.PermanentError(reason)


async def _undo(memo: OperatorMemo) -> None:
    """Stop whatever start-up got to start, newest first, each once; one failing to stop
    does not keep the others (the listeners above all) running."""
    steps: list[tuple[str, Callable[[], Awaitable[None]]]] = []
    probe, memo.api_probe = memo.api_probe, None
    if probe is not None:
        steps.append(("the API probe", probe.stop))
    runtime, memo.runtime = memo.runtime, None
    if runtime is not None:
        steps.append(("the runtime", runtime.stop))
    api, memo.api = memo.api, None
    if api is not None:
        steps.append(("the API client", api.close))
    http, memo.http = memo.http, None
    if http is not None:
        steps.append(("the HTTP listeners", lambda: server.stop(http)))
    for what, step in steps:
        try:
            await step()
        except Exception:
            log.exception("Stopping %s failed.", what)
