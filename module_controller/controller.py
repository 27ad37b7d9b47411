"""The running operator: the tunnel, the base registry and the node syncer, wired together.

Kopf's start-up handler builds one `ModuleController` and keeps it in the memo; its
background tasks (broker connection, liveness ticks, lease renewal, health polling) are
operator-level tasks, never per-object Kopf timers, so nothing is written onto objects
the operator does not own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import cast

from kubernetes_asyncio import client

from module_controller.observability.metrics import Metrics, MqttDropReason, MqttReceivedKind
from module_controller.observability.server import Readiness
from module_controller.registry import BaseRegistry
from module_controller.settings import Settings
from module_controller.tunnels.events import (
    BaseHealthReport,
    BaseHeartbeat,
    BaseInventory,
    BaselineQuery,
    BatchInstallResult,
    BizOperationResult,
    BrokerConnected,
    BrokerDisconnected,
    TunnelEvent,
)
from module_controller.tunnels.mqtt import MqttTunnel, TunnelUnavailable
from module_controller.vnodes import NodeSyncer

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0


_RECEIVED_KIND: dict[type, MqttReceivedKind] = {
    BaseHeartbeat: "heart",
    BaselineQuery: "query_baseline",
    BaseHealthReport: "health",
    BaseInventory: "simple_biz",
    BizOperationResult: "biz_operation",
    BatchInstallResult: "batch_install_biz_response",
}


class ModuleController:
    def __init__(
        self,
        settings: Settings,
        api: client.ApiClient,
        metrics: Metrics | None = None,
        readiness: Readiness | None = None,
    ) -> None:
        self.settings = settings
        self.api = api
        self.metrics = metrics or Metrics()
        self.readiness = readiness or Readiness(["kubernetes", "mqtt"])
        self.registry = BaseRegistry(settings)
        self.nodes = NodeSyncer(settings, self.registry, api)
        self.tunnel = MqttTunnel(
            settings,
            self.handle,
            on_drop=self._count_drop,
            on_reconnect=self.metrics.record_broker_reconnect,
            on_published=self._count_published,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self.started = asyncio.Event()
        self.failed = asyncio.Event()

    async def start(self) -> None:
        await self.nodes.adopt_existing()
        self.readiness.set("kubernetes", True, "listed this operator's nodes")
        self.nodes.start()
        self._spawn(self.tunnel.run(), "mqtt-tunnel")
        self._spawn(self._every(TICK_SECONDS, self._tick), "liveness")
        self._spawn(
            self._every(self.settings.lease_renew_seconds, self.nodes.renew_leases), "leases"
        )
        self._spawn(self._every(self.settings.health_poll_seconds, self._poll_health), "health")
        self.started.set()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.nodes.stop()

    def _spawn(self, work: Awaitable[None], name: str) -> None:
        async def guarded() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except BaseException:
                # A background task must never die silently: say so loudly, then stop.
                log.critical("The %s task failed; the operator cannot go on.", name, exc_info=True)
                self.failed.set()
                raise

        self._tasks.append(asyncio.create_task(guarded(), name=name))

    async def _every(self, seconds: float, work: Callable[[], Awaitable[None]]) -> None:
        """Run `work` every `seconds`; one failure is logged and does not end the loop."""
        while True:
            await asyncio.sleep(seconds)
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "Periodic task %s failed; it runs again in %.0fs.",
                    getattr(work, "__name__", work),
                    seconds,
                )

    # --- what bases say ---------------------------------------------------------------------

    async def handle(self, event: TunnelEvent) -> None:
        """Apply one tunnel event; called in order by the tunnel's message loop."""
        kind = _RECEIVED_KIND.get(type(event))
        if kind is not None:
            self.metrics.record_mqtt_received(kind)
        if isinstance(event, BaseHeartbeat):
            self.nodes.resync(self.registry.heartbeat(event.identity, event.status))
        elif isinstance(event, BaseHealthReport):
            self.nodes.resync(self.registry.health(event.identity, event.health))
        elif isinstance(event, BrokerConnected):
            self.registry.broker_up()
            self.readiness.set("mqtt", True, "connected to the broker")
        elif isinstance(event, BrokerDisconnected):
            self.readiness.set("mqtt", False, event.reason)
            log.warning(
                "Lost the MQTT broker (%s): base liveness is paused until it is back.",
                event.reason,
            )
            self.registry.broker_down()

    async def _tick(self) -> None:
        self.nodes.resync(self.registry.tick())
        bases = self.registry.live_bases()
        self.metrics.set_bases(len(bases))
        ready = sum(1 for base in bases if base.ready)
        self.metrics.set_nodes({"ready": ready, "not_ready": len(bases) - ready})

    def _count_drop(self, reason: str) -> None:
        self.metrics.record_mqtt_dropped(cast(MqttDropReason, reason))

    def _count_published(self, command: str) -> None:
        self.metrics.record_mqtt_published("baseline" if command == "baseline" else "command")

    async def _poll_health(self) -> None:
        if not self.tunnel.connected.is_set():
            return
        for identity in list(self.registry.identities()):
            try:
                await self.tunnel.query_health(identity)
            except TunnelUnavailable:
                return

    # --- what the cluster says ---------------------------------------------------------------

    def node_deleted(self, name: str) -> None:
        """Someone deleted one of our nodes: recreate it if its base is alive."""
        if self.registry.base_of_node(name) is not None:
            log.info("Node %s was deleted while its base is alive: recreating it.", name)
        self.nodes.forget(name)
