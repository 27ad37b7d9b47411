"""Fakes for the shards tests: the API server's Leases (`FakeLeases`: optimistic concurrency,
a 409 on a stale resourceVersion and a 422 on a failed JSON-patch test) and one replica's
membership and ownership on them (`Replica`, with a fake monotonic clock for its renew
deadline). The node Leases' times are real wall-clock times, set in the past where a test
needs an old renewal. The watch is played by hand (`Replica.watch`), so a test decides what
each replica has heard and when.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
from collections.abc import Callable
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller.inbox import OwnershipChanged
from module_controller.registry import BaseRegistry
from module_controller.settings import Settings
from module_controller.shards import membership as membership_module
from module_controller.shards.assignment import intended_owner
from module_controller.shards.membership import MEMBER_LABEL, Membership, member_lease_name
from module_controller.shards.ownership import Ownership, Settle
from module_controller.vnode_manifest import (
    COMPONENT_LABEL,
    ENV_LABEL,
    LEASE_NAMESPACE,
    AppliedNode,
    micro_timestamp,
    now_utc,
)
from module_controller.vnodes import NodeSyncer
from tests.unit.wiring_support import (
    Clock,
    FakeCluster,
    Wired,
)

ENV = "shards"
NAMESPACE = "mc"
NODE_LEASE_SECONDS = 40  # LEASE_DURATION_SECONDS' default

Hook = Callable[[str, str, str, Any], None]


def lease_model(body: dict[str, Any]) -> client.V1Lease:
    """A stored Lease as the client returns it (times as datetimes)."""
    spec = body["spec"]
    metadata = body["metadata"]

    def when(value: Any) -> datetime.datetime | None:
        return membership_module.parse_time(value)

    return client.V1Lease(
        metadata=client.V1ObjectMeta(
            name=metadata["name"],
            namespace=metadata["namespace"],
            labels=dict(metadata.get("labels") or {}),
            resource_version=metadata["resourceVersion"],
        ),
        spec=client.V1LeaseSpec(
            holder_identity=spec.get("holderIdentity"),
            lease_duration_seconds=spec.get("leaseDurationSeconds"),
            renew_time=when(spec.get("renewTime")),
            acquire_time=when(spec.get("acquireTime")),
            lease_transitions=spec.get("leaseTransitions"),
        ),
    )


class FakeLeases:
    """The Leases of the API server: optimistic concurrency, JSON-patch tests, a log.

    `before` (verb, namespace, name, body) runs before each write and may raise, to fail
    one, or look at what the writer believes at that moment."""

    def __init__(self) -> None:
        self.store: dict[tuple[str, str], dict[str, Any]] = {}
        self.version = 100
        self.writes: list[tuple[str, str, Any]] = []  # (verb, name, body)
        self.before: Hook | None = None

    def _next_version(self) -> str:
        self.version += 1
        return str(self.version)

    def put(
        self,
        namespace: str,
        name: str,
        holder: str | None,
        *,
        age: float = 0.0,
        duration: int = NODE_LEASE_SECONDS,
        labels: dict[str, str] | None = None,
    ) -> None:
        """A Lease as another party left it, renewed `age` seconds ago."""
        renewed = micro_timestamp(now_utc() - datetime.timedelta(seconds=age))
        spec: dict[str, Any] = {"leaseDurationSeconds": duration, "renewTime": renewed}
        if holder:
            spec["holderIdentity"] = holder
        self.store[(namespace, name)] = {
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": labels or {},
                "resourceVersion": self._next_version(),
            },
            "spec": spec,
        }

    def put_node_lease(self, name: str, holder: str | None, age: float = 0.0) -> None:
        labels = {COMPONENT_LABEL: "vnode-lease", ENV_LABEL: ENV}
        self.put(LEASE_NAMESPACE, name, holder, age=age, labels=labels)

    def put_member(self, client_id: str, age: float = 0.0, duration: int = 15) -> None:
        name = member_lease_name(ENV, client_id)
        self.put(NAMESPACE, name, client_id, age=age, duration=duration, labels={MEMBER_LABEL: ENV})

    def holder(self, name: str) -> str | None:
        body = self.store.get((LEASE_NAMESPACE, name))
        return None if body is None else body["spec"].get("holderIdentity")

    def body(self, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.store[(LEASE_NAMESPACE, name)])

    # --- CoordinationV1Api --------------------------------------------------------------

    async def list_namespaced_lease(
        self, namespace: str, label_selector: str = "", **_: Any
    ) -> Any:
        wanted = dict(term.split("=", 1) for term in label_selector.split(",") if term)
        items = [
            lease_model(body)
            for (ns, _), body in sorted(self.store.items())
            if ns == namespace
            and all(body["metadata"]["labels"].get(k) == v for k, v in wanted.items())
        ]
        return client.V1LeaseList(items=items)

    async def read_namespaced_lease(self, name: str, namespace: str) -> Any:
        body = self.store.get((namespace, name))
        if body is None:
            raise ApiException(status=404)
        return lease_model(body)

    async def create_namespaced_lease(self, namespace: str, body: dict[str, Any], **_: Any) -> Any:
        name = body["metadata"]["name"]
        if self.before is not None:
            self.before("create", namespace, name, body)
        if (namespace, name) in self.store:
            raise ApiException(status=409)
        stored = copy.deepcopy(body)
        stored["metadata"].setdefault("labels", {})
        stored["metadata"]["resourceVersion"] = self._next_version()
        stored["metadata"]["namespace"] = namespace
        self.store[(namespace, name)] = stored
        self.writes.append(("create", name, body))
        return lease_model(stored)

    async def patch_namespaced_lease(self, name: str, namespace: str, body: Any, **_: Any) -> Any:
        if self.before is not None:
            self.before("patch", namespace, name, body)
        stored = self.store.get((namespace, name))
        if stored is None:
            raise ApiException(status=404)
        spec = stored["spec"]
        if isinstance(body, list):  # a JSON patch
            for operation in body:
                field = operation["path"].removeprefix("/spec/")
                if operation["op"] == "test" and spec.get(field) != operation["value"]:
                    raise ApiException(status=422)
            for operation in body:
                if operation["op"] in ("replace", "add"):
                    spec[operation["path"].removeprefix("/spec/")] = operation["value"]
        else:  # a merge patch, with the resourceVersion read as a precondition
            wanted = (body.get("metadata") or {}).get("resourceVersion")
            if wanted is not None and wanted != stored["metadata"]["resourceVersion"]:
                raise ApiException(status=409)
            for key, value in (body.get("spec") or {}).items():
                if value is None:
                    spec.pop(key, None)
                else:
                    spec[key] = value
        stored["metadata"]["resourceVersion"] = self._next_version()
        self.writes.append(("patch", name, copy.deepcopy(body)))
        return lease_model(stored)

    async def delete_namespaced_lease(self, name: str, namespace: str, **_: Any) -> None:
        if self.store.pop((namespace, name), None) is None:
            raise ApiException(status=404)
        self.writes.append(("delete", name, None))


class Replica:
    """One operator replica's membership and ownership, on the shared fake Leases."""

    def __init__(
        self,
        name: str,
        leases: FakeLeases,
        api: client.ApiClient,
        settings: Settings | None = None,
        settle: Settle | None = None,
    ) -> None:
        self.leases = leases
        self.clock = Clock()
        self.settings = settings or Settings(client_id=name, env=ENV, namespace=NAMESPACE)
        self.membership = Membership(self.settings, api, clock=self.clock)
        self.membership.coordination = leases  # type: ignore[assignment]
        self.gained: list[str] = []

        async def gained(names: list[str]) -> None:
            self.gained.extend(names)

        self.ownership = Ownership(self.settings, self.membership, api, gained, settle)
        self.ownership.coordination = leases  # type: ignore[assignment]

    @property
    def me(self) -> str:
        return self.settings.client_id

    async def round(self, bases: dict[str, str]) -> None:
        """What the runtime's `replicas` task does every REPLICA_RETRY_SECONDS."""
        await self.membership.round()
        await self.ownership.round(bases)

    async def watch(self, *names: str) -> None:
        """The watch delivers the node Leases (these, or all) as they are now."""
        for (namespace, name), body in sorted(self.leases.store.items()):
            if namespace == LEASE_NAMESPACE and (not names or name in names):
                await self.ownership.lease_seen(copy.deepcopy(body))

    def fail_renewals(self) -> None:
        """This replica's membership renewals fail from now on (a partition)."""
        own = self.membership.name
        previous = self.leases.before

        def before(verb: str, namespace: str, name: str, body: Any) -> None:
            if name == own:
                raise ApiException(status=503, reason="partitioned")
            if previous is not None:
                previous(verb, namespace, name, body)

        self.leases.before = before


def node(identity: str) -> str:
    return f"virtual-node-{identity}"


def bases_for(owner: str, members: tuple[str, ...], count: int, start: int = 0) -> dict[str, str]:
    """`count` bases (node name -> identity) whose intended owner among `members` is `owner`."""
    found: dict[str, str] = {}
    number = start
    while len(found) < count:
        identity = f"base-{number:05d}"
        if intended_owner(identity, members) == owner:
            found[node(identity)] = identity
        number += 1
    return found


async def one_base_for_a_joiner(
    api: client.ApiClient, leases: FakeLeases, settle: Settle
) -> tuple[Replica, str, dict[str, str]]:
    """replica-a holds one base that replica-d, joining now, should own."""
    a = Replica("replica-a", leases, api, settle=settle)
    [name] = bases_for("replica-d", ("replica-a", "replica-d"), 1)
    bases = {name: name.removeprefix("virtual-node-")}
    leases.put_node_lease(name, "replica-a")
    await a.round(bases)
    leases.put_member("replica-d")
    return a, name, bases


def a_node_syncer(replica: Replica, api: client.ApiClient, leases: FakeLeases) -> NodeSyncer:
    registry = BaseRegistry(replica.settings)
    syncer = NodeSyncer(replica.settings, registry, api, owner=replica.ownership)
    syncer.coordination = leases  # type: ignore[assignment]
    syncer.core = FakeCluster([])  # type: ignore[assignment]
    for (namespace, name), _ in leases.store.items():
        if namespace == LEASE_NAMESPACE:
            syncer.existing[name] = AppliedNode(f"uid-{name}", (), ())
    return syncer


class ShardedWired:
    """The runtime's wiring (tests/unit/wiring_support.py) with a real Ownership, on fake
    Leases; OwnershipChanged goes into the inbox as the runtime's callback puts it."""

    def __init__(self, api: client.ApiClient, leases: FakeLeases) -> None:
        self.wired = Wired(api, deployments=[])
        self.leases = leases
        self.settings = self.wired.settings
        self.settings.env = ENV  # the fake Leases' env
        self.settings.namespace = NAMESPACE
        self.clock = Clock()  # the membership's own monotonic clock
        self.membership = Membership(self.settings, api, clock=self.clock)
        self.membership.coordination = leases  # type: ignore[assignment]
        inbox = self.wired.inbox

        async def gained(names: list[str]) -> None:
            await inbox.put(OwnershipChanged(tuple(names)))

        self.ownership = Ownership(self.settings, self.membership, api, gained)
        self.ownership.coordination = leases  # type: ignore[assignment]
        self.wired.nodes.owner = self.ownership
        self.wired.nodes.coordination = leases  # type: ignore[assignment]
        self.wired.sync.owner = self.ownership
        self.wired.dispatcher.owner = self.ownership
        # Creating a node takes a round trip, as on a real API server.
        create_node = self.wired.cluster.create_node

        async def slow_create_node(body: dict[str, Any], **_: Any) -> Any:
            await asyncio.sleep(0.02)
            return await create_node(body)

        self.wired.cluster.create_node = slow_create_node  # type: ignore[method-assign]

    async def replicas_round(self) -> None:
        await self.membership.round()
        bases = {r.node_name: r.identity for r in self.wired.registry.live_bases()}
        await self.ownership.round(bases)

    async def settle(self) -> None:
        """Until the inbox and every work queue have been empty for a while."""
        wired = self.wired
        quiet = 0
        while quiet < 20:
            busy = len(wired.inbox) + len(wired.nodes.queue) + len(wired.sync.queue)
            busy += len(wired.sync.inventory_queries)
            quiet = 0 if busy else quiet + 1
            await asyncio.sleep(0.005)


def partition(member_lease: str) -> Hook:
    def before(verb: str, namespace: str, name: str, body: Any) -> None:
        if name == member_lease:
            raise ApiException(status=503, reason="partitioned")

    return before


async def one_held_base(
    api: client.ApiClient, leases: FakeLeases
) -> tuple[Replica, str, dict[str, str]]:
    """replica-a, alone, holding one base: (replica, node name, {node name: identity})."""
    a = Replica("replica-a", leases, api)
    [name] = bases_for("replica-a", ("replica-a",), 1)
    bases = {name: name.removeprefix("virtual-node-")}
    leases.put_node_lease(name, "replica-a")
    await a.round(bases)
    assert a.ownership.holds(name)
    return a, name, bases
