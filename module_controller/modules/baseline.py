"""The baseline of a starting base: the modules of every Deployment that targets it.

A base asks for its baseline once at start and installs it by itself, so a restarted base
has its modules back before the scheduler has even placed the replacement pods. A
Deployment targets a base when its pod template is a module pod whose node selector and
required node affinity would accept the base's node. `baseline_for` decides (pure);
`BaselineAnswers` answers the queries the dispatcher hands it, off the dispatcher's path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from kubernetes_asyncio import client

from module_controller import naming
from module_controller.modules.spec import pod_modules
from module_controller.protocol import BaseStatus, BizModel
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


def deployment_lister(api: client.ApiClient) -> ListDeployments:
    """Every Deployment of the cluster, as plain dicts."""

    async def list_deployments() -> list[dict[str, Any]]:
        deployments = await client.AppsV1Api(api).list_deployment_for_all_namespaces()
        return [api.sanitize_for_serialization(d) for d in deployments.items]

    return list_deployments


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
