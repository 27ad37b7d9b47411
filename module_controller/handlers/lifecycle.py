"""Operator start-up and shut-down: settings, the API client, the controller's tasks."""

from __future__ import annotations

import logging
from typing import Any

import kopf
from kubernetes_asyncio import client

from module_controller.controller import ModuleController
from module_controller.kube import new_api_client
from module_controller.observability import server
from module_controller.observability.metrics import Metrics
from module_controller.observability.server import Readiness
from module_controller.settings import SettingsError, load_settings
from module_controller.vnodes import node_selector

log = logging.getLogger(__name__)


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    try:
        ours = load_settings()
    except SettingsError as error:
        raise kopf.PermanentError(str(error)) from None
    # Server-side filter: the operator sees only its own nodes, not every node.
    settings.watching.label_selectors["v1", "nodes"] = node_selector(ours)
    settings.watching.label_selectors["v1", "pods"] = ours.module_selector
    settings.posting.level = logging.INFO
    metrics = Metrics()
    readiness = Readiness(["kubernetes", "mqtt"])
    http = await server.start(
        metrics, readiness, metrics_port=ours.metrics_port, health_port=ours.health_port
    )
    memo["http"] = http
    log.info(
        "Serving /metrics on port %s and /healthz, /readyz on port %s.",
        http.ports.get("/metrics"),
        http.ports.get("/healthz"),
    )
    api = await new_api_client()
    controller = ModuleController(ours, api, metrics, readiness)
    memo["api"] = api
    memo["controller"] = controller
    await controller.start()
    log.info(
        "Module controller %s started for env %s (broker %s:%d).",
        ours.client_id,
        ours.env,
        ours.mqtt_broker,
        ours.mqtt_port,
    )


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    controller: ModuleController | None = memo.get("controller")
    if controller is not None:
        await controller.stop()
    api: client.ApiClient | None = memo.get("api")
    if api is not None:
        await api.close()
    http: server.ObservabilityServer | None = memo.get("http")
    if http is not None:
        await server.stop(http)
