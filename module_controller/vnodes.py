"""Virtual Nodes: making the cluster agree with the base registry.

`NodeSyncer` brings each Node to what the registry wants (create, adopt, patch only what
differs, delete) and keeps its Lease in kube-node-lease renewed, so the real
node-lifecycle controller keeps it Ready exactly as long as the operator says. What a Node
looks like is `vnode_manifest`'s.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller.kube import call_for_json
from module_controller.registry import BaseRegistry
from module_controller.settings import Settings
from module_controller.shards.gate import OwnerGate, SoleOwner
from module_controller.vnode_manifest import (
    COMPONENT_LABEL,
    ENV_LABEL,
    LEASE_NAMESPACE,
    OUR_TAINT_KEYS,
    AppliedNode,
    Transitions,
    as_body,
    base_status_of_node,
    memory_of,
    metadata_fingerprint,
    micro_timestamp,
    node_labels,
    node_manifest,
    node_selector,
    now_utc,
    status_fingerprint,
    status_patch,
    transitions_of,
    tunnel_of_node,
)
from module_controller.workqueue import KeyedWorkQueue

__all__ = [
    "COMPONENT_LABEL",
    "ENV_LABEL",
    "LEASE_NAMESPACE",
    "NodeSyncer",
    "node_labels",
    "node_manifest",
    "node_selector",
]

log = logging.getLogger(__name__)


class NodeSyncer:
    """Makes each Node and its Lease match the registry; patches only what differs."""

    def __init__(
        self,
        settings: Settings,
        registry: BaseRegistry,
        api: client.ApiClient,
        workers: int = 24,
        owner: OwnerGate | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        # Writes only for the bases this replica owns (shards/ownership.py).
        self.owner: OwnerGate = owner or SoleOwner()
        self.api = api
        self.core = client.CoreV1Api(api)
        self.coordination = client.CoordinationV1Api(api)
        self.queue = KeyedWorkQueue(
            self.sync, workers=workers, name="node sync", on_error=self._count_error
        )
        # A new node's Lease is written by workers of its own: the node sync's workers go
        # on to the next node meanwhile (500 bases arriving together wait half as long).
        self.first_leases = KeyedWorkQueue(
            self._first_lease, workers=workers, name="node lease", on_error=self._count_error
        )
        self.api_errors: Callable[[int | None], None] | None = None
        self.existing: dict[str, AppliedNode] = {}
        # The conditions' transitions as last written or adopted, per node name.
        self.transitions: dict[str, Transitions] = {}
        self._lease_limit = asyncio.Semaphore(16)

    def _count_error(self, error: Exception) -> None:
        if isinstance(error, ApiException) and self.api_errors is not None:
            self.api_errors(error.status)

    def start(self) -> None:
        self.queue.start()
        self.first_leases.start()

    async def stop(self) -> None:
        await self.queue.stop()
        await self.first_leases.stop()

    def resync(self, names: list[str]) -> None:
        self.queue.add_all(names)

    def forget(self, name: str) -> None:
        """The Node is gone from the cluster (deleted by someone): check whether it should be."""
        self.existing.pop(name, None)
        self.transitions.pop(name, None)  # a recreated node starts its own history
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
            self.registry.adopt(
                identity, status, name, memory_of(raw, self.settings), tunnel_of_node(raw)
            )
            self.existing[name] = AppliedNode.of(node.metadata.uid, raw)
            self.transitions[name] = transitions_of(raw)
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
            # A node made here whose Lease is not written yet (its base left at once) is
            # this replica's to delete too, or it would stay with no Lease, for good.
            if self.owner.holds(name) or (name in self.existing and self.owner.unclaimed(name)):
                await self._delete(name)
            else:
                self.existing.pop(name, None)
                self.transitions.pop(name, None)
            return
        if not self.owner.may_write_node(name, record.identity):
            return  # another replica's base: it writes the node
        applied = self.existing.get(name)
        if applied is None and self.owner.holds_lease(name):
            # Taken over from another replica: its node exists; read it, not a create
            # bound to fail with 409.
            applied = await self._read_existing(name)
        desired = node_manifest(record, self.settings, self.transitions.get(name))
        if applied is None:
            try:
                created = await call_for_json(self.api, self.core.create_node, as_body(desired))
            except ApiException as error:
                if error.status != 409:
                    raise
                # Its 404 (made, then deleted, by someone else meanwhile) is raised: the
                # queue tries again with backoff.
                applied = await self._read_existing(name, missing_ok=False)
                if applied is None or not self.owner.holds(name):
                    return  # made by another replica: its Lease says whose it is
                desired = node_manifest(record, self.settings, self.transitions.get(name))
            else:
                self.existing[name] = AppliedNode.of(created["metadata"]["uid"], desired)
                self.transitions[name] = transitions_of(desired)
                log.info("Created node %s for base %s.", name, record.identity)
                self.first_leases.add(name)
                return
        try:
            if applied.metadata != metadata_fingerprint(desired):
                await self._patch_metadata(name, desired)
            if applied.status != status_fingerprint(desired):
                await call_for_json(
                    self.api, self.core.patch_node_status, name, status_patch(desired)
                )
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
        self.transitions[name] = transitions_of(desired)
        if not self.owner.holds(name) and self.owner.may_write_node(name, record.identity):
            # Ours to write, yet no Lease is known (it was deleted, or this replica made
            # the node and the Lease write failed): make it, or learn whose it is. Asked
            # again after the awaits: the base may be being handed over meanwhile.
            await self._renew_lease(name)

    async def _read_existing(self, name: str, *, missing_ok: bool = True) -> AppliedNode | None:
        """Adopt the node as it is in the cluster (None: there is none)."""
        try:
            current = self._raw(await self.core.read_node(name))
        except ApiException as error:
            if error.status == 404 and missing_ok:
                return None
            raise
        applied = AppliedNode.of(current["metadata"]["uid"], current)
        self.existing[name] = applied
        self.transitions[name] = transitions_of(current)
        return applied

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
        self.transitions.pop(name, None)
        try:
            await self.core.delete_node(name)
        except ApiException as error:
            if error.status != 404:
                raise
        # A first Lease still being written would land after this delete (and be taken
        # away only when its answer comes): let that write end first.
        await self.first_leases.settled(name)
        await self._delete_lease(name)
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
                "renewTime": micro_timestamp(now_utc()),
            },
        }

    async def _first_lease(self, name: str) -> None:
        await self._renew_lease(name, node_created=True)

    async def _renew_lease(self, name: str, *, node_created: bool = False) -> None:
        if name not in self.existing:
            return
        async with self._lease_limit:
            # A node this replica has just created has no Lease yet, unless one outlived an
            # earlier node of that name: create first, and renew only if that is refused.
            if node_created and await self._create_lease(name):
                return
            # Renewed only while still ours: a test-and-set, so a replica that lost the
            # base (taken over while it was partitioned) can never take it back by renewing.
            renewal = [
                {"op": "test", "path": "/spec/holderIdentity", "value": self.settings.client_id},
                {"op": "replace", "path": "/spec/renewTime", "value": micro_timestamp(now_utc())},
            ]
            try:
                renewed = await self._patch_lease(name, LEASE_NAMESPACE, renewal)
            except ApiException as error:
                if error.status == 422:  # the test failed: another replica holds it now
                    log.info("Node %s's Lease is held by another replica now.", name)
                    self.owner.lost(name)
                    return
                if error.status != 404:
                    raise
                if name not in self.existing:  # the node was deleted meanwhile: no lease
                    return
                await self._create_lease(name)
            else:
                await self.owner.lease_written(name, renewed)

    async def _create_lease(self, name: str) -> bool:
        """Create the node's Lease, held by this replica; False if one exists already."""
        uid = self.existing[name].uid
        try:
            created = await call_for_json(
                self.api,
                self.coordination.create_namespaced_lease,
                LEASE_NAMESPACE,
                as_body(self._lease_body(name)),
            )
        except ApiException as error:
            # The periodic renewal and the one after creating the node both found no
            # lease: whichever created it second finds it there, not failed.
            if error.status != 409:
                raise
            return False
        current = self.existing.get(name)
        if current is None or current.uid != uid:
            # The node was deleted while its Lease was being made (the Lease is written
            # apart from the node sync that deletes it): take the Lease away with it, or
            # it would outlive the node until the garbage collector came by.
            await self._delete_lease(name)
            return True
        await self.owner.lease_written(name, created)
        return True

    async def _delete_lease(self, name: str) -> None:
        try:
            await self.coordination.delete_namespaced_lease(name, LEASE_NAMESPACE)
        except ApiException as error:
            if error.status != 404:
                raise

    async def _patch_lease(
        self, name: str, namespace: str, operations: list[Any]
    ) -> dict[str, Any]:
        return await call_for_json(
            self.api,
            self.coordination.patch_namespaced_lease,
            name,
            namespace,
            operations,
            _content_type="application/json-patch+json",
        )

    async def renew_leases(self) -> None:
        """Renew the Lease of every node whose base is known; failures are logged, not fatal."""
        names = [
            r.node_name
            for r in self.registry.live_bases()
            if r.node_name in self.existing and self.owner.holds(r.node_name)
        ]
        results = await asyncio.gather(
            *(self._renew_lease(name) for name in names), return_exceptions=True
        )
        for name, result in zip(names, results, strict=True):
            if isinstance(result, Exception):
                log.warning("Renewing the lease of node %s failed: %s", name, result)
