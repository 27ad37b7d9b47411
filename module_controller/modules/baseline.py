"""The baseline of a starting base: the modules of every Deployment that targets it.

A base asks for its baseline once at start and installs it by itself, so a restarted base
has its modules back before the scheduler has even placed the replacement pods. A
Deployment targets a base when its pod template is a module pod whose node selector and
required node affinity would accept the base's node. `baseline_for` decides (pure);
`BaselineAnswers` answers the queries the dispatcher hands it, off the dispatcher's path.

A Deployment a ModuleRollout paces (rollouts/) counts with the template of its stable
ReplicaSet while a release is in flight: its own template is already the new version, which
must reach a base only through the rollout's steps (a canary pod on it), never because the
base restarted. The rollout's canary ReplicaSets are not Deployments and count for nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller import naming
from module_controller.modules.spec import pod_modules
from module_controller.protocol import BaseStatus, BizModel
from module_controller.rollouts.decide import find_stable
from module_controller.rollouts.model import ROLLOUT_LABEL
from module_controller.rollouts.world import (
    Obj,
    controller_uid,
    replicas_of,
    same_template,
    template_of,
    uid_of,
    without_hash,
)
from module_controller.settings import Settings
from module_controller.tasks import BackgroundTasks, cancel_and_wait
from module_controller.tunnels.events import BaselineQuery
from module_controller.vnode_manifest import node_labels

log = logging.getLogger(__name__)

# Answers being worked on at once. A fleet starting together asks hundreds of times in a
# second; the answers share Deployment lists, and the rest wait their turn.
CONCURRENT_ANSWERS = 8

SendBaseline = Callable[[str, list[BizModel]], Awaitable[None]]
ListDeployments = Callable[[], Coroutine[Any, Any, list[dict[str, Any]]]]
# The ReplicaSets of one namespace.
ListReplicaSets = Callable[[str], Coroutine[Any, Any, list[dict[str, Any]]]]


def deployment_lister(api: client.ApiClient) -> ListDeployments:
    """Every Deployment of the cluster, as plain dicts, as the baseline counts them
    (`baseline_lister`)."""
    apps = client.AppsV1Api(api)

    async def list_deployments() -> list[dict[str, Any]]:
        deployments = await apps.list_deployment_for_all_namespaces()
        return [api.sanitize_for_serialization(d) for d in deployments.items]

    async def list_replica_sets(namespace: str) -> list[dict[str, Any]]:
        replica_sets = await apps.list_namespaced_replica_set(namespace)
        return [api.sanitize_for_serialization(r) for r in replica_sets.items]

    return baseline_lister(list_deployments, list_replica_sets)


def baseline_lister(
    list_deployments: ListDeployments, list_replica_sets: ListReplicaSets
) -> ListDeployments:
    """Every Deployment, a paced one with its stable template (`paced_as_stable`); the
    ReplicaSets are listed only in the namespaces of paced Deployments."""

    async def listed() -> list[dict[str, Any]]:
        deployments = await list_deployments()
        namespaces = sorted({_namespace(d) for d in deployments if _paced(d)})
        replica_sets: list[dict[str, Any]] = []
        for namespace in namespaces:
            try:
                replica_sets += await list_replica_sets(namespace)
            except ApiException as error:
                # Without them the Deployment's own template is used, as before rollouts:
                # a baseline a little ahead of the rollout beats no baseline at all.
                log.warning(
                    "Baseline: the ReplicaSets of namespace %s could not be listed (%s %s): "
                    "its paced Deployments count with their new template.",
                    namespace,
                    error.status,
                    error.reason,
                )
        return paced_as_stable(deployments, replica_sets)

    return listed


def _namespace(deployment: dict[str, Any]) -> str:
    return str((deployment.get("metadata") or {}).get("namespace") or "")


def _paced(deployment: dict[str, Any]) -> bool:
    return ROLLOUT_LABEL in ((deployment.get("metadata") or {}).get("labels") or {})


def paced_as_stable(
    deployments: list[dict[str, Any]], replica_sets: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The Deployments, each one a ModuleRollout paces in the middle of a release with the
    template of its stable ReplicaSet (the one the rollout keeps serving, found as the
    rollout controller finds it) instead of its own, which is the new version's. With no
    release in flight (none, or one handed over or rolled back) the two are the same."""
    shown: list[dict[str, Any]] = []
    for deployment in deployments:
        if _paced(deployment):
            uid = uid_of(deployment)
            owned: list[Obj] = [rs for rs in replica_sets if controller_uid(rs) == uid]
            template = template_of(deployment)
            stable = find_stable(owned, template, replicas_of(deployment), None)
            if stable is not None and not same_template(template_of(stable), template):
                spec = {**(deployment.get("spec") or {})}
                spec["template"] = without_hash(template_of(stable))
                deployment = {**deployment, "spec": spec}
        shown.append(deployment)
    return shown


def _expression_matches(expression: dict[str, Any], labels: dict[str, str]) -> bool:
    key = expression.get("key")
    operator = expression.get("operator")
    values = expression.get("values") or []
    present = key in labels
    value = labels.get(str(key))
    if operator == "In":
        return present and value in values
    if operator == "NotIn":
        return not present or value not in values
    if operator == "Exists":
        return present
    if operator == "DoesNotExist":
        return not present
    if operator in ("Gt", "Lt") and present and values:
        try:
            number, bound = int(str(value)), int(values[0])
        except ValueError:
            return False
        return number > bound if operator == "Gt" else number < bound
    return False


def template_targets(template_spec: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a pod with this spec could be scheduled on a node with these labels."""
    selector = template_spec.get("nodeSelector") or {}
    if any(labels.get(key) != value for key, value in selector.items()):
        return False
    required = ((template_spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = required.get("nodeSelectorTerms") or []
    if not terms:
        return True
    return any(
        all(_expression_matches(e, labels) for e in term.get("matchExpressions") or [])
        for term in terms
    )


def baseline_for(
    deployments: list[dict[str, Any]], node_labels: dict[str, str], module_label: str
) -> list[BizModel]:
    """Modules, oldest Deployment first, of the module Deployments targeting the node."""
    chosen: list[BizModel] = []
    seen: set[str] = set()
    ordered = sorted(
        deployments, key=lambda d: str((d.get("metadata") or {}).get("creationTimestamp"))
    )
    for deployment in ordered:
        template = ((deployment.get("spec") or {}).get("template")) or {}
        labels = (template.get("metadata") or {}).get("labels") or {}
        if labels.get(module_label) != "module":
            continue
        spec = template.get("spec") or {}
        if not template_targets(spec, node_labels):
            continue
        wanted = pod_modules({"spec": spec})
        if not wanted.valid:
            continue
        for module in wanted.modules:
            if module.key not in seen:
                seen.add(module.key)
                chosen.append(module.biz())
    return chosen


class BaselineAnswers:
    """Answers the bases' baseline queries, off the dispatcher's path.

    Bounded: at most CONCURRENT_ANSWERS at once and one waiting answer per base (a base
    that asks again while waiting gets one answer, to its latest query). Answers share
    Deployment lists, but never one that started before their query: it could miss a
    Deployment made just before the base asked.
    """

    def __init__(
        self, settings: Settings, list_deployments: ListDeployments, send: SendBaseline
    ) -> None:
        self.settings = settings
        self._list_deployments = list_deployments
        self._send = send
        self._waiting: dict[str, tuple[BaselineQuery, float]] = {}  # with when it was asked
        self._slots = asyncio.Semaphore(CONCURRENT_ANSWERS)
        self._listing: asyncio.Task[list[dict[str, Any]]] | None = None
        self._listing_started = 0.0
        self.tasks = BackgroundTasks("baseline")

    def answer(self, query: BaselineQuery) -> None:
        """Answer soon; returns at once."""
        already_waiting = query.identity in self._waiting
        self._waiting[query.identity] = (query, asyncio.get_running_loop().time())
        if not already_waiting:
            self.tasks.spawn(self._answer(query.identity), f"baseline-{query.identity}")

    async def stop(self) -> None:
        await self.tasks.stop()
        if self._listing is not None:
            await cancel_and_wait([self._listing])

    async def modules_for(self, query: BaselineQuery) -> list[BizModel]:
        """The baseline of one query, answered in place (the HTTP tunnel's /queryBaseline)."""
        async with self._slots:
            return await self._modules(query, asyncio.get_running_loop().time())

    async def _modules(self, query: BaselineQuery, asked_at: float) -> list[BizModel]:
        deployments = await self._deployments(asked_at)
        node_name = naming.node_name(
            self.settings.node_name_template, query.identity, self.settings.env
        )
        labels = node_labels(node_name, BaseStatus(base_metadata=query.metadata), self.settings)
        return baseline_for(deployments, labels, self.settings.module_label)

    async def _answer(self, identity: str) -> None:
        async with self._slots:
            query, asked_at = self._waiting.pop(identity)
            modules = await self._modules(query, asked_at)
            await self._send(identity, modules)
        log.info(
            "Answered the baseline query of base %s with %d module(s): %s.",
            identity,
            len(modules),
            ", ".join(m.key for m in modules) or "none",
        )

    async def _deployments(self, asked_at: float) -> list[dict[str, Any]]:
        """Every Deployment, from a list that started after the query was asked: the one
        in flight or last made if it did, else a new one once the one in flight is done."""
        while True:
            listing = self._listing
            if listing is not None and self._listing_started >= asked_at:
                # shield: one caller cancelled must not cancel the list others wait for.
                return await asyncio.shield(listing)
            if listing is not None and not listing.done():
                await asyncio.wait([listing])  # too old for this query: the next one is not
                continue
            self._listing_started = asyncio.get_running_loop().time()
            self._listing = asyncio.create_task(
                self._list_deployments(), name="baseline-deployments"
            )
            # Its failure reaches every answer waiting on it; mark it seen even if none is.
            self._listing.add_done_callback(_retrieve_exception)


def _retrieve_exception(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()
