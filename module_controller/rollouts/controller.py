"""The rollout controller: a keyed work queue of ModuleRollouts, each decided and carried out.

What wakes a rollout: its own events (Kopf, handlers/rollouts.py), events of module pods
its Deployment selects (the operator's pod watch), a change of its Deployment (one
cluster-wide list of the Deployments we pace, labelled with their rollout's name, every
`resync_seconds`), and the time its decision asked to be looked at again (a grace time
ending, a pod's Ready timeout). The Deployment watch of the operator is filtered to peer
Deployments, hence the list.

That list also gives Deployments back: one labelled with a rollout that no longer exists
(deleted while the operator ran or not) is resumed and unlabelled. The rollout's canary
ReplicaSets go with it by themselves (it is their owner). So is one labelled with a rollout
that now names another Deployment (the CRD refuses a changed workloadRef, but an object
stored before that rule, or written past it, may have one): the rollout's decisions only
see its new target, so its canaries of this one are deleted here first.

With several operator replicas each rollout is worked on by one of them (`owns`, from the
replicas' membership: shards/); the others keep it in mind and take it up when it moves to
them (the poll wakes every rollout that became theirs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client import CollectorRegistry, Counter, Gauge

from module_controller.k8s_events import EventType, ObjectRef
from module_controller.rollouts.decide import World, decide, detach, stray_canaries
from module_controller.rollouts.executor import RolloutApi
from module_controller.rollouts.model import (
    API_VERSION,
    KIND,
    ROLLOUT_LABEL,
    Phase,
    Rollout,
)
from module_controller.rollouts.world import (
    labels_of,
    metadata,
    name_of,
    selector_matches,
    spec_of,
)
from module_controller.workqueue import KeyedWorkQueue

log = logging.getLogger(__name__)

RecordEvent = Callable[[ObjectRef, EventType, str, str], None]

DEFAULT_RESYNC_SECONDS = 2.0
# Every rollout is looked at this often even when nothing seems to change.
FULL_RESYNC_SECONDS = 30.0
WORKERS = 4


@dataclass
class Known:
    """What the controller remembers of a rollout between looks."""

    namespace: str
    selector: Mapping[str, Any] | None = None  # its Deployment's pod selector
    deployment_version: str | None = None  # the Deployment's resourceVersion last seen
    target: str | None = None  # its workloadRef's name at the last look (None: invalid spec)
    phase: str | None = None


def _key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


class RolloutMetrics:
    """module_controller_module_rollouts{phase} and the count of looks taken."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.by_phase = Gauge(
            "module_controller_module_rollouts",
            "ModuleRollouts by phase (Progressing, Paused, Succeeded, RolledBack, Failed).",
            ["phase"],
            registry=registry,
        )
        for phase in Phase:
            self.by_phase.labels(phase=phase.value)
        self.reconciles = Counter(
            "module_controller_module_rollout_reconciles",
            "Times a ModuleRollout was looked at (decided and carried out).",
            registry=registry,
        )

    def show(self, known: Mapping[str, Known]) -> None:
        for phase in Phase:
            count = sum(1 for k in known.values() if k.phase == phase.value)
            self.by_phase.labels(phase=phase.value).set(count)


class RolloutController:
    def __init__(
        self,
        api: RolloutApi,
        record: RecordEvent | None = None,
        registry: CollectorRegistry | None = None,
        *,
        resync_seconds: float = DEFAULT_RESYNC_SECONDS,
        clock: Callable[[], float] = time.time,
        alive: Callable[[], bool] = lambda: True,
        owns: Callable[[str], bool] = lambda key: True,
    ) -> None:
        self.api = api
        self._record = record
        self.metrics = RolloutMetrics(registry)
        self._resync = resync_seconds
        self._clock = clock
        self._alive = alive
        self._owns = owns
        self._owned: set[str] = set()  # the rollouts this replica worked on at the last poll
        self.known: dict[str, Known] = {}
        self._queue = KeyedWorkQueue(
            self.reconcile, workers=WORKERS, retry_initial=1.0, retry_max=30.0, name="rollouts"
        )
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._poll_now = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None

    # --- what the watches say (handlers/rollouts.py) ----------------------------------------

    def rollout_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        namespace = str(metadata(body).get("namespace") or "")
        key = _key(namespace, name_of(body))
        if event_type == "DELETED":
            self.forget(key)
            self._poll_now.set()  # give its Deployment back now, not at the next poll
            return
        self.known.setdefault(key, Known(namespace))
        self._queue.add(key)

    def pod_event(self, body: Mapping[str, Any]) -> None:
        namespace = str(metadata(body).get("namespace") or "")
        labels = labels_of(body)
        for key, known in self.known.items():
            if (
                known.namespace == namespace
                and known.selector
                and selector_matches(known.selector, labels)
            ):
                self._queue.add(key)

    def forget(self, key: str) -> None:
        self.known.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self.metrics.show(self.known)

    # --- running ------------------------------------------------------------------------------

    def start(self) -> None:
        self._queue.start()
        self._poller = asyncio.create_task(self._poll_forever(), name="rollouts-poll")

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
            self._poller = None
        await self._queue.stop()

    async def _poll_forever(self) -> None:
        last_full = self._clock()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poll_now.wait(), timeout=self._resync)
            self._poll_now.clear()
            if not self._alive():
                continue
            try:
                await self.poll_deployments()
            except Exception as error:  # the next round tries again
                log.warning("Listing the Deployments paced by ModuleRollouts failed: %s", error)
            owned = {key for key in self.known if self._owns(key)}
            self._queue.add_all(sorted(owned - self._owned))  # moved to this replica
            self._owned = owned
            if self._clock() - last_full >= FULL_RESYNC_SECONDS:
                last_full = self._clock()
                self._queue.add_all(sorted(owned))

    async def poll_deployments(self) -> None:
        """Wake the rollouts whose Deployment changed; give back the Deployments whose
        rollout is gone or paces another Deployment now."""
        for deployment in await self.api.list_attached_deployments():
            namespace = str(metadata(deployment).get("namespace") or "")
            rollout = str(labels_of(deployment).get(ROLLOUT_LABEL) or "")
            key = _key(namespace, rollout)
            if not self._owns(key):
                continue  # another replica's
            known = self.known.get(key)
            if known is not None and known.target in (None, name_of(deployment)):
                version = str(metadata(deployment).get("resourceVersion") or "")
                if version != known.deployment_version:
                    self._queue.add(key)
                continue
            # Unknown, or it named another Deployment at its last look: read again, since
            # it may have been set back meanwhile.
            body = await self.api.read_rollout(namespace, rollout)
            if body is None:
                await self._give_back(namespace, deployment, rollout)
                continue
            found = Rollout.from_body(body)
            target = found.spec.workload_ref.name if found.spec is not None else None
            if target is not None and target != name_of(deployment):
                await self._give_back(namespace, deployment, rollout, found.uid, target)
                continue
            self.known.setdefault(key, Known(namespace))
            self._queue.add(key)  # its event has not come yet, or its last look is stale

    async def _give_back(
        self,
        namespace: str,
        deployment: Mapping[str, Any],
        rollout: str,
        rollout_uid: str = "",
        target: str = "",
    ) -> None:
        """Resume and unlabel a Deployment whose rollout is gone, or names another
        Deployment now (`target`)."""
        action = detach(deployment)
        if action is None or metadata(deployment).get("deletionTimestamp"):
            return  # not ours, or going anyway (its namespace is being deleted)
        name = name_of(deployment)
        if target:
            # Before the resume: a canary left running would serve next to the pods of
            # the release the Deployment controller then makes; if a deletion fails, the
            # Deployment stays paced and the next poll tries again.
            found = await self.api.list_replica_sets(namespace, f"{ROLLOUT_LABEL}={rollout}")
            for stray in stray_canaries(deployment, rollout_uid, found):
                log.info("ModuleRollout %s/%s: %s.", namespace, rollout, _describe(stray))
                await self.api.carry_out(namespace, rollout, name, stray)
        await self.api.patch_deployment(namespace, name, action.patch)
        paused = "stays paused" if "spec" not in action.patch else "is resumed"
        if target:
            message = f"ModuleRollout {rollout} now paces Deployment {target}: this one {paused}"
        else:
            message = f"ModuleRollout {rollout} is gone: the Deployment {paused}"
        log.info("Deployment %s/%s: %s.", namespace, name, message)
        # Listed items carry no kind: say it.
        involved = ObjectRef.from_manifest(
            {**deployment, "kind": "Deployment", "apiVersion": "apps/v1"}
        )
        self._say(involved, "Normal", "RolloutDetached", message)

    # --- one look at one rollout ----------------------------------------------------------------

    async def reconcile(self, key: str) -> None:
        if not self._alive():
            return  # the operator is stopping: its API client is going away
        if not self._owns(key):
            return  # another replica's (the poll brings it back if it becomes ours)
        namespace, name = key.split("/", 1)
        body = await self.api.read_rollout(namespace, name)
        if body is None:
            self.forget(key)
            return
        self.metrics.reconciles.inc()
        rollout = Rollout.from_body(body)
        deployment = None
        if rollout.spec is not None:
            deployment = await self.api.read_deployment(namespace, rollout.spec.workload_ref.name)
        replica_sets, pods = await self.api.world_of(namespace, name, deployment)
        decision = decide(rollout, World(deployment, replica_sets, pods), self._clock())
        target = rollout.spec.workload_ref.name if rollout.spec is not None else ""
        for action in decision.actions:
            log.info("ModuleRollout %s: %s.", key, _describe(action))
            await self.api.carry_out(namespace, name, target, action)
        if decision.status.as_patch() != rollout.status.as_patch():
            try:
                await self.api.patch_rollout_status(namespace, name, decision.status.as_patch())
            except ApiException as error:
                if error.status != 404:
                    raise
        involved = ObjectRef(KIND, name, namespace, rollout.uid, API_VERSION)
        for event in decision.events:
            log.info("ModuleRollout %s: %s: %s", key, event.reason, event.message)
            self._say(involved, event.type, event.reason, event.message)
        known = self.known.setdefault(key, Known(namespace))
        known.phase = decision.status.phase.value if decision.status.phase else None
        known.target = target or None
        if deployment is not None:
            known.selector = spec_of(deployment).get("selector") or None
            known.deployment_version = str(metadata(deployment).get("resourceVersion") or "")
        self.metrics.show(self.known)
        if decision.requeue_after is not None:
            self._look_again(key, decision.requeue_after)

    def _look_again(self, key: str, seconds: float) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        loop = asyncio.get_running_loop()
        # A little late rather than early: a grace time must be over when it is looked at.
        self._timers[key] = loop.call_later(seconds + 0.05, self._queue.add, key)

    def _say(self, involved: ObjectRef, type: EventType, reason: str, message: str) -> None:
        if self._record is not None:
            self._record(involved, type, reason, message)


def _describe(action: Any) -> str:
    kind = type(action).__name__
    detail = getattr(action, "name", "")
    why = getattr(action, "why", "")
    extra = f" to {action.replicas}" if hasattr(action, "replicas") else ""
    return " ".join(part for part in (kind, detail + extra, f"({why})" if why else "") if part)
