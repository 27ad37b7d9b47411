"""Peer Deployments: `spec.replicas` follows the number of Ready bases of their cluster.

A Deployment labelled `virtual-kubelet.koupleless.io/strategy=peer` runs one replica per
Ready base of its base cluster, as the Go controller's ModuleDeploymentController does with
ENABLE_MODULE_REPLICAS_SYNC_WITH_BASE=true; `virtual-kubelet.koupleless.io/replicas-control=true`
opts a Deployment out. Unlike the Go controller, a change is written only once the cluster's
count has held for PEER_REPLICAS_DEBOUNCE_SECONDS, so a flapping base does not scale its
Deployments up and down; each rescale is a Normal Event on the Deployment, and a refused
patch is logged, shown as a Warning Event and tried again with backoff.

The decisions are pure functions. `PeerReplicas` keeps what the watches said (our nodes, the
peer Deployments), the Ready count of each cluster with when it last changed, and patches
whatever falls due; its clock, patch, node listing and Event sink are injected, so tests
drive it without a cluster. A new base gets the modules of the peer Deployments of its
cluster through its baseline (modules/baseline.py), which follows the pod template's node
selector and required node affinity: the usual way a peer Deployment names its cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller.k8s_events import EventType, ObjectRef
from module_controller.vnode_manifest import BASE_CLUSTER_LABEL

log = logging.getLogger(__name__)

STRATEGY_LABEL = "virtual-kubelet.koupleless.io/strategy"
PEER_STRATEGY = "peer"
REPLICAS_CONTROL_LABEL = "virtual-kubelet.koupleless.io/replicas-control"
CLUSTER_LABEL = BASE_CLUSTER_LABEL  # on Deployments, their pod templates and our nodes
PEER_SELECTOR = f"{STRATEGY_LABEL}={PEER_STRATEGY}"
FIELD_MANAGER = "module-controller-peer-replicas"

SCALED_REASON = "PeerScaled"
SCALE_FAILED_REASON = "PeerScaleFailed"

DEFAULT_RETRY_SECONDS = 1.0
DEFAULT_RETRY_MAX_SECONDS = 60.0
# Never spin: the loop waits at least this long between two rounds.
MIN_WAIT_SECONDS = 0.05

# (namespace, name, replicas) -> the Deployment's metadata.generation after the patch.
PatchReplicas = Callable[[str, str, int], Awaitable[int]]
ListNodes = Callable[[], Awaitable[list[dict[str, Any]]]]
RecordEvent = Callable[[ObjectRef, EventType, str, str], None]


# --- pure decisions ---------------------------------------------------------------------------


def _labels(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return (obj.get("metadata") or {}).get("labels") or {}


def is_peer_deployment(deployment: Mapping[str, Any]) -> bool:
    """Labelled strategy=peer and not opted out with replicas-control=true."""
    labels = _labels(deployment)
    return (
        labels.get(STRATEGY_LABEL) == PEER_STRATEGY
        and str(labels.get(REPLICAS_CONTROL_LABEL, "")).lower() != "true"
    )


def cluster_name_of(deployment: Mapping[str, Any]) -> str | None:
    """The base cluster a Deployment runs on, looked up as the Go controller does: the
    Deployment's cluster-name label, then the pod template's nodeSelector, then the first
    required node-affinity expression on that key. Only an `In` expression names a cluster
    (the Go controller would also take the value of a `NotIn`)."""
    labelled = _labels(deployment).get(CLUSTER_LABEL)
    if labelled:
        return str(labelled)
    template = ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}
    selected = (template.get("nodeSelector") or {}).get(CLUSTER_LABEL)
    if selected:
        return str(selected)
    required = ((template.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    for term in required.get("nodeSelectorTerms") or []:
        for expression in term.get("matchExpressions") or []:
            values = expression.get("values") or []
            if expression.get("key") == CLUSTER_LABEL and expression.get("operator") == "In":
                return str(values[0]) if values else None
    return None


def node_cluster(node: Mapping[str, Any]) -> str:
    """The cluster a node's base belongs to ("" when it says none)."""
    return str(_labels(node).get(CLUSTER_LABEL) or "")


def node_is_ready(node: Mapping[str, Any]) -> bool:
    """Ready=True and not being deleted (our nodes always show phase Running)."""
    if (node.get("metadata") or {}).get("deletionTimestamp"):
        return False
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def patch_due(
    replicas: int, ready: int, count_since: float, debounce: float, retry_at: float | None
) -> float | None:
    """When a peer Deployment showing `replicas` is to be patched to its cluster's `ready`
    count: once that count has held for `debounce` since it last changed, and not before a
    failed patch's retry time. None when the replicas already match."""
    if replicas == ready:
        return None
    due = count_since + debounce
    return due if retry_at is None else max(due, retry_at)


def describe_failure(error: BaseException) -> str:
    """Why a patch did not go through, saying what to do about the usual causes."""
    status = getattr(error, "status", None)
    if isinstance(error, ApiException) or isinstance(status, int):
        if status == 403:
            return (
                "403 Forbidden: the operator may not patch Deployments; its ClusterRole "
                "needs 'patch' on deployments.apps (manifests/02-clusterrole.yaml)"
            )
        if status == 404:
            return "404 Not Found: the Deployment is gone"
        if status == 409:
            return "409 Conflict: the Deployment changed meanwhile"
        return f"{status} {getattr(error, 'reason', '') or ''}".strip()
    if isinstance(error, TimeoutError):
        return "the API server did not answer in time"
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def ready_bases(ready: int, cluster: str) -> str:
    bases = "1 Ready base" if ready == 1 else f"{ready} Ready bases"
    return f"{bases} in cluster {cluster}"


def scaled_message(before: int, after: int, cluster: str) -> str:
    return (
        f"Scaled peer Deployment from {before} to {after} replicas: {ready_bases(after, cluster)}"
    )


# --- Kubernetes calls -------------------------------------------------------------------------


def deployment_patcher(api: client.ApiClient) -> PatchReplicas:
    """Merge-patch spec.replicas alone, under a field manager of our own."""
    # Typed Any: the client's stubs leave out `_content_type`, which it does take (a dict
    # would otherwise go as a strategic-merge patch; the Go controller sends a merge patch).
    patch_deployment: Any = client.AppsV1Api(api).patch_namespaced_deployment

    async def patch(namespace: str, name: str, replicas: int) -> int:
        answer = await patch_deployment(
            name,
            namespace,
            {"spec": {"replicas": replicas}},
            field_manager=FIELD_MANAGER,
            _content_type="application/merge-patch+json",
        )
        return int(answer.metadata.generation or 0)

    return patch


def node_lister(api: client.ApiClient, selector: str) -> ListNodes:
    """Our nodes (those the selector names), as plain dicts."""
    core = client.CoreV1Api(api)

    async def list_nodes() -> list[dict[str, Any]]:
        nodes = await core.list_node(label_selector=selector)
        return [api.sanitize_for_serialization(n) for n in nodes.items]

    return list_nodes


# --- the state and the timers -----------------------------------------------------------------


@dataclass
class _Node:
    cluster: str
    ready: bool


@dataclass
class _Peer:
    """A peer Deployment as last seen (or as our own patch left it)."""

    namespace: str
    name: str
    uid: str
    cluster: str
    replicas: int
    generation: int
    failures: int = 0
    retry_at: float | None = None  # after a failed patch, not before this

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("Deployment", self.name, self.namespace, self.uid, "apps/v1")


class PeerReplicas:
    """Keeps each peer Deployment's replicas at its cluster's Ready count, debounced.

    Feed it with `node_seen` / `node_gone` and `deployment_seen` / `deployment_gone` (from
    the watches; they return at once) and `nodes_listed` (one listing at start, so that a
    slow node watch cannot make every cluster look empty). `run` does that listing and then
    patches what falls due; `run_due` is one round of it, for tests with a fake clock.

    A cluster's count must have held for `debounce_seconds` before its Deployments are
    patched, counted from the last change of the count (or from the start). Patches go one
    at a time; a failed one is tried again after `retry_seconds`, doubling up to
    `retry_max_seconds`.
    """

    def __init__(
        self,
        *,
        debounce_seconds: float,
        patch: PatchReplicas,
        list_nodes: ListNodes | None = None,
        record: RecordEvent | None = None,
        api_errors: Callable[[int | None], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
        retry_max_seconds: float = DEFAULT_RETRY_MAX_SECONDS,
    ) -> None:
        self._debounce = debounce_seconds
        self._patch = patch
        self._list_nodes = list_nodes
        self._record = record
        self._api_errors = api_errors
        self._clock = clock
        self._retry = retry_seconds
        self._retry_max = max(retry_max_seconds, retry_seconds)
        self._started = clock()
        self._nodes: dict[str, _Node] = {}
        self._watched: set[str] = set()  # nodes the watch spoke of: a listing is older
        self._ready: Counter[str] = Counter()
        self._since: dict[str, float] = {}  # cluster -> when its count last changed
        self._peers: dict[tuple[str, str], _Peer] = {}
        self._no_cluster: set[tuple[str, str]] = set()  # warned about once
        self._listed = list_nodes is None  # nothing to list: the feeds are the whole truth
        self._wake = asyncio.Event()
        self.patches = 0  # patches that went through

    # --- feeds ------------------------------------------------------------------------------

    def node_seen(self, name: str, node: Mapping[str, Any]) -> None:
        self._watched.add(name)
        self._set_node(name, _Node(node_cluster(node), node_is_ready(node)))

    def node_gone(self, name: str) -> None:
        self._watched.add(name)
        self._set_node(name, None)

    def nodes_listed(self, nodes: Iterable[Mapping[str, Any]]) -> None:
        """What a listing showed, for the nodes the watch has not spoken of yet."""
        for node in nodes:
            name = str((node.get("metadata") or {}).get("name") or "")
            if name and name not in self._watched:
                self._set_node(name, _Node(node_cluster(node), node_is_ready(node)))
        self._listed = True
        self._wake.set()

    def deployment_seen(self, deployment: Mapping[str, Any]) -> None:
        metadata = deployment.get("metadata") or {}
        key = (str(metadata.get("namespace") or ""), str(metadata.get("name") or ""))
        if not is_peer_deployment(deployment) or metadata.get("deletionTimestamp"):
            self.deployment_gone(*key)
            return
        cluster = cluster_name_of(deployment)
        if cluster is None:
            if key not in self._no_cluster:
                self._no_cluster.add(key)
                log.warning(
                    "Peer Deployment %s/%s names no base cluster (label, nodeSelector or "
                    "required node affinity on %s): its replicas are left alone.",
                    *key,
                    CLUSTER_LABEL,
                )
            self._peers.pop(key, None)
            return
        self._no_cluster.discard(key)
        uid = str(metadata.get("uid") or "")
        generation = int(metadata.get("generation") or 0)
        replicas = (deployment.get("spec") or {}).get("replicas")
        replicas = 1 if replicas is None else int(replicas)  # the API server's default
        known = self._peers.get(key)
        if known is not None and known.uid == uid:
            if generation < known.generation:
                return  # from before our own patch: the patch's answer is newer
            known.cluster, known.generation, known.replicas = cluster, generation, replicas
        else:
            known = _Peer(key[0], key[1], uid, cluster, replicas, generation)
            self._peers[key] = known
        if known.replicas == self._ready[cluster]:
            known.failures, known.retry_at = 0, None
        self._wake.set()

    def deployment_gone(self, namespace: str, name: str) -> None:
        self._no_cluster.discard((namespace, name))
        if self._peers.pop((namespace, name), None) is not None:
            self._wake.set()

    # --- reading ----------------------------------------------------------------------------

    def ready(self, cluster: str) -> int:
        return self._ready[cluster]

    def replicas(self, namespace: str, name: str) -> int | None:
        """The replicas of a peer Deployment as last seen or patched (None: not a peer)."""
        peer = self._peers.get((namespace, name))
        return None if peer is None else peer.replicas

    def next_due(self) -> float | None:
        """When, on the clock, the next patch falls due (None: nothing to do)."""
        if not self._listed:
            return None
        times = [due for peer in self._peers.values() if (due := self._due_at(peer)) is not None]
        return min(times, default=None)

    # --- acting -----------------------------------------------------------------------------

    async def run(self) -> None:
        """List the nodes (until that works), then patch whatever falls due, for good."""
        await self._list_until_done()
        while True:
            self._wake.clear()  # a change while this round patches makes another round
            await self.run_due()
            due = self.next_due()
            wait = None if due is None else max(MIN_WAIT_SECONDS, due - self._clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def run_due(self) -> None:
        """Patch, one at a time, every Deployment whose patch is due now."""
        if not self._listed:
            return
        for key in list(self._peers):
            peer = self._peers.get(key)  # a patch awaited below may have changed the others
            if peer is None:
                continue
            due = self._due_at(peer)
            if due is not None and due <= self._clock():
                await self._scale(key, peer)

    def _due_at(self, peer: _Peer) -> float | None:
        since = self._since.get(peer.cluster, self._started)
        return patch_due(
            peer.replicas, self._ready[peer.cluster], since, self._debounce, peer.retry_at
        )

    async def _scale(self, key: tuple[str, str], peer: _Peer) -> None:
        before, ready = peer.replicas, self._ready[peer.cluster]
        try:
            generation = await self._patch(peer.namespace, peer.name, ready)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._failed(peer, before, ready, error)
            return
        self.patches += 1
        if self._peers.get(key) is peer:  # not deleted nor replaced meanwhile
            peer.replicas = ready
            peer.generation = max(peer.generation, generation)
            peer.failures, peer.retry_at = 0, None
        message = scaled_message(before, ready, peer.cluster)
        log.info("%s/%s: %s.", peer.namespace, peer.name, message)
        if self._record is not None:
            self._record(peer.ref, "Normal", SCALED_REASON, message)

    def _failed(self, peer: _Peer, before: int, ready: int, error: Exception) -> None:
        status = getattr(error, "status", None)
        if self._api_errors is not None:
            self._api_errors(status if isinstance(status, int) else None)
        peer.failures += 1
        delay = min(self._retry_max, self._retry * 2 ** (peer.failures - 1))
        peer.retry_at = self._clock() + delay
        why = describe_failure(error)
        message = (
            f"Could not scale peer Deployment from {before} to {ready} replicas "
            f"({ready_bases(ready, peer.cluster)}): {why}"
        )
        log.warning("%s/%s: %s; trying again in %.0fs.", peer.namespace, peer.name, message, delay)
        if self._record is not None and status != 404:  # no Event about a Deployment gone
            self._record(peer.ref, "Warning", SCALE_FAILED_REASON, message)

    def _set_node(self, name: str, node: _Node | None) -> None:
        """Count a node's change; a cluster whose count changes starts its debounce anew."""
        previous = self._nodes.pop(name, None)
        if node is not None:
            self._nodes[name] = node
        counted_before = previous.cluster if previous is not None and previous.ready else ""
        counted_now = node.cluster if node is not None and node.ready else ""
        if counted_before == counted_now:
            return
        now = self._clock()
        for cluster, step in ((counted_before, -1), (counted_now, 1)):
            if cluster:
                self._ready[cluster] += step
                self._since[cluster] = now
        self._wake.set()

    async def _list_until_done(self) -> None:
        delay = self._retry
        while not self._listed and self._list_nodes is not None:
            try:
                listed = await self._list_nodes()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning(
                    "Could not list the virtual nodes for peer Deployments (%s); trying again "
                    "in %.0fs.",
                    describe_failure(error),
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(self._retry_max, delay * 2)
                continue
            self.nodes_listed(listed)
