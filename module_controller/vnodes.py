"""Virtual Nodes: what a base's Node looks like, and making the cluster agree.

`node_manifest` is a pure function of a base record. `NodeSyncer` brings each Node to what
the registry wants (create, adopt, patch only what differs, delete) and keeps its Lease in
kube-node-lease renewed, so the real node-lifecycle controller keeps it Ready exactly as
long as the operator says.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import platform
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller import __version__, naming
from module_controller.protocol import BaseStatus, ProtocolError, decode, encode
from module_controller.registry import BaseRecord, BaseRegistry
from module_controller.settings import Settings
from module_controller.workqueue import KeyedWorkQueue

log = logging.getLogger(__name__)

COMPONENT_LABEL = "virtual-kubelet.koupleless.io/component"
ENV_LABEL = "virtual-kubelet.koupleless.io/env"
BASE_NAME_LABEL = "base.koupleless.io/name"
BASE_VERSION_LABEL = "base.koupleless.io/version"
BASE_CLUSTER_LABEL = "base.koupleless.io/cluster-name"
BASE_HOST_LABEL = "base.koupleless.io/host-name"
HOSTNAME_LABEL = "kubernetes.io/hostname"
IDENTITY_ANNOTATION = "base.koupleless.io/identity"
STATUS_ANNOTATION = "module-controller.koupleless.io/base-status"
VIRTUAL_NODE_TAINT_KEY = "schedule.koupleless.io/virtual-node"
ENV_TAINT_KEY = "schedule.koupleless.io/node-env"
OUR_TAINT_KEYS = frozenset({VIRTUAL_NODE_TAINT_KEY, ENV_TAINT_KEY})
LEASE_NAMESPACE = "kube-node-lease"

READY_REASON = "BaseHeartbeat"
NOT_READY_REASON = "BaseSilent"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _timestamp(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_timestamp(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _body(manifest: dict[str, Any]) -> Any:
    """The client's methods are typed for model objects, but send plain dicts as they are."""
    return manifest


def _ki(value: int) -> str:
    return f"{value // 1024}Ki"


def node_selector(settings: Settings) -> str:
    """Label selector of the nodes this operator owns (its env only)."""
    return f"{COMPONENT_LABEL}=vnode,{ENV_LABEL}={settings.env}"


def node_labels(node_name: str, status: BaseStatus, settings: Settings) -> dict[str, str]:
    metadata = status.base_metadata
    return {
        BASE_NAME_LABEL: naming.label_value(metadata.name),
        BASE_VERSION_LABEL: naming.label_value(metadata.version),
        BASE_CLUSTER_LABEL: naming.label_value(metadata.cluster_name),
        BASE_HOST_LABEL: naming.label_value(status.local_host_name),
        # The node's own name, as a kubelet sets it: unique per base, for topology spread.
        HOSTNAME_LABEL: naming.label_value(node_name),
        COMPONENT_LABEL: "vnode",
        ENV_LABEL: naming.label_value(settings.env),
        "type": "virtual-kubelet",
        "kubernetes.io/role": "agent",
    }


def node_taints(settings: Settings) -> list[dict[str, str]]:
    taints = [{"key": VIRTUAL_NODE_TAINT_KEY, "value": "True", "effect": "NoExecute"}]
    if settings.node_env_taint:
        taints.append({"key": ENV_TAINT_KEY, "value": settings.env, "effect": "NoExecute"})
    return taints


def node_resources(record: BaseRecord, settings: Settings) -> tuple[dict[str, str], ...]:
    capacity = {
        "cpu": settings.node_cpu,
        "memory": settings.node_memory,
        "pods": settings.node_pods,
    }
    allocatable = dict(capacity)
    if record.memory_capacity_bytes is not None:
        capacity["memory"] = _ki(record.memory_capacity_bytes)
        allocatable["memory"] = _ki(record.memory_allocatable_bytes or 0)
    return capacity, allocatable


def node_conditions(record: BaseRecord, now: datetime.datetime) -> list[dict[str, str]]:
    stamp = _timestamp(now)
    ready = {
        "type": "Ready",
        "status": "True" if record.ready else "False",
        "reason": READY_REASON if record.ready else NOT_READY_REASON,
        "message": "the base sends heartbeats" if record.ready else str(record.not_ready_reason),
        "lastHeartbeatTime": stamp,
        "lastTransitionTime": stamp,
    }
    quiet = [
        {
            "type": kind,
            "status": "False",
            "reason": f"No{kind}",
            "message": "not applicable to a base",
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": stamp,
        }
        for kind in ("MemoryPressure", "DiskPressure", "PIDPressure", "NetworkUnavailable")
    ]
    return [ready, *quiet]


def node_status(record: BaseRecord, settings: Settings, now: datetime.datetime) -> dict[str, Any]:
    capacity, allocatable = node_resources(record, settings)
    return {
        "phase": "Running",
        "conditions": node_conditions(record, now),
        "addresses": [
            {"type": "InternalIP", "address": record.ip},
            {
                "type": "Hostname",
                "address": naming.host_name(record.status.local_host_name) or record.node_name,
            },
        ],
        "capacity": capacity,
        "allocatable": allocatable,
        "nodeInfo": {
            "architecture": platform.machine() or "unknown",
            "operatingSystem": "linux",
            "kubeletVersion": f"module-controller-{__version__}",
            "kubeProxyVersion": "",
            "osImage": "koupleless base",
            "kernelVersion": "",
            "containerRuntimeVersion": "koupleless://"
            + naming.label_value(record.status.base_metadata.version),
            "machineID": "",
            "systemUUID": "",
            "bootID": "",
        },
    }


def node_manifest(record: BaseRecord, settings: Settings) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": record.node_name,
            "labels": node_labels(record.node_name, record.status, settings),
            "annotations": {
                IDENTITY_ANNOTATION: record.identity,
                STATUS_ANNOTATION: encode(record.status).decode(),
            },
        },
        "spec": {"taints": node_taints(settings)},
        "status": node_status(record, settings, _now()),
    }


MANAGED_LABELS = (
    BASE_NAME_LABEL,
    BASE_VERSION_LABEL,
    BASE_CLUSTER_LABEL,
    BASE_HOST_LABEL,
    HOSTNAME_LABEL,
    COMPONENT_LABEL,
    ENV_LABEL,
    "type",
    "kubernetes.io/role",
)
MANAGED_ANNOTATIONS = (IDENTITY_ANNOTATION, STATUS_ANNOTATION)


def metadata_fingerprint(node: dict[str, Any]) -> tuple[Any, ...]:
    """The labels, annotations and taints this operator owns on a node, comparable."""
    metadata = node.get("metadata") or {}
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    taints = (node.get("spec") or {}).get("taints") or []
    return (
        tuple(labels.get(key) for key in MANAGED_LABELS),
        tuple(annotations.get(key) for key in MANAGED_ANNOTATIONS),
        tuple(
            sorted(
                (t.get("key"), t.get("value"), t.get("effect"))
                for t in taints
                if t.get("key") in OUR_TAINT_KEYS
            )
        ),
    )


def status_fingerprint(node: dict[str, Any]) -> tuple[Any, ...]:
    """What of a node's status matters for change detection (timestamps do not)."""
    status = node.get("status") or {}
    conditions = tuple(
        sorted(
            (c.get("type"), c.get("status"), c.get("reason"))
            for c in status.get("conditions") or []
        )
    )
    addresses = tuple(
        sorted((a.get("type"), a.get("address")) for a in status.get("addresses") or [])
    )
    return (
        conditions,
        addresses,
        tuple(sorted((status.get("capacity") or {}).items())),
        tuple(sorted((status.get("allocatable") or {}).items())),
    )


@dataclass(frozen=True)
class AppliedNode:
    """What the cluster holds for a node, as far as this operator last saw or wrote it."""

    uid: str
    metadata: tuple[Any, ...]
    status: tuple[Any, ...]

    @classmethod
    def of(cls, uid: str, node: dict[str, Any]) -> AppliedNode:
        return cls(uid, metadata_fingerprint(node), status_fingerprint(node))


def base_status_of_node(node: dict[str, Any]) -> tuple[str, BaseStatus] | None:
    """Identity and last heartbeat recorded on an existing node, for adoption at start-up."""
    annotations = (node.get("metadata") or {}).get("annotations") or {}
    identity = annotations.get(IDENTITY_ANNOTATION)
    recorded = annotations.get(STATUS_ANNOTATION)
    if not identity or not recorded:
        return None
    try:
        return identity, decode(BaseStatus, recorded)
    except ProtocolError:
        return None


class NodeSyncer:
    """Makes each Node and its Lease match the registry; patches only what differs."""

    def __init__(
        self, settings: Settings, registry: BaseRegistry, api: client.ApiClient, workers: int = 8
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.api = api
        self.core = client.CoreV1Api(api)
        self.coordination = client.CoordinationV1Api(api)
        self.queue = KeyedWorkQueue(
            self.sync, workers=workers, name="node sync", on_error=self._count_error
        )
        self.api_errors: Callable[[int | None], None] | None = None
        self.existing: dict[str, AppliedNode] = {}
        self._lease_limit = asyncio.Semaphore(16)

    def _count_error(self, error: Exception) -> None:
        if isinstance(error, ApiException) and self.api_errors is not None:
            self.api_errors(error.status)

    def start(self) -> None:
        self.queue.start()

    async def stop(self) -> None:
        await self.queue.stop()

    def resync(self, names: list[str]) -> None:
        self.queue.add_all(names)

    def forget(self, name: str) -> None:
        """The Node is gone from the cluster (deleted by someone): check whether it should be."""
        self.existing.pop(name, None)
        self.queue.add(name)

    def _raw(self, obj: Any) -> dict[str, Any]:
        raw: dict[str, Any] = self.api.sanitize_for_serialization(obj)
        return raw

    async def adopt_existing(self) -> int:
        """Take over the nodes of a previous run: same objects, same uids, fresh grace."""
        nodes = await self.core.list_node(label_selector=node_selector(self.settings))
        adopted = 0
        for node in nodes.items:
            raw = self._raw(node)
            found = base_status_of_node(raw)
            name = node.metadata.name
            if found is None:
                log.warning("Node %s carries no base record; leaving it alone.", name)
                continue
            identity, status = found
            self.registry.adopt(identity, status, name)
            self.existing[name] = AppliedNode.of(node.metadata.uid, raw)
            adopted += 1
        if adopted:
            log.info(
                "Adopted %d node(s) of a previous run; their bases get a fresh grace period.",
                adopted,
            )
        return adopted

    async def sync(self, name: str) -> None:
        record = self.registry.base_of_node(name)
        if record is None:
            await self._delete(name)
            return
        desired = node_manifest(record, self.settings)
        applied = self.existing.get(name)
        if applied is None:
            try:
                created = await self.core.create_node(_body(desired))
            except ApiException as error:
                if error.status != 409:
                    raise
                current = self._raw(await self.core.read_node(name))
                applied = AppliedNode.of(current["metadata"]["uid"], current)
            else:
                self.existing[name] = AppliedNode.of(created.metadata.uid, desired)
                log.info("Created node %s for base %s.", name, record.identity)
                await self._renew_lease(name)
                return
        try:
            if applied.metadata != metadata_fingerprint(desired):
                await self._patch_metadata(name, desired)
            if applied.status != status_fingerprint(desired):
                await self.core.patch_node_status(name, {"status": desired["status"]})
                ready = desired["status"]["conditions"][0]
                log.info("Updated node %s: Ready=%s (%s).", name, ready["status"], ready["reason"])
        except ApiException as error:
            if error.status == 404:  # deleted under us: the next pass creates it again
                self.forget(name)
                return
            raise
        self.existing[name] = AppliedNode(
            applied.uid, metadata_fingerprint(desired), status_fingerprint(desired)
        )

    async def _patch_metadata(self, name: str, desired: dict[str, Any]) -> None:
        """Set our labels, annotations and taints, keeping taints others put there."""
        current = self._raw(await self.core.read_node(name))
        taints = (current.get("spec") or {}).get("taints") or []
        others = [t for t in taints if t.get("key") not in OUR_TAINT_KEYS]
        patch = {
            "metadata": {
                "labels": desired["metadata"]["labels"],
                "annotations": desired["metadata"]["annotations"],
                "resourceVersion": current["metadata"]["resourceVersion"],
            },
            "spec": {"taints": others + desired["spec"]["taints"]},
        }
        await self.core.patch_node(name, patch)

    async def _delete(self, name: str) -> None:
        # Forget the node first: a lease renewal running meanwhile must not create the
        # lease again after it is deleted here.
        existed = self.existing.pop(name, None) is not None
        deletions: tuple[Callable[[], Awaitable[object]], ...] = (
            lambda: self.core.delete_node(name),
            lambda: self.coordination.delete_namespaced_lease(name, LEASE_NAMESPACE),
        )
        for delete in deletions:  # made one at a time: a failure leaves no coroutine behind
            try:
                await delete()
            except ApiException as error:
                if error.status != 404:
                    raise
        if existed:
            log.info("Deleted node %s and its lease.", name)

    def _lease_body(self, name: str) -> dict[str, Any]:
        uid = self.existing[name].uid
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "namespace": LEASE_NAMESPACE,
                "labels": {COMPONENT_LABEL: "vnode-lease", ENV_LABEL: self.settings.env},
                # Garbage-collected with its node, whoever deletes the node.
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name, "uid": uid}],
            },
            "spec": {
                "holderIdentity": self.settings.client_id,
                "leaseDurationSeconds": self.settings.lease_duration_seconds,
                "renewTime": _micro_timestamp(_now()),
            },
        }

    async def _renew_lease(self, name: str) -> None:
        if name not in self.existing:
            return
        async with self._lease_limit:
            renewal = {
                "spec": {
                    "holderIdentity": self.settings.client_id,
                    "leaseDurationSeconds": self.settings.lease_duration_seconds,
                    "renewTime": _micro_timestamp(_now()),
                }
            }
            try:
                await self.coordination.patch_namespaced_lease(name, LEASE_NAMESPACE, renewal)
            except ApiException as error:
                if error.status != 404:
                    raise
                if name not in self.existing:  # the node was deleted meanwhile: no lease
                    return
                try:
                    await self.coordination.create_namespaced_lease(
                        LEASE_NAMESPACE, _body(self._lease_body(name))
                    )
                except ApiException as error:
                    # The periodic renewal and the one after creating the node both found
                    # no lease: whichever created it second finds it fresh, not failed.
                    if error.status != 409:
                        raise

    async def renew_leases(self) -> None:
        """Renew the Lease of every node whose base is known; failures are logged, not fatal."""
        names = [r.node_name for r in self.registry.live_bases() if r.node_name in self.existing]
        results = await asyncio.gather(
            *(self._renew_lease(name) for name in names), return_exceptions=True
        )
        for name, result in zip(names, results, strict=True):
            if isinstance(result, Exception):
                log.warning("Renewing the lease of node %s failed: %s", name, result)
