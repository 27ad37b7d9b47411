"""The running operator: the tunnel, the base registry and the node syncer, wired together.

Kopf's start-up handler builds one `ModuleController` and keeps it in the memo; its
background tasks (broker connection, liveness ticks, lease renewal, health polling) are
operator-level tasks, never per-object Kopf timers, so nothing is written onto objects
the operator does not own.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import cast

from kubernetes_asyncio import client

from module_controller.k8s_events import EventRecorder, ObjectRef
from module_controller.modules.baseline import baseline_for
from module_controller.modules.planner import EventType
from module_controller.modules.state import ModulePod, ModuleState
from module_controller.modules.sync import ModuleSync, poll_inventories
from module_controller.observability.metrics import Metrics, MqttDropReason, MqttReceivedKind
from module_controller.observability.server import Readiness
from module_controller.protocol import BaseStatus
from module_controller.registry import BaseRegistry
from module_controller.settings import Settings
from module_controller.tasks import cancel_and_wait
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
from module_controller.vnodes import NodeSyncer, node_labels

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
        self.nodes.api_errors = lambda status: self.metrics.record_api_error("nodes", status)
        self.tunnel = MqttTunnel(
            settings,
            self.handle,
            on_drop=self._count_drop,
            on_reconnect=self.metrics.record_broker_reconnect,
            on_published=self._count_published,
        )
        self.events = EventRecorder(api, instance=settings.client_id, metrics=self.metrics)
        self.modules = ModuleState()
        self.module_sync = ModuleSync(
            settings, self.registry, self.modules, self.tunnel, api, self.metrics, self
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._short_tasks: set[asyncio.Task[None]] = set()
        self._probe_denied_told = False

    async def start(self) -> None:
        await self.nodes.adopt_existing()
        self.readiness.set("kubernetes", True, "listed this operator's nodes")
        self.nodes.start()
        self.events.start()
        await self._list_module_pods()
        self.module_sync.start()
        self._spawn(self.tunnel.run(), "mqtt-tunnel")
        self._spawn(
            self._every(self.settings.inventory_poll_seconds, self._poll_inventories),
            "inventories",
        )
        self._spawn(self._every(TICK_SECONDS, self._tick), "liveness")
        self._spawn(
            self._every(self.settings.lease_renew_seconds, self.nodes.renew_leases), "leases"
        )
        self._spawn(self._every(self.settings.health_poll_seconds, self._poll_health), "health")

    async def stop(self) -> None:
        await cancel_and_wait([*self._tasks, *self._short_tasks])
        self._tasks.clear()
        await self.module_sync.stop()
        await self.nodes.stop()
        await self.events.stop()

    def _spawn(self, work: Awaitable[None], name: str) -> None:
        async def guarded() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except BaseException as error:
                # A background task must never die silently: say so, then stop the process
                # (Kopf shuts down on SIGTERM) so that it is restarted whole, not half-alive.
                # operator_failed makes /healthz fail and `module-controller run` exit 1.
                log.critical("The %s task failed; the operator stops.", name, exc_info=True)
                check = "mqtt" if name == "mqtt-tunnel" else "kubernetes"
                self.readiness.operator_failed(check, f"the {name} task failed: {error!r}")
                signal.raise_signal(signal.SIGTERM)
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
            self._heartbeat(event)
        elif isinstance(event, BaseHealthReport):
            changed = self.registry.health(event.identity, event.health)
            self._nodes_changed(changed)
        elif isinstance(event, BaseInventory):
            if event.identity in self.registry.bases:
                self.module_sync.inventory_reported(event.identity, event.modules)
        elif isinstance(event, BizOperationResult):
            if event.identity in self.registry.bases:
                await self.module_sync.operation_answered(event.identity, event.result)
        elif isinstance(event, BatchInstallResult):
            if event.identity in self.registry.bases:
                await self.module_sync.batch_answered(event.identity, event.result)
        elif isinstance(event, BaselineQuery):
            self._spawn_once(self._answer_baseline(event), f"baseline-{event.identity}")
        elif isinstance(event, BrokerConnected):
            # A fresh session whose subscriptions were acknowledged: the broker delivers.
            self._broker_delivers()
            self.registry.broker_up()
            self.readiness.set("mqtt", True, "connected to the broker")
        elif isinstance(event, BrokerDisconnected):
            self.readiness.set("mqtt", False, event.reason)
            if event.was_connected:
                log.warning(
                    "Lost the MQTT broker (%s): base liveness is paused until it is back.",
                    event.reason,
                )
            self.registry.broker_down()

    def _heartbeat(self, event: BaseHeartbeat) -> None:
        known = self.registry.bases.get(event.identity)
        first_time = known is None or not known.heard_since_start
        changed = self.registry.heartbeat(event.identity, event.status)
        self._nodes_changed(changed)
        record = self.registry.bases.get(event.identity)
        if record is not None and (first_time or changed):
            if self.modules.bases[event.identity].inventory is None:
                self._spawn_once(self.module_sync.query_inventory(event.identity), "inventory")
            self.module_sync.base_changed(event.identity)

    def _nodes_changed(self, names: list[str]) -> None:
        """Resync nodes, say what happened to them, forget the modules of bases gone."""
        for name in names:
            record = self.registry.base_of_node(name)
            departure = self.registry.departures.pop(name, None)
            if record is None and departure is not None:
                self._spawn_once(self._retire_node(name, departure), f"retire-{name}")
            else:
                self.nodes.resync([name])
            node = self._node_ref(name)
            if record is None:
                gone = departure or f"the base of {name} is gone"
                self.events.record(node, "Normal", "BaseGone", gone)
                for identity in list(self.modules.bases):
                    if identity not in self.registry.bases:
                        self.modules.forget_base(identity)
            elif not record.ready:
                self.events.record(node, "Warning", "BaseNotReady", str(record.not_ready_reason))
            elif name not in self.nodes.existing:
                self.events.record(
                    node, "Normal", "BaseOnline", f"base {record.identity} is online at {record.ip}"
                )

    def _node_ref(self, name: str) -> ObjectRef:
        applied = self.nodes.existing.get(name)
        uid = applied.uid if applied is not None else ""
        return ObjectRef(kind="Node", name=name, namespace=None, uid=uid)

    async def _retire_node(self, name: str, reason: str) -> None:
        """A base is gone: its pods say so first, then its node goes (we are its kubelet)."""
        try:
            await self.module_sync.base_gone(name, reason)
        finally:
            self.nodes.resync([name])

    def pod_event(self, pod: ModulePod, type: EventType, reason: str, message: str) -> None:
        """Events about module pods, from the module planner."""
        ref = ObjectRef(kind="Pod", name=pod.name, namespace=pod.namespace, uid=pod.uid)
        self.events.record(ref, type, reason, message)

    async def _poll_inventories(self) -> None:
        if self.tunnel.connected.is_set():
            try:
                await poll_inventories(self.registry, self.tunnel)
            except TunnelUnavailable:
                return

    async def _answer_baseline(self, query: BaselineQuery) -> None:
        """A starting base asks which modules it should install by itself."""
        apps = client.AppsV1Api(self.api)
        deployments = await apps.list_deployment_for_all_namespaces()
        raw = [self.api.sanitize_for_serialization(d) for d in deployments.items]
        status = BaseStatus(base_metadata=query.metadata)
        record_labels = node_labels(
            self.registry.node_name_for(query.identity), status, self.settings
        )
        modules = baseline_for(raw, record_labels, self.settings.module_label)
        await self.tunnel.send_baseline(query.identity, modules)
        log.info(
            "Answered the baseline query of base %s with %d module(s): %s.",
            query.identity,
            len(modules),
            ", ".join(m.key for m in modules) or "none",
        )

    def _spawn_once(self, work: Awaitable[None], name: str) -> None:
        """A short-lived task whose failure is logged, not fatal."""

        async def guarded() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed", name)

        task = asyncio.create_task(guarded(), name=name)
        self._short_tasks.add(task)
        task.add_done_callback(self._short_tasks.discard)

    # --- what the cluster says about module pods ------------------------------------------

    async def _list_module_pods(self) -> None:
        """Know every module pod before judging any module an orphan."""
        core = client.CoreV1Api(self.api)
        pods = await core.list_pod_for_all_namespaces(label_selector=self.settings.module_selector)
        now = self.module_sync.clock()
        for pod in pods.items:
            self.modules.upsert_pod(self.api.sanitize_for_serialization(pod), now)
        self.modules.listed = True
        log.info("Listed %d module pod(s).", len(pods.items))

    def module_pod_changed(self, event_type: str | None, body: dict[str, object]) -> None:
        """A module pod was added, changed or deleted (from the Kopf watch)."""
        metadata = body.get("metadata")
        uid = str(metadata.get("uid")) if isinstance(metadata, dict) else ""
        if event_type == "DELETED":
            nodes = self.modules.remove_pod(uid)
        else:
            nodes = self.modules.upsert_pod(dict(body), self.module_sync.clock())
        self.module_sync.nodes_changed(nodes)

    async def _tick(self) -> None:
        self._judge_broker()
        changed = self.registry.tick()
        self._nodes_changed(changed)
        self.module_sync.nodes_changed(set(changed))
        bases = self.registry.live_bases()
        self.metrics.set_bases(len(bases))
        ready = sum(1 for base in bases if base.ready)
        self.metrics.set_nodes({"ready": ready, "not_ready": len(bases) - ready})
        self.metrics.set_module_pods(self.module_sync.pod_states())
        self.metrics.set_mass_silence(self.registry.mass_silence)

    def _judge_broker(self) -> None:
        """Connected is not enough: the broker must deliver our own probe back in time."""
        silence = self.tunnel.delivery_silence()
        if silence is None:
            return  # disconnected: BrokerDisconnected already paused liveness
        bound = self.settings.broker_suspect_seconds
        if not self.tunnel.probe_returned:
            # Our probe never came back on this connection (an ACL may deny its topic).
            # Silence proves nothing then (a dead fleet is silent too): only the MQTT
            # keepalive can tell a frozen broker, so say so once and judge no further.
            if silence >= bound and not self._probe_denied_told:
                self._probe_denied_told = True
                log.warning(
                    "Our broker probe on %s never came back: does the broker's ACL deny this "
                    "client that topic? Without it a frozen broker is noticed only by the MQTT "
                    "keepalive (MQTT_KEEPALIVE_SECONDS), so nodes may go NotReady first.",
                    self.tunnel.probe_topic,
                )
            return
        self._probe_denied_told = False
        if silence < bound:
            if not self.registry.broker_delivering:
                log.info("The MQTT broker delivers again: base liveness resumes.")
                self._broker_delivers()
                self.readiness.set("mqtt", True, "the broker delivers")
            return
        detail = f"no message through the broker for {silence:.0f}s"
        self.readiness.set("mqtt", False, detail)
        if not self.registry.broker_delivering:
            return
        self.registry.broker_suspect()
        self.metrics.set_broker_delivering(False)
        log.warning(
            "The MQTT broker is suspect: %s although connected (our probe did not come back). "
            "Base liveness is paused: no node goes NotReady or is deleted for this silence.",
            detail,
        )
        for record in self.registry.live_bases():
            self.events.record(
                self._node_ref(record.node_name),
                "Warning",
                "BrokerSuspect",
                "the MQTT broker delivers nothing (not even the operator's own probe): base "
                "liveness is paused, the node is kept as it was",
            )

    def _broker_delivers(self) -> None:
        self.registry.broker_delivers()
        self.metrics.set_broker_delivering(True)

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
