"""The dispatcher: takes events out of the inbox, one at a time, and applies them.

One `match` over the event types. Each event updates the base registry (bases) or the
module state (module pods, what each base holds), then hands the work that follows to the
one that does it: the node syncer (Nodes and Leases), the module sync (the per-base
planner, commands, ordered status patches), the baseline answers, the Event recorder.
Applying an event never waits on the network: every step here is a plain method call, so
a slow API server or broker delays the work, never the reading of what bases say.
"""

from __future__ import annotations

import asyncio
import logging

from module_controller.inbox import (
    Inbox,
    ModulePodChanged,
    NodeDeleted,
    OperatorEvent,
    OwnershipChanged,
    Tick,
)
from module_controller.k8s_events import EventRecorder, ObjectRef
from module_controller.late_intake import Verdict
from module_controller.lograte import RateLimitedLog
from module_controller.modules.baseline import BaselineAnswers
from module_controller.modules.state import ModuleState
from module_controller.modules.sync import ModuleSync
from module_controller.observability.metrics import Metrics, MqttReceivedKind
from module_controller.observability.server import HealthChecks
from module_controller.protocol import BaseStatus
from module_controller.registry import BaseRegistry
from module_controller.settings import Settings
from module_controller.shards.gate import OwnerGate, SoleOwner
from module_controller.tasks import BackgroundTasks
from module_controller.tunnels.events import (
    ArkletCallFailed,
    BaseHealthReport,
    BaseHeartbeat,
    BaseInventory,
    BaselineQuery,
    BatchInstallResult,
    BizOperationResult,
    BrokerConnected,
    BrokerDisconnected,
    TunnelKind,
)
from module_controller.tunnels.mqtt import probe_topic
from module_controller.vnodes import NodeSyncer

log = logging.getLogger(__name__)

# How often the module pods gauge is counted again (on the next tick after this long).
POD_GAUGE_SECONDS = 5.0

YIELD_EVERY = 100

BaseAnswer = BaseHealthReport | BaseInventory | BizOperationResult | BatchInstallResult
_BASE_ANSWERS = (BaseHealthReport, BaseInventory, BizOperationResult, BatchInstallResult)

_RECEIVED_KIND: dict[type, MqttReceivedKind] = {
    BaseHeartbeat: "heart",
    BaselineQuery: "query_baseline",
    BaseHealthReport: "health",
    BaseInventory: "simple_biz",
    BizOperationResult: "biz_operation",
    BatchInstallResult: "batch_install_biz_response",
}


class Dispatcher:
    def __init__(
        self,
        settings: Settings,
        registry: BaseRegistry,
        module_state: ModuleState,
        nodes: NodeSyncer,
        module_sync: ModuleSync,
        baseline: BaselineAnswers,
        events: EventRecorder,
        health: HealthChecks,
        metrics: Metrics,
        owner: OwnerGate | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.module_state = module_state
        self.nodes = nodes
        self.module_sync = module_sync
        self.baseline = baseline
        self.events = events
        self.health = health
        self.metrics = metrics
        # Events and baselines only for the bases this replica owns (shards/).
        self.owner: OwnerGate = owner or SoleOwner()
        self.retirements = BackgroundTasks("dispatcher")
        self._probe_denied_told = False
        self._log = RateLimitedLog(log)
        self._pods_counted_at: float | None = None

    async def run(self, inbox: Inbox) -> None:
        """Apply the inbox's events in order, for ever. A bug in applying one event costs
        that event (logged with its trace), not the operator."""
        applied = 0
        while True:
            event = await inbox.get()
            try:
                self.dispatch(event)
            except Exception:
                log.exception("Applying %s failed; the event is dropped.", type(event).__name__)
            applied += 1
            if applied % YIELD_EVERY == 0:
                # get() does not suspend while events wait: let the workers, the reader and
                # /healthz run during a long backlog.
                await asyncio.sleep(0)

    async def stop(self) -> None:
        await self.retirements.stop()

    def dispatch(self, event: OperatorEvent) -> None:
        """Apply one event. Never awaits: what needs the network is queued for others."""
        kind = _RECEIVED_KIND.get(type(event))
        if kind is not None and getattr(event, "tunnel", None) == "mqtt":
            self.metrics.record_mqtt_received(kind)
        if isinstance(event, _BASE_ANSWERS) and not self._on_its_tunnel(event):
            return
        match event:
            case BaseHeartbeat(identity=identity, status=status, tunnel=tunnel):
                self._heartbeat(identity, status, tunnel)
            case BaseHealthReport(identity=identity, health=health, tunnel=tunnel):
                if tunnel == "http":
                    self._nodes_changed(self.registry.arklet_answered(identity))
                self._nodes_changed(self.registry.health(identity, health))
            case BaseInventory(identity=identity, modules=modules, tunnel=tunnel):
                if tunnel == "http":
                    self._nodes_changed(self.registry.arklet_answered(identity))
                if identity in self.registry.bases:
                    self.module_sync.inventory_reported(identity, modules)
            case BizOperationResult(identity=identity, result=result):
                if identity in self.registry.bases:
                    self.module_sync.operation_answered(identity, result)
            case ArkletCallFailed(identity=identity, reason=reason):
                self.registry.arklet_failed(identity, reason)
            case BatchInstallResult(identity=identity, result=result):
                if identity in self.registry.bases:
                    self.module_sync.batch_answered(identity, result)
            case BaselineQuery(identity=identity):
                if self.owner.may_write_node(self.registry.node_name_for(identity), identity):
                    self.baseline.answer(event)
            case BrokerConnected():
                # A fresh session whose subscriptions were acknowledged: the broker delivers.
                self._broker_delivers()
                self.registry.broker_up()
                self.health.set("mqtt", True, "connected to the broker")
            case BrokerDisconnected(reason=reason, was_connected=was_connected):
                self.health.set("mqtt", False, reason)
                if was_connected:
                    log.warning(
                        "Lost the MQTT broker (%s): base liveness is paused until it is back.",
                        reason,
                    )
                self.registry.broker_down()
            case ModulePodChanged(type=type_, body=body):
                self._module_pod_changed(type_, body)
            case OwnershipChanged(node_names=names):
                self._adopt(names)
            case NodeDeleted(name=name):
                if self.registry.base_of_node(name) is not None:
                    log.info("Node %s was deleted while its base is alive: recreating it.", name)
                self.nodes.forget(name)
            case Tick():
                self._tick(event)

    # --- bases ----------------------------------------------------------------------------

    def _on_its_tunnel(self, event: BaseAnswer) -> bool:
        """An answer counts only on the tunnel its base speaks: a message on the other one
        (a stranger publishing on its MQTT topics, say) must not change what we know."""
        record = self.registry.bases.get(event.identity)
        if record is None or record.tunnel == event.tunnel:
            return True
        self._log.warning(
            "other_tunnel_answer",
            "Ignored a %s %s of base %s: it speaks %s.",
            event.tunnel.upper(),
            type(event).__name__,
            event.identity,
            record.tunnel.upper(),
        )
        return False

    def _heartbeat(self, identity: str, status: BaseStatus, tunnel: TunnelKind) -> None:
        known = self.registry.bases.get(identity)
        first_time = known is None or not known.heard_since_start
        changed = self.registry.heartbeat(identity, status, tunnel)
        self._nodes_changed(changed)
        if identity in self.registry.bases and (first_time or changed):
            if self.module_state.base_modules[identity].inventory is None:
                self.module_sync.want_inventory(identity)
            self.module_sync.base_changed(identity)

    def _nodes_changed(self, names: list[str]) -> None:
        """Resync nodes, say what happened to them, forget the modules of bases gone, and
        plan their pods again: a base Ready again (an HTTP base whose Arklet API answers
        again, say) must put its pods back, and nothing else may come for them."""
        if not names:
            return  # most heartbeats and ticks change nothing
        self.module_sync.nodes_changed(set(names))
        for name in names:
            record = self.registry.base_of_node(name)
            departure = self.registry.departures.pop(name, None)
            if record is None and departure is not None:
                self.retirements.spawn(self._retire_node(name, departure), f"retire-{name}")
            else:
                self.nodes.resync([name])
            node = self._node_ref(name)
            ours = (
                self.owner.holds(name)
                if record is None
                else self.owner.may_write_node(name, record.identity)
            )
            if record is None:
                gone = departure or f"the base of {name} is gone"
                if ours:
                    self.events.record(node, "Normal", "BaseGone", gone)
                for identity in list(self.module_state.base_modules):
                    if identity not in self.registry.bases:
                        self.module_state.forget_base(identity)
                        self.module_sync.forget_base(identity)
            elif not ours:
                continue  # another replica's base: it tells
            elif not record.ready:
                self.events.record(node, "Warning", "BaseNotReady", str(record.not_ready_reason))
            elif name not in self.nodes.existing:
                self.events.record(
                    node, "Normal", "BaseOnline", f"base {record.identity} is online at {record.ip}"
                )

    def _adopt(self, names: tuple[str, ...]) -> None:
        """Bases this replica took over: start from what they run now, as a restarted
        operator does (what was heard while another replica owned them may be stale), so
        nothing is re-sent."""
        for name in names:
            record = self.registry.base_of_node(name)
            self.nodes.resync([name])
            if record is None or not self.owner.holds(name):
                continue
            self.module_state.forget_base(record.identity)
            self.module_sync.forget_base(record.identity)
            self.module_sync.want_inventory(record.identity)
            self.module_sync.base_changed(record.identity)

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

    # --- module pods ----------------------------------------------------------------------

    def _module_pod_changed(self, event_type: str | None, body: dict[str, object]) -> None:
        metadata = body.get("metadata")
        uid = str(metadata.get("uid")) if isinstance(metadata, dict) else ""
        if event_type == "DELETED":
            nodes = self.module_state.remove_pod(uid)
        else:
            nodes = self.module_state.upsert_pod(dict(body), self.module_sync.clock())
        self.module_sync.nodes_changed(nodes)

    # --- the clock --------------------------------------------------------------------------

    def _tick(self, tick: Tick) -> None:
        self._judge_broker(tick)
        changed = self.registry.tick(at=tick.at)
        self._nodes_changed(changed)
        bases = self.registry.live_bases()
        self.metrics.set_bases(len(bases))
        ready = sum(1 for base in bases if base.ready)
        self.metrics.set_nodes({"ready": ready, "not_ready": len(bases) - ready})
        now = self.module_sync.clock()
        if self._pods_counted_at is None or now - self._pods_counted_at >= POD_GAUGE_SECONDS:
            # A walk over every module pod: at 1,500 pods a sixth of an idle replica's CPU
            # when done every tick; a scrape every 15 s or more sees no difference.
            self._pods_counted_at = now
            self.metrics.set_module_pods(self.module_sync.pod_states())
        self.metrics.set_mass_silence(self.registry.mass_silence)

    def _judge_broker(self, tick: Tick) -> None:
        """Connected is not enough: the broker must deliver our own probe back in time."""
        silence = tick.broker_silence
        if silence is None:
            return  # disconnected: BrokerDisconnected already paused liveness
        bound = self.settings.broker_suspect_seconds
        if not tick.probe_returned:
            # Our probe never came back on this connection (an ACL may deny its topic).
            # Silence proves nothing then (a dead fleet is silent too): only the MQTT
            # keepalive can tell a frozen broker, so say so once and judge no further.
            if silence >= bound and not self._probe_denied_told:
                self._probe_denied_told = True
                log.warning(
                    "Our broker probe on %s never came back: does the broker's ACL deny this "
                    "client that topic? Without it a frozen broker is noticed only by the MQTT "
                    "keepalive (MQTT_KEEPALIVE_SECONDS), so nodes may go NotReady first.",
                    probe_topic(self.settings),
                )
            return
        self._probe_denied_told = False
        if silence < bound:
            if not self.registry.broker_delivering:
                log.info("The MQTT broker delivers again: base liveness resumes.")
                self._broker_delivers()
                self.health.set("mqtt", True, "the broker delivers")
            self._judge_intake(tick.intake_lag or 0.0, tick.at)
            return
        detail = f"no message through the broker for {silence:.0f}s"
        self.health.set("mqtt", False, detail)
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
            if not self.owner.holds(record.node_name):
                continue
            self.events.record(
                self._node_ref(record.node_name),
                "Warning",
                "BrokerSuspect",
                "the MQTT broker delivers nothing (not even the operator's own probe): base "
                "liveness is paused, the node is kept as it was",
            )

    def _judge_intake(self, lag: float, at: float) -> None:
        """Messages still come, but late (our probe too): heartbeats are late, not missing
        (late_intake.py)."""
        self.metrics.set_intake_lag(lag)
        match self.registry.intake_lag(lag, at):
            case Verdict.PAUSE:
                log.warning(
                    "The operator reads MQTT messages %.0fs late (its own probe through the "
                    "broker came back that late): base liveness is paused until it catches up, "
                    "so no node goes NotReady for heartbeats that are only late. Is the "
                    "operator, or the broker, short of CPU?",
                    lag,
                )
            case Verdict.RESUME:
                log.info("The operator reads MQTT messages in time again: liveness resumes.")
            case Verdict.GIVE_UP:
                log.error(
                    "The operator has read MQTT messages late (its probe %.0fs late now) for "
                    "%.0fs (MASS_SILENCE_MAX_SECONDS): base liveness is judged again, though "
                    "heartbeats may come late. Is it short of CPU, or does the broker no "
                    "longer return its probe?",
                    lag,
                    self.settings.mass_silence_max_seconds,
                )

    def _broker_delivers(self) -> None:
        self.registry.broker_delivers()
        self.metrics.set_broker_delivering(True)
