"""Carrying out a base's plan: commands to the base, status patches, pod removals.

The per-base work of the data path. The dispatcher says "base X may need work"
(`base_changed`, `nodes_changed`, an answer folded in); a keyed queue gives each base one
worker at a time, which asks the planner (`planner.plan_base`, pure of I/O) what to do and
does it. This is where the seed's ordering rule is carried out: the phases of a plan go
out one after the other, each awaited, in the planner's order — the writes that take pods
out of Ready, then uninstalls and installs, then the other writes — so the API server sees
an old pod go NotReady before its module is uninstalled and before the new pod goes Ready.
The last phase goes on in the base's lane (write_lanes.py), so the worker is free to plan
and install again. Inventory queries that follow answers go out from a small keyed queue
of their own, not from the dispatcher. A plan that waits for a backoff or a grace period
to end is looked at again then (a timer per base)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller.k8s_events import EventRecorder, EventType, ObjectRef
from module_controller.kube import call_for_json
from module_controller.modules import reasons
from module_controller.modules.planner import PlanContext, commands_sent_at, plan_base
from module_controller.modules.state import ModulePod, ModuleState, OperationOutcome
from module_controller.modules.status import is_ready, not_ready_status, shows_ready
from module_controller.modules.text import bounded
from module_controller.modules.write_lanes import PlanVoid, StatusWrite, WriteLanes
from module_controller.observability.metrics import Metrics, ModulePodState
from module_controller.protocol import (
    BatchInstallBizResponse,
    BizModel,
    BizOperationResponse,
    SimpleBizInfo,
)
from module_controller.protocol.states import BizState
from module_controller.registry import BaseRegistry
from module_controller.settings import Settings
from module_controller.shards.gate import OwnerGate, SoleOwner
from module_controller.tunnels.events import TunnelUnavailable
from module_controller.workqueue import KeyedWorkQueue

log = logging.getLogger(__name__)

# Status writes of one phase of a base's plan in flight at once.
CONCURRENT_WRITES_PER_BASE = 8
# Pod status writes in flight over all bases: a release on a thousand bases queues its
# writes here rather than as thousands of requests at the API server.
STATUS_WRITES_IN_FLIGHT = 32


class ModuleCommands(Protocol):
    """The part of a tunnel that module work needs."""

    async def install_biz(self, identity: str, biz: BizModel) -> None: ...
    async def uninstall_biz(self, identity: str, biz: BizModel) -> None: ...
    async def query_all_biz(self, identity: str) -> None: ...


class PodEvents(Protocol):
    def pod_event(self, pod: ModulePod, type: EventType, reason: str, message: str) -> None: ...


class RecordedPodEvents:
    """Pod Events through the operator's Event recorder."""

    def __init__(self, recorder: EventRecorder) -> None:
        self._recorder = recorder

    def pod_event(self, pod: ModulePod, type: EventType, reason: str, message: str) -> None:
        ref = ObjectRef(kind="Pod", name=pod.name, namespace=pod.namespace, uid=pod.uid)
        self._recorder.record(ref, type, reason, message)


class ModuleSync:
    def __init__(
        self,
        settings: Settings,
        registry: BaseRegistry,
        state: ModuleState,
        tunnel: ModuleCommands,
        api: client.ApiClient,
        metrics: Metrics,
        events: PodEvents,
        clock: Callable[[], float] = time.monotonic,
        owner: OwnerGate | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.state = state
        self.tunnel = tunnel
        self.core = client.CoreV1Api(api)
        self.api = api
        self.metrics = metrics
        self.events = events
        self.clock = clock
        # Commands and pod writes only for the bases this replica owns (shards/).
        self.owner: OwnerGate = owner or SoleOwner()
        # A failed write or removal counts its own API error: no error hook here.
        self.queue = KeyedWorkQueue(self.sync_base, workers=8, name="module sync")
        # When each install / uninstall was sent (base -> module key -> clock), for the
        # latency histograms; pruned to what is still in flight at every sync of the base.
        self._install_sent: dict[str, dict[str, float]] = {}
        self._uninstall_sent: dict[str, dict[str, float]] = {}
        self._wakeups: dict[str, asyncio.TimerHandle] = {}
        # Inventory queries have their own queue: a read that must not wait behind a base's
        # status patches (a slow API server would delay the answer that makes pods Ready).
        self.inventory_queries = KeyedWorkQueue(
            self._query_inventory, workers=4, name="inventory query"
        )
        # The writes that end a plan go on behind the base's worker (write_lanes.py).
        self.lanes = WriteLanes(self._plan_again)
        self._write_slots = asyncio.Semaphore(STATUS_WRITES_IN_FLIGHT)

    def start(self) -> None:
        self.queue.start()
        self.inventory_queries.start()

    async def stop(self) -> None:
        await self.inventory_queries.stop()
        await self.queue.stop()
        await self.lanes.stop()
        for handle in self._wakeups.values():
            handle.cancel()
        self._wakeups.clear()

    def base_changed(self, identity: str) -> None:
        self.queue.add(identity)

    async def settled(self, identity: str, node_name: str) -> None:
        """Returns once nothing started for the base is still running: its plan, the
        writes that end it, its inventory query."""
        await self.queue.settled(identity)
        await self.lanes.landed(node_name)
        await self.inventory_queries.settled(identity)

    def want_inventory(self, identity: str) -> None:
        """Ask the base for its full module list (soon, once however often it is said)."""
        self.inventory_queries.add(identity)

    def forget_base(self, identity: str) -> None:
        """The base is gone: drop what was kept for it (ModuleState forgets its modules)."""
        self._install_sent.pop(identity, None)
        self._uninstall_sent.pop(identity, None)
        wakeup = self._wakeups.pop(identity, None)
        if wakeup is not None:
            wakeup.cancel()

    def nodes_changed(self, node_names: set[str]) -> None:
        for name in node_names:
            record = self.registry.base_of_node(name)
            if record is not None:
                self.queue.add(record.identity)

    # --- what bases answer ---------------------------------------------------------------

    def inventory_reported(self, identity: str, modules: tuple[SimpleBizInfo, ...]) -> None:
        """A base's complete module list (its answer to queryAllBiz). The same list as
        last time plans nothing new: what depends on time wakes its base itself
        (`_wake_later`), and pod changes come as their own events. Planning each of them
        again was a fifth of a steady replica's CPU (150 bases x 5 pods)."""
        if self.state.set_inventory(identity, modules):
            self.base_changed(identity)

    def operation_answered(self, identity: str, result: BizOperationResponse) -> None:
        """An install or uninstall answer: fold it in, tell the pods, ask for the inventory."""
        outcome = self.state.apply_operation(identity, result, self.clock())
        if outcome is not None:
            self._report_operation(identity, outcome)
        self.want_inventory(identity)
        self.base_changed(identity)

    def batch_answered(self, identity: str, result: BatchInstallBizResponse) -> None:
        self.state.apply_batch(identity, result)
        self.want_inventory(identity)
        self.base_changed(identity)

    async def _query_inventory(self, identity: str) -> None:
        record = self.registry.bases.get(identity)
        if record is None or not self.owner.holds(record.node_name):
            return  # gone meanwhile, or another replica's
        # Without the broker, the periodic poll asks again once it is back.
        with contextlib.suppress(TunnelUnavailable):
            await self.tunnel.query_all_biz(identity)

    def _report_operation(self, identity: str, outcome: OperationOutcome) -> None:
        """An install or uninstall answer, as Events on the pods that wanted it.

        The message is the same for every retry of the same failure, so the recorder counts
        the repeats on one Event instead of making one per retry.
        """
        if outcome.report or outcome.ok:
            if outcome.installing:
                self.install_answered(identity, outcome.key, outcome.ok)
            else:
                self.uninstall_answered(identity, outcome.key, outcome.ok)
        record = self.registry.bases.get(identity)
        if record is None or not outcome.report:
            return
        for pod in self.state.pods_on(record.node_name):
            if any(spec.key == outcome.key for spec in pod.wants.modules):
                self.events.pod_event(
                    pod, "Normal" if outcome.ok else "Warning", outcome.reason, outcome.message
                )

    def install_answered(self, identity: str, key: str, ok: bool) -> None:
        sent = self._install_sent.get(identity, {}).pop(key, None)
        if sent is not None:
            self.metrics.observe_install(self.clock() - sent, "success" if ok else "failure")

    def uninstall_answered(self, identity: str, key: str, ok: bool) -> None:
        sent = self._uninstall_sent.get(identity, {}).pop(key, None)
        if sent is not None:
            self.metrics.observe_uninstall(self.clock() - sent, "success" if ok else "failure")

    def pod_states(self) -> dict[ModulePodState, int]:
        """How many module pods stand where, for the module pods gauge."""
        counts: dict[ModulePodState, int] = {}
        for pod in self.state.pods.values():
            state = self._pod_state(pod)
            counts[state] = counts.get(state, 0) + 1
        return counts

    def _pod_state(self, pod: ModulePod) -> ModulePodState:
        if pod.deleting:
            return "uninstalling"
        if not pod.wants.valid:
            return "failed"
        if pod.observed_ready:
            return "ready"
        record = self.registry.base_of_node(pod.node_name) if pod.node_name else None
        base = self.state.base_modules.get(record.identity) if record is not None else None
        if base is None or base.inventory is None:
            return "pending"
        if any(spec.key in base.failures for spec in pod.wants.modules):
            return "failed"
        installed = [base.inventory.get(spec.key) for spec in pod.wants.modules]
        if any(m is not None and m.state is BizState.BROKEN for m in installed):
            return "failed"
        if any(m is None for m in installed):
            return (
                "installing"
                if any(spec.key in base.installing for spec in pod.wants.modules)
                else "pending"
            )
        return "not_ready"

    async def sync_base(self, identity: str) -> None:
        record = self.registry.bases.get(identity)
        if record is None:
            # The base is gone: base_gone() marked its pods and deleted them; nothing here
            # may write them Ready again.
            return
        if not self.owner.holds(record.node_name):
            return  # another replica's base: it plans, sends and writes for it
        node_name = record.node_name
        # Pods with writes still on their way are planned as written (write_lanes.py).
        pods = self.lanes.as_written(self.state.pods_on(node_name))
        base = self.state.base_modules[identity]
        self._prune_sent(identity, set(base.installing), set(base.uninstalling))
        replacing = any(pod.deleting and pod.owned for pod in pods)
        context = PlanContext(
            settings=self.settings,
            base_ip=record.ip,
            base_ready=record.ready,
            orphans_allowed=self.state.listed,
            now=self.clock(),
            wall=datetime.datetime.now(datetime.UTC),
            unscheduled_keys=self._unscheduled_keys() if replacing else frozenset(),
        )
        plan = plan_base(pods, base, context)
        self._wake_later(identity, plan.wake_at)
        if plan.empty:
            return

        def gone() -> bool:
            # Each step awaits the network: meanwhile the base may be retired, handed
            # over, or this replica fenced. The rest of the plan is then void.
            return self.registry.bases.get(identity) is not record or not self.owner.holds(
                node_name
            )

        def check() -> None:
            if gone():
                raise PlanVoid(node_name)

        try:
            if plan.going_down or plan.uninstalls:
                # What earlier plans write lands first: a pod written Ready there goes out
                # of Ready here after it, and no module is uninstalled under a Ready pod.
                await self.lanes.landed(node_name)
                commands_sent_at(plan, base, self.clock())
            check()
            await self._write_all(plan.going_down, gone)
            for biz in plan.uninstalls:
                check()
                log.info("Uninstalling %s from base %s.", biz.key, identity)
                self._uninstall_sent.setdefault(identity, {}).setdefault(biz.key, self.clock())
                await self.tunnel.uninstall_biz(identity, biz)
            for spec in plan.installs:
                check()
                log.info("Installing %s (%s) on base %s.", spec.key, spec.url, identity)
                self._install_sent.setdefault(identity, {})[spec.key] = self.clock()
                self.metrics.record_install_command()
                await self.tunnel.install_biz(identity, spec.biz())
            check()
        except PlanVoid:
            self.queue.add(identity)  # planned afresh: by us only if the base is ours again
            return
        if not (plan.status_writes or plan.events or plan.deletions):
            return
        why = (
            "the base no longer lists its modules, or another pod there still wants them"
            if record.ready
            else f"its base {identity} is silent, so nothing could be uninstalled; what the "
            "base still holds is cleaned up when it is heard again"
        )

        async def carry_out() -> None:
            check()
            await self._write_all(plan.status_writes, gone)
            check()
            for event in plan.events:
                self.events.pod_event(event.pod, event.type, event.reason, event.message)
            for pod in plan.deletions:
                check()
                await self._remove(pod, why)

        self.lanes.queue(node_name, plan.status_writes, plan.deletions, carry_out)

    def _prune_sent(self, identity: str, installing: set[str], uninstalling: set[str]) -> None:
        """Forget send times of commands no longer in flight (answered or given up)."""
        for sent, in_flight in (
            (self._install_sent, installing),
            (self._uninstall_sent, uninstalling),
        ):
            times = sent.get(identity)
            if times is None:
                continue
            for key in [key for key in times if key not in in_flight]:
                del times[key]
            if not times:
                del sent[identity]

    def _unscheduled_keys(self) -> frozenset[str]:
        """Modules wanted by live pods not placed yet (a replacement may land anywhere)."""
        return frozenset(
            spec.key
            for pod in self.state.pods.values()
            if pod.node_name is None and not pod.deleting
            for spec in pod.wants.modules
        )

    def _wake_later(self, identity: str, at: float | None) -> None:
        """Plan the base again at `at` (clock seconds); one timer per base, the earliest."""
        if at is None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, at - self.clock()) + 0.05  # just past the moment, not just before
        existing = self._wakeups.get(identity)
        if existing is not None:
            if existing.when() <= loop.time() + delay:
                return
            existing.cancel()
        self._wakeups[identity] = loop.call_later(delay, self._wake, identity)

    def _plan_again(self, node_name: str, delay: float) -> None:
        record = self.registry.base_of_node(node_name)
        if record is not None:
            self._wake_later(record.identity, self.clock() + delay)

    def _wake(self, identity: str) -> None:
        self._wakeups.pop(identity, None)
        self.queue.add(identity)

    async def base_gone(self, node_name: str, message: str) -> None:
        """A base is gone for good: its pods say so, then go, before its node is deleted.

        The controller awaits this before deleting the node, so no pod on it shows Ready
        (or 1/1) while its base no longer exists. Then the pods are deleted, as the pod
        garbage collector would delete them 40 to 60 s after their node (nothing runs them
        now): their controllers replace them on live bases at once. A failed write does
        not keep the node. The call may come late (it is a task of its own): a base heard
        again meanwhile is alive, and its pods are left alone.
        """

        def still_gone() -> bool:
            # Checked before every write: each awaits the network, and a heartbeat may
            # bring the base back (or a hand-over take it) meanwhile.
            return self.registry.base_of_node(node_name) is None and self.owner.holds(node_name)

        if not still_gone():
            return
        await self.lanes.landed(node_name)  # a Ready write on its way lands first
        if not still_gone():
            return
        text = bounded(f"the base of node {node_name} is gone: {message}")
        wall = datetime.datetime.now(datetime.UTC)
        pods = self.state.pods_on(node_name)
        for pod in pods:
            if pod.deleting or not shows_ready(pod.status):
                continue
            try:
                await self._write_status(
                    pod,
                    not_ready_status(pod, reasons.BASE_GONE, text, wall),
                    lambda: not still_gone(),
                )
            except PlanVoid:
                return
            except ApiException as error:
                log.warning("Could not mark pod %s not ready (%s).", pod.key, error.status)
        for pod in pods:
            if not still_gone():
                return
            try:
                await self._remove(pod, text)
            except ApiException as error:
                log.warning("Could not delete pod %s (%s).", pod.key, error.status)

    async def _write_all(self, writes: list[StatusWrite], void: Callable[[], bool]) -> None:
        """One phase's writes at once (a few at a time): the rule orders phases, not the
        pods within one (one by one, a base's fourth pod went Ready three round trips
        late). The first failure is raised once all are done."""
        if len(writes) == 1:
            await self._write_status(*writes[0], void)
            return
        slots = asyncio.Semaphore(CONCURRENT_WRITES_PER_BASE)

        async def write(pod: ModulePod, status: dict[str, Any]) -> None:
            async with slots:
                await self._write_status(pod, status, void)

        results = await asyncio.gather(
            *(write(pod, status) for pod, status in writes), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _write_status(
        self, pod: ModulePod, status: dict[str, Any], void: Callable[[], bool]
    ) -> None:
        """Write `status`; raises PlanVoid if, once a slot is free, `void()` says so."""
        async with self._write_slots:
            if void():  # the base went, or this replica's hold of it, while waiting
                raise PlanVoid(pod.node_name or "")
            self.metrics.record_pod_status_write()
            try:
                body = await call_for_json(
                    self.api,
                    self.core.patch_namespaced_pod_status,
                    pod.name,
                    pod.namespace,
                    {"status": status},
                )
            except ApiException as error:
                if error.status == 404:
                    return  # deleted meanwhile
                self.metrics.record_api_error("pods/status", error.status)
                raise
        self.state.record_written_status(pod.uid, body)
        log.info(
            "Pod %s is %s (%s).",
            pod.key,
            "Ready" if is_ready(status) else "not ready",
            status.get("phase"),
        )

    async def _remove(self, pod: ModulePod, why: str) -> None:
        """What a kubelet does last: delete the object for good (grace period 0)."""
        try:
            await self.core.delete_namespaced_pod(
                pod.name,
                pod.namespace,
                grace_period_seconds=0,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=pod.uid)
                ),
            )
        except ApiException as error:
            if error.status not in (404, 409):
                self.metrics.record_api_error("pods", error.status)
                raise
            self.state.removed_by_us(pod.uid)
            return  # gone already (another replica or a plan before this one removed it)
        self.state.removed_by_us(pod.uid)
        # Say what is true: "uninstalled" only where the base confirmed it (the inventory
        # no longer lists the pod's modules), not for a pod let go from a silent base.
        log.info("Removed pod %s: %s.", pod.key, why)
