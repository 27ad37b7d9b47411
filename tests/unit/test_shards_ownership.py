"""Membership, ownership and fencing of bases sharded over replicas (module_controller/shards/).

The replicas share one fake CoordinationV1Api (`FakeLeases`: the API server's optimistic
concurrency, a 409 on a stale resourceVersion and a 422 on a failed JSON-patch test) and
each has a fake monotonic clock for its renew deadline. The node Leases' times are real
wall-clock times, set in the past where a test needs an old renewal. The watch is played
by hand (`Replica.watch`), so a test decides what each replica has heard and when.

The tests under "Problems still open" fail on the code as it is: each names the problem.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any, cast

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller.inbox import ModulePodChanged, OwnershipChanged
from module_controller.protocol.states import BizState
from module_controller.registry import BaseRegistry
from module_controller.settings import Settings
from module_controller.shards import membership as membership_module
from module_controller.shards import ownership as ownership_module
from module_controller.shards.assignment import intended_owner
from module_controller.shards.membership import MEMBER_LABEL, Membership, member_lease_name
from module_controller.shards.ownership import HANDOVERS_PER_ROUND, Ownership, Settle
from module_controller.tunnels.events import BaseInventory, BaselineQuery, BrokerConnected
from module_controller.vnode_manifest import (
    COMPONENT_LABEL,
    ENV_LABEL,
    LEASE_NAMESPACE,
    AppliedNode,
    micro_timestamp,
    now_utc,
)
from module_controller.vnodes import NodeSyncer
from tests.unit.modules_support import simple
from tests.unit.wiring_support import (
    IDENTITY,
    Clock,
    FakeCluster,
    Wired,
    heartbeat,
    module_pod,
)
from tests.waiting import wait_for

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

    async def list_namespaced_lease(self, namespace: str, label_selector: str = "") -> Any:
        wanted = dict(term.split("=", 1) for term in label_selector.split(",") if term)
        items = [
            lease_model(body)
            for (ns, _), body in sorted(self.store.items())
            if ns == namespace
            and all(body["metadata"]["labels"].get(k) == v for k, v in wanted.items())
        ]
        return SimpleNamespace(items=items)

    async def read_namespaced_lease(self, name: str, namespace: str) -> Any:
        body = self.store.get((namespace, name))
        if body is None:
            raise ApiException(status=404)
        return lease_model(body)

    async def create_namespaced_lease(self, namespace: str, body: dict[str, Any]) -> Any:
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
                await self.ownership.lease_seen(name, copy.deepcopy(body))

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


@pytest.fixture
async def api() -> AsyncIterator[client.ApiClient]:
    async with client.ApiClient() as made:
        yield made


@pytest.fixture
def leases() -> FakeLeases:
    return FakeLeases()


# --- membership -------------------------------------------------------------------------------


async def test_acting_ends_at_the_renew_deadline_when_renewals_fail_and_returns_with_one(
    api: client.ApiClient, leases: FakeLeases
) -> None:
    a = Replica("replica-a", leases, api)
    assert not a.membership.acting, "never renewed: not a member"
    await a.membership.round()
    assert a.membership.acting and a.membership.members == ("replica-a",)
    deadline = a.settings.replica_renew_deadline_seconds
    renewed_at = a.clock.now
    previous = leases.before
    a.fail_renewals()
    while a.clock.now - renewed_at < deadline - 1:
        a.clock.now += 1
        await a.membership.round()
        assert a.membership.acting, f"{a.clock.now - renewed_at:.0f}s after the last renewal"
    a.clock.now = renewed_at + deadline
    assert not a.membership.acting, "at the deadline, on its own clock, with no round at all"
    await a.membership.round()
    assert not a.membership.acting
    assert "replica-a" not in a.membership.members
    leases.before = previous  # the partition heals
    await a.membership.round()
    assert a.membership.acting and a.membership.members == ("replica-a",)


async def test_members_are_the_replicas_seen_renewing_and_never_itself_when_not_acting(
    api: client.ApiClient, leases: FakeLeases
) -> None:
    a = Replica("replica-a", leases, api)
    leases.put_member("replica-b")
    leases.put_member("replica-quiet")
    leases.put(NAMESPACE, "other-env", "replica-x", labels={MEMBER_LABEL: "other"})
    await a.membership.round()
    assert a.membership.members == ("replica-a", "replica-b", "replica-quiet")
    # replica-b renews every round; replica-quiet stops: gone once unchanged for its
    # duration, on our clock.
    for _ in range(8):
        a.clock.now += 2
        leases.put_member("replica-b")
        await a.membership.round()
    assert list(a.membership.members) == ["replica-a", "replica-b"]
    a.fail_renewals()
    a.clock.now += a.settings.replica_renew_deadline_seconds
    leases.put_member("replica-b")
    # Its own Lease is still fresh for the others (it has not run out): it lists it, and
    # still may not count on itself.
    await a.membership.round()
    assert list(a.membership.members) == ["replica-b"]


async def test_membership_lease_names_are_valid_for_any_client_id() -> None:
    names = {
        member_lease_name(ENV, client_id)
        for client_id in ("Pod_Name.1", "pod-name-1", "x" * 300, "ÄÖ ü", "")
    }
    assert len(names) == 5, "distinct client ids, distinct Leases"
    for name in names:
        assert len(name) <= 253 and name == name.lower()
        assert all(c.isalnum() or c in "-." for c in name) and name[-1].isalnum()


async def test_leaving_gives_the_membership_lease_up_and_stops_acting(
    api: client.ApiClient, leases: FakeLeases
) -> None:
    a = Replica("replica-a", leases, api)
    await a.membership.round()
    assert (NAMESPACE, a.membership.name) in leases.store
    await a.membership.leave()
    assert not a.membership.acting
    assert (NAMESPACE, a.membership.name) not in leases.store
    await a.membership.leave()  # already gone: fine


# --- ownership: claims -------------------------------------------------------------------------


async def test_only_the_intended_owner_claims_an_expired_lease(
    api: client.ApiClient, leases: FakeLeases
) -> None:
    a, b = Replica("replica-a", leases, api), Replica("replica-b", leases, api)
    await a.membership.round()
    await b.membership.round()
    members = ("replica-a", "replica-b")
    bases = {**bases_for("replica-a", members, 3), **bases_for("replica-b", members, 3)}
    for name in bases:
        # Held by a live member whose node Lease ran out (its renewals failed).
        leases.put_node_lease(name, "replica-b", age=NODE_LEASE_SECONDS + 1)
    await a.round(bases)
    for name, identity in bases.items():
        mine = intended_owner(identity, members) == "replica-a"
        assert (leases.holder(name) == "replica-a") == mine, name
        assert a.ownership.holds(name) == mine
    claimed = [n for n, i in bases.items() if intended_owner(i, members) == "replica-a"]
    assert sorted(a.gained) == sorted(claimed)


async def test_the_intended_owner_claims_a_released_lease_at_once(
    api: client.ApiClient, leases: FakeLeases
) -> None:
    a = Replica("replica-a", leases, api)
    bases = bases_for("replica-a", ("replica-a",), 2)
    for name in bases:
        leases.put_node_lease(name, None)  # released: renewed just now, no holder
    await a.round(bases)
    assert all(leases.holder(name) == "replica-a" for name in bases)
    assert sorted(a.gained) == sorted(bases)


async def test_a_holder_no_longer_a_member_is_gone_only_once_its_lease_is_quiet(
    api: client.ApiClient, leases: FakeLeases
) -> None:
    a = Replica("replica-a", leases, api)
    quiet = a.settings.replica_lease_seconds
    bases = bases_for("replica-a", ("replica-a",), 2)
    recent, quiet_name = bases
    leases.put_node_lease(recent, "replica-dead", age=quiet - 3)
    leases.put_node_lease(quiet_name, "replica-dead", age=quiet + 1)
    await a.round(bases)
    assert leases.holder(recent) == "replica-dead", "claimed while its holder may still act"
    assert leases.holder(quiet_name) == "replica-a"


async def test_a_fresh_holder_unknown_to_our_member_list_is_never_claimed_from(
    api: client.ApiClient, leases: FakeLeases
) -> None:
    """A replica that just joined and took a base over is in no older member list; its
    Lease is fresh, and that must be enough."""
    a = Replica("replica-a", leases, api)
    bases = bases_for("replica-a", ("replica-a",), 3)
    await a.membership.round()
    for name in bases:
        leases.put_node_lease(name, "replica-new", age=0.5)
    await a.ownership.round(bases)  # replica-new is not in a's member list (listed before)
    assert "replica-new" not in a.membership.members
    assert all(leases.holder(name) == "replica-new" for name in bases)
    assert not any(verb == "patch" for verb, _, _ in leases.writes)


async def test_a_live_members_lease_is_never_claimed_even_by_the_intended_owner(
    api: client.ApiClient, leases: FakeLeases
) -> None:
    a = Replica("replica-a", leases, api)
    leases.put_member("replica-b")
    members = ("replica-a", "replica-b")
    bases = bases_for("replica-a", members, 3)
    for name in bases:
        leases.put_node_lease(name, "replica-b", age=quiet_but_alive(a))
    await a.round(bases)
    assert all(leases.holder(name) == "replica-b" for name in bases)
    assert not a.ownership.held()


def quiet_but_alive(replica: Replica) -> float:
    """A node Lease older than REPLICA_LEASE_SECONDS, not expired: its holder is alive."""
    return replica.settings.replica_lease_seconds + 5


async def test_a_claim_conflict_leaves_the_table_alone(
    api: client.ApiClient, leases: FakeLeases
) -> None:
    a = Replica("replica-a", leases, api)
    [name] = bases_for("replica-a", ("replica-a",), 1)
    bases = {name: name.removeprefix("virtual-node-")}
    leases.put_node_lease(name, "replica-dead", age=NODE_LEASE_SECONDS + 1)
    await a.membership.round()
    await a.ownership._relist()  # the table has the expired one
    before = a.ownership._table[name]

    def someone_else_first(verb: str, namespace: str, lease: str, body: Any) -> None:
        if lease == name and verb == "patch":
            leases.put_node_lease(name, "replica-quick")  # a new resourceVersion

    leases.before = someone_else_first
    await a.ownership.round(bases)
    assert leases.holder(name) == "replica-quick"
    assert a.ownership._table[name] == before, "a lost claim changes nothing we know"
    assert not a.ownership.holds(name) and not a.gained


# --- ownership: hand-over -----------------------------------------------------------------------


async def test_hand_overs_are_limited_per_round_and_stop_acting_before_the_write(
    api: client.ApiClient, leases: FakeLeases
) -> None:
    a = Replica("replica-a", leases, api)
    members = ("replica-a", "replica-d")
    moving = bases_for("replica-d", members, HANDOVERS_PER_ROUND + 5)
    staying = bases_for("replica-a", members, 5)
    bases = {**moving, **staying}
    for name in bases:
        leases.put_node_lease(name, "replica-a")
    await a.round(bases)
    assert sorted(a.ownership.held()) == sorted(bases)
    leases.put_member("replica-d")  # a new replica joins
    acting_at_write: list[bool] = []

    def look(verb: str, namespace: str, name: str, body: Any) -> None:
        if namespace == LEASE_NAMESPACE:
            acting_at_write.append(a.ownership.holds(name))

    leases.before = look
    await a.round(bases)
    handed = [name for name in moving if leases.holder(name) == "replica-d"]
    assert len(handed) == HANDOVERS_PER_ROUND
    assert acting_at_write == [False] * HANDOVERS_PER_ROUND, "still acting while writing"
    assert all(leases.holder(name) == "replica-a" for name in staying)
    await a.round(bases)
    assert all(leases.holder(name) == "replica-d" for name in moving)
    assert sorted(a.ownership.held()) == sorted(staying)


async def test_the_new_owner_acts_once_the_watch_shows_it_the_hand_over(
    api: client.ApiClient, leases: FakeLeases
) -> None:
    a, d = Replica("replica-a", leases, api), Replica("replica-d", leases, api)
    members = ("replica-a", "replica-d")
    moving = bases_for("replica-d", members, 2)
    for name in moving:
        leases.put_node_lease(name, "replica-a")
    await a.round(moving)
    await d.round(moving)
    assert not d.ownership.held() and not d.gained, "a's, until a hands them over"
    await a.round(moving)
    assert not a.ownership.held()
    await d.watch()
    assert sorted(d.ownership.held()) == sorted(moving) == sorted(d.gained)
    assert all(leases.holder(name) == "replica-d" for name in moving)


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


async def test_a_hand_over_waits_for_the_work_in_progress_on_the_base(
    api: client.ApiClient, leases: FakeLeases
) -> None:
    """A step that checked it held the base before the hand-over finishes before the new
    owner is named: the base never has two acting owners."""
    busy = asyncio.Event()
    settling: list[tuple[str, str]] = []

    async def settle(name: str, identity: str) -> None:
        settling.append((name, identity))
        await busy.wait()

    a, name, bases = await one_base_for_a_joiner(api, leases, settle)
    handing = asyncio.create_task(a.round(bases))
    await wait_for(lambda: asyncio.sleep(0, bool(settling)), timeout=2, what="the hand-over")
    assert settling == [(name, bases[name])]
    assert not a.ownership.holds(name), "nothing new starts for it meanwhile"
    assert leases.holder(name) == "replica-a", "not named to the new owner while busy"
    busy.set()
    await handing
    assert leases.holder(name) == "replica-d"


async def test_a_base_still_busy_past_the_bound_stays_for_a_later_round(
    api: client.ApiClient, leases: FakeLeases, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ownership_module, "SETTLE_SECONDS", 0.05)
    free = asyncio.Event()

    async def settle(name: str, identity: str) -> None:
        await free.wait()

    a, name, bases = await one_base_for_a_joiner(api, leases, settle)
    await a.round(bases)
    assert leases.holder(name) == "replica-a"
    assert not a.ownership.holds(name)
    free.set()
    await a.round(bases)  # reads the Leases again (still ours), then hands it over
    assert leases.holder(name) == "replica-d"


# --- ownership: fencing and stale tables -------------------------------------------------------


async def test_after_being_fenced_nothing_is_held_until_the_leases_are_listed_again(
    api: client.ApiClient, leases: FakeLeases
) -> None:
    """A partition: renewals fail, the replica stops acting; meanwhile another replica took
    its base, and this one heard nothing of it. Back, it must not believe its old table."""
    a = Replica("replica-a", leases, api)
    [name] = bases_for("replica-a", ("replica-a",), 1)
    bases = {name: name.removeprefix("virtual-node-")}
    leases.put_node_lease(name, "replica-a")
    await a.round(bases)
    assert a.ownership.holds(name)
    renew = leases.before
    a.fail_renewals()
    for _ in range(int(a.settings.replica_renew_deadline_seconds)):
        a.clock.now += 1
        await a.round(bases)
    assert not a.ownership.holds(name) and not a.ownership.may_write_node(name, bases[name])
    leases.put_node_lease(name, "replica-b")  # taken over; a's watch is cut off
    leases.before = renew
    await a.membership.round()
    assert a.membership.acting
    assert not a.ownership.holds(name), "acting on the table it had before the partition"
    assert not a.ownership.may_write_node(name, bases[name])
    await a.ownership.round(bases)  # listed again
    assert not a.ownership.holds(name)
    assert a.ownership._table[name].holder == "replica-b"


async def test_release_all_writes_holder_none_renewed_now(
    api: client.ApiClient, leases: FakeLeases
) -> None:
    a = Replica("replica-a", leases, api)
    bases = bases_for("replica-a", ("replica-a",), 3)
    for name in bases:
        leases.put_node_lease(name, "replica-a", age=8)
    leases.put_node_lease("virtual-node-someone-elses", "replica-b")
    await a.round(bases)
    await a.ownership.release_all()
    for name in bases:
        spec = leases.body(name)["spec"]
        assert "holderIdentity" not in spec
        renewed = membership_module.parse_time(spec["renewTime"])
        assert renewed is not None and now_utc() - renewed < datetime.timedelta(seconds=2)
    assert leases.holder("virtual-node-someone-elses") == "replica-b"
    assert not a.ownership.held()


async def test_holds_and_may_write_node(api: client.ApiClient, leases: FakeLeases) -> None:
    a = Replica("replica-a", leases, api)
    leases.put_member("replica-b")
    members = ("replica-a", "replica-b")
    [mine] = bases_for("replica-a", members, 1)
    [theirs] = bases_for("replica-b", members, 1, start=100)
    [new_mine] = bases_for("replica-a", members, 1, start=200)
    [new_theirs] = bases_for("replica-b", members, 1, start=300)
    leases.put_node_lease(mine, "replica-a")
    leases.put_node_lease(theirs, "replica-b")

    def identity(name: str) -> str:
        return name.removeprefix("virtual-node-")

    assert not a.ownership.holds(mine), "not a member yet, nothing listed"
    assert not a.ownership.may_write_node(new_mine, identity(new_mine))
    await a.round({})
    assert a.ownership.holds(mine) and a.ownership.may_write_node(mine, identity(mine))
    assert not a.ownership.holds(theirs) and not a.ownership.may_write_node(
        theirs, identity(theirs)
    )
    # No Lease yet (a new base): its intended owner writes the node, nobody holds it yet.
    assert a.ownership.may_write_node(new_mine, identity(new_mine))
    assert not a.ownership.holds(new_mine)
    assert not a.ownership.may_write_node(new_theirs, identity(new_theirs))
    assert a.ownership.held() == [mine]
    # A renewal that found another holder: stop at once, before the watch says who.
    a.ownership.lost(mine)
    assert not a.ownership.holds(mine) and not a.ownership.may_write_node(mine, identity(mine))
    a.ownership.lost(theirs)  # not ours: nothing to lose
    assert a.ownership._table[theirs].holder == "replica-b"
    # Fenced: nothing at all.
    await a.watch(mine)
    assert a.ownership.holds(mine)
    a.clock.now += a.settings.replica_renew_deadline_seconds
    assert not a.ownership.holds(mine)
    assert not a.ownership.may_write_node(new_mine, identity(new_mine))
    assert a.ownership.held() == []


async def test_a_renewal_that_finds_another_holder_loses_the_base_at_once(
    api: client.ApiClient, leases: FakeLeases
) -> None:
    a = Replica("replica-a", leases, api)
    [name] = bases_for("replica-a", ("replica-a",), 1)
    leases.put_node_lease(name, "replica-a")
    await a.round({})
    syncer = a_node_syncer(a, api, leases)
    syncer.registry.adopt(name.removeprefix("virtual-node-"), heartbeat().status, name)
    await syncer._renew_lease(name)
    assert leases.holder(name) == "replica-a"
    leases.put_node_lease(name, "replica-b")  # taken over while a was away
    await syncer._renew_lease(name)
    assert leases.holder(name) == "replica-b", "a renewal took the base back"
    assert not a.ownership.holds(name)


def a_node_syncer(replica: Replica, api: client.ApiClient, leases: FakeLeases) -> NodeSyncer:
    registry = BaseRegistry(replica.settings)
    syncer = NodeSyncer(replica.settings, registry, api, owner=replica.ownership)
    syncer.coordination = leases  # type: ignore[assignment]
    syncer.core = FakeCluster([])  # type: ignore[assignment]
    for (namespace, name), _ in leases.store.items():
        if namespace == LEASE_NAMESPACE:
            syncer.existing[name] = AppliedNode(f"uid-{name}", (), ())
    return syncer


async def test_a_node_sync_of_a_base_with_no_known_lease_makes_the_lease(
    api: client.ApiClient, leases: FakeLeases
) -> None:
    """A base this replica should own whose node has no Lease (the Lease write failed after
    the node was made, or someone deleted it): its next node sync makes the Lease."""
    a = Replica("replica-a", leases, api)
    [name] = bases_for("replica-a", ("replica-a",), 1)
    bases = {name: name.removeprefix("virtual-node-")}
    syncer = a_node_syncer(a, api, leases)
    syncer.registry.adopt(bases[name], heartbeat().status, name)
    syncer.existing[name] = AppliedNode(f"uid-{name}", (), ())
    await a.round(bases)
    assert not a.ownership.holds(name)
    await syncer.sync(name)
    assert leases.holder(name) == "replica-a" and a.ownership.holds(name)


async def test_a_base_taken_over_has_its_node_read_not_created_again(
    api: client.ApiClient, leases: FakeLeases
) -> None:
    """Its previous owner made the node: the new owner reads it, rather than a create
    bound to fail with 409 followed by the read."""
    a = Replica("replica-a", leases, api)
    [name] = bases_for("replica-a", ("replica-a",), 1)
    identity = name.removeprefix("virtual-node-")
    leases.put_node_lease(name, "replica-gone", age=NODE_LEASE_SECONDS + 1)  # ran out
    syncer = a_node_syncer(a, api, leases)
    syncer.existing.clear()  # made by replica-gone, not by this process
    syncer.registry.adopt(identity, heartbeat().status, name)
    await a.round({name: identity})
    assert a.ownership.holds(name)
    cluster = cast(FakeCluster, syncer.core)
    read = cluster.read_node
    reads: list[str] = []

    async def read_node(node: str) -> dict[str, Any]:
        reads.append(node)
        return await read(node)

    cluster.read_node = read_node  # type: ignore[method-assign,assignment]
    await syncer.sync(name)
    assert reads[:1] == [name]
    assert ("create node", name) not in cluster.log, cluster.log
    assert syncer.existing[name].uid == f"uid-{name}"


async def test_a_restarted_replica_with_its_old_client_id_adopts_the_bases_it_held(
    api: client.ApiClient, leases: FakeLeases
) -> None:
    """kill -9 and a restart under the same CLIENT_ID (the pod's name): its Leases are still
    its own, so it holds them at once and adopts each base (OwnershipChanged)."""
    first = Replica("replica-a", leases, api)
    bases = bases_for("replica-a", ("replica-a",), 3)
    for name in bases:
        leases.put_node_lease(name, "replica-a")
    await first.round(bases)
    again = Replica("replica-a", leases, api)  # a new process: a fresh table and clock
    await again.round(bases)
    assert sorted(again.ownership.held()) == sorted(bases) == sorted(again.gained)
    assert not any(verb == "patch" and name in bases for verb, name, _ in leases.writes)


# --- fencing, end to end through the data path -------------------------------------------------


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

        async def slow_create_node(body: dict[str, Any]) -> Any:
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


@pytest.fixture
async def sharded(api: client.ApiClient, leases: FakeLeases) -> AsyncIterator[ShardedWired]:
    made = ShardedWired(api, leases)
    made.wired.start()
    await made.wired.say(BrokerConnected())
    try:
        yield made
    finally:
        await made.wired.stop()


async def test_a_fenced_replica_sends_no_command_and_writes_no_pod_nor_node(
    sharded: ShardedWired,
) -> None:
    wired = sharded.wired
    name = wired.registry.node_name_for(IDENTITY)
    await sharded.replicas_round()  # a member; the (empty) Leases listed
    await wired.say(heartbeat(), BaseInventory(IDENTITY, ()))
    await wired.until_logged(("create node", name))
    await wired.until("the node's Lease, held", lambda: sharded.ownership.holds(name))
    await sharded.settle()
    before = len(wired.log)
    writes = len(sharded.leases.writes)
    events = len(wired.recorder.recorded)
    # Past the renew deadline, and the replicas task saw it (as it does every 2 s).
    sharded.leases.before = partition(sharded.membership.name)
    sharded.clock.now += sharded.settings.replica_renew_deadline_seconds
    await sharded.replicas_round()
    assert not sharded.membership.acting
    # Everything that would make a working replica act:
    await wired.say(
        ModulePodChanged("ADDED", module_pod("p1", "1", name)),
        BaseInventory(IDENTITY, ()),
        heartbeat("base-2"),  # a new base: its node would be created
        BaselineQuery("base-3", heartbeat("base-3").status.base_metadata),
    )
    await sharded.settle()
    wired.clock.now += 25  # past BASE_NOT_READY_SECONDS: the node would go NotReady
    await wired.say(wired.tick())
    await sharded.settle()
    await wired.nodes.renew_leases()
    await sharded.settle()
    assert wired.log[before:] == [], "a fenced replica acted"
    assert sharded.leases.writes[writes:] == [], "a fenced replica wrote a Lease"
    assert wired.recorder.recorded[events:] == [], "a fenced replica recorded Events"
    # Back: the Leases listed again, the base adopted from a fresh inventory, and now it acts.
    sharded.leases.before = None
    await wired.say(heartbeat())  # heard again: Ready
    queries = wired.log.count(("query inventory", IDENTITY))
    await sharded.replicas_round()
    await wired.until(
        "a fresh inventory query",
        lambda: wired.log.count(("query inventory", IDENTITY)) > queries,
    )
    await wired.say(BaseInventory(IDENTITY, ()))
    await wired.until_logged(("install", "biz1:1"))


def partition(member_lease: str) -> Hook:
    def before(verb: str, namespace: str, name: str, body: Any) -> None:
        if name == member_lease:
            raise ApiException(status=503, reason="partitioned")

    return before


# --- Found in review, fixed since (f7ad36e): kept as regression tests ----------------------


async def test_a_hand_over_that_fails_with_a_server_error_leaves_the_base_owned(
    api: client.ApiClient, leases: FakeLeases
) -> None:
    """Was: `_hand_over` marks the base as the new owner's before writing, and only a
    404/409 makes the table untrusted. Any other failure (a 500, a timeout) leaves the
    table saying "the new owner's" while the Lease still names this replica: this replica
    stops acting and renewing, the new owner never hears of it, and nobody claims it
    (its holder is a live member) until the node Lease runs out — the node goes NotReady."""
    a, d = Replica("replica-a", leases, api), Replica("replica-d", leases, api)
    members = ("replica-a", "replica-d")
    [name] = bases_for("replica-d", members, 1)
    bases = {name: name.removeprefix("virtual-node-")}
    leases.put_node_lease(name, "replica-a")
    await a.round(bases)
    await d.round(bases)
    failed: list[str] = []

    def server_error_once(verb: str, namespace: str, lease: str, body: Any) -> None:
        if lease == name and not failed:
            failed.append(lease)
            raise ApiException(status=500, reason="etcdserver: request timed out")

    leases.before = server_error_once
    with pytest.raises(ApiException):
        await a.round(bases)  # the runtime's loop logs this and goes on
    for _ in range(3):
        await a.round(bases)
        await d.round(bases)
        await d.watch()
    owner = leases.holder(name)
    assert owner == "replica-d" or a.ownership.holds(name), (
        f"the Lease names {owner}, but neither replica acts on it or renews it"
    )


async def test_a_late_watch_event_does_not_give_back_a_base_just_handed_over(
    api: client.ApiClient, leases: FakeLeases
) -> None:
    """Was: `lease_seen` takes any watch event, even one older than this replica's own
    last write. A watch lagging behind the hand-over's answer (the old renewal arriving
    after it) makes this replica hold the base again, next to its new owner."""
    a = Replica("replica-a", leases, api)
    leases.put_member("replica-d")
    members = ("replica-a", "replica-d")
    [name] = bases_for("replica-d", members, 1)
    bases = {name: name.removeprefix("virtual-node-")}
    leases.put_node_lease(name, "replica-a")
    old_event = leases.body(name)
    await a.round(bases)  # hands it over
    assert leases.holder(name) == "replica-d" and not a.ownership.holds(name)
    await a.ownership.lease_seen(name, old_event)  # the lagging watch
    assert not a.ownership.holds(name), "holds a base the Lease gives to replica-d"


async def test_a_deleted_node_lease_is_made_again_while_the_base_beats_unchanged(
    sharded: ShardedWired,
) -> None:
    """Was: a node Lease deleted under a live base (kubectl delete, or the garbage
    collector: a node deleted by hand is recreated while its old Lease still exists, the
    renewal succeeds on that old Lease, whose ownerReference names the old node's uid, and
    the collector deletes it) is made again only by a node sync of the base, and nothing
    runs one: `Ownership.round` skips bases with no Lease, `renew_leases` renews only held
    ones, and an unchanged heartbeat syncs nothing. The base has no owner (no commands, no
    status) and its node goes NotReady after the node-monitor grace period."""
    wired = sharded.wired
    name = wired.registry.node_name_for(IDENTITY)
    await sharded.replicas_round()
    await wired.say(heartbeat())
    await wired.until("the node's Lease, held", lambda: sharded.ownership.holds(name))
    await sharded.settle()
    sharded.leases.store.pop((LEASE_NAMESPACE, name))
    await sharded.ownership.lease_gone(name)  # the watch says DELETED
    for _ in range(3):  # what runs every few seconds: heartbeats, rounds, renewals, ticks
        wired.clock.now += 2
        await wired.say(heartbeat(), wired.tick())
        await sharded.replicas_round()
        await wired.nodes.renew_leases()
        await sharded.settle()
    assert sharded.leases.holder(name) == sharded.settings.client_id, (
        "a live base left with no node Lease and no owner"
    )


async def test_a_new_bases_first_inventory_query_goes_out_once_its_node_is_created(
    sharded: ShardedWired,
) -> None:
    """Was: the heartbeat that makes a new base's node asks for its inventory at once,
    but the query's worker finds no Lease yet (not held) and drops it; creating the Lease
    is no OwnershipChanged. The first inventory waits for INVENTORY_POLL_SECONDS (15 s),
    and so do the installs on the new base (it was immediate with one replica)."""
    wired = sharded.wired
    name = wired.registry.node_name_for(IDENTITY)
    await sharded.replicas_round()
    await wired.say(heartbeat())
    await wired.until_logged(("create node", name))
    await wired.until("the new base's Lease held", lambda: sharded.ownership.holds(name))
    await sharded.settle()
    assert ("query inventory", IDENTITY) in wired.log, (
        "no inventory query for the new base until the periodic poll"
    )


async def test_a_taken_over_base_is_planned_from_an_inventory_read_after_the_take_over(
    sharded: ShardedWired,
) -> None:
    """Was: `Dispatcher._adopt` asks for the inventory and plans the base at once, from
    the inventory this replica overheard while another replica owned the base. Commands the
    old owner sent and the base has not answered yet are not in it (a restarted operator,
    by contrast, knows no inventory and waits): here the old owner's install of biz1:2 is
    sent a second time."""
    wired = sharded.wired
    name = wired.registry.node_name_for(IDENTITY)
    sharded.leases.put_member("replica-b")
    sharded.leases.put_node_lease(name, "replica-b")
    await sharded.replicas_round()
    await wired.say(heartbeat())
    await wired.say(
        BaseInventory(IDENTITY, simple(("biz1:1", BizState.ACTIVATED))),  # overheard
        ModulePodChanged("ADDED", module_pod("v1", "1", name, ready=True)),
        ModulePodChanged("ADDED", module_pod("v2", "2", name, created="11:00")),
    )
    await sharded.settle()
    assert not any(kind == "install" for kind, _ in wired.log), "replica-b's base"
    # replica-b sent "install biz1:2" and died: its membership runs out, its Lease is quiet.
    sharded.leases.store.pop((NAMESPACE, member_lease_name(ENV, "replica-b")))
    quiet = sharded.settings.replica_lease_seconds + 1
    sharded.leases.put_node_lease(name, "replica-b", age=quiet)
    await sharded.ownership.lease_seen(name, sharded.leases.body(name))  # the watch
    await sharded.replicas_round()  # claims it: OwnershipChanged
    await wired.until("the base held", lambda: sharded.ownership.holds(name))
    await wired.until_logged(("query inventory", IDENTITY))
    await sharded.settle()
    assert ("install", "biz1:2") not in wired.log, (
        "installed from an overheard inventory, before the base said what it runs"
    )


async def test_a_member_whose_clock_lags_is_still_live_while_it_renews(
    api: client.ApiClient, leases: FakeLeases, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was: liveness is judged by comparing the renewTime another replica wrote (its
    wall clock) with this replica's wall clock. A skew bigger than REPLICA_LEASE_SECONDS -
    REPLICA_RENEW_DEADLINE_SECONDS (5 s by default) drops a replica that renews every 2 s
    from the others' member lists while it still acts: they then take its bases (their
    node Leases look quiet too) — two acting owners until its next node-Lease renewal
    fails. client-go's leader election judges expiry by when *it* observed a change of the
    record, on its own clock, which tolerates any skew."""
    a = Replica("replica-a", leases, api)
    lag = a.settings.replica_lease_seconds + 5  # its clock is 20 s behind ours
    leases.put_member("replica-slow", age=lag)  # renewed just now, by its clock
    await a.membership.round()
    for _ in range(3):  # it renews every 2 s, and we see each renewal
        await asyncio.sleep(0)
        a.clock.now += 2
        leases.put_member("replica-slow", age=lag)
        await a.membership.round()
        assert "replica-slow" in a.membership.members, "a live replica dropped for its clock"


# --- Problems still open (these fail on the code as it is) ------------------------------------


async def test_a_replica_frozen_past_its_deadline_reads_the_leases_again_before_acting(
    api: client.ApiClient, leases: FakeLeases
) -> None:
    """PROBLEM: a process frozen past its deadline (SIGSTOP, a GC or VM pause, a starved
    CPU) runs no round meanwhile; its first round after it resumes renews at once, so
    `acting` is True again. `Ownership.round` now sees the new membership epoch and reads
    the Leases again, but `holds()` does not look at the epoch: from the renewal's answer
    until then (the membership's list call, then the relist, both awaited) every part that
    asks `holds()` (module sync workers, lease renewals, polls, the dispatcher) acts on
    the table of before the freeze, for a base another replica took over meanwhile."""
    a = Replica("replica-a", leases, api)
    [name] = bases_for("replica-a", ("replica-a",), 1)
    bases = {name: name.removeprefix("virtual-node-")}
    leases.put_node_lease(name, "replica-a")
    await a.round(bases)
    assert a.ownership.holds(name)
    a.clock.now += 60  # frozen for a minute: no round ran
    leases.put_node_lease(name, "replica-b")  # taken over meanwhile
    await a.membership.round()  # the first thing it does when it resumes
    assert a.membership.acting
    assert not a.ownership.holds(name), "acts on a base taken over while it was frozen"
    assert not a.ownership.may_write_node(name, bases[name])
    await a.ownership.round(bases)
    assert a.ownership._table[name].holder == "replica-b", "the Leases were not read again"


def moving_to_a_dead_member() -> dict[str, str]:
    """A base replica-d should own among the live replicas (b, d), but replica-dead among
    (b, d, dead)."""
    number = 0
    while True:
        identity = f"base-{number:05d}"
        live = intended_owner(identity, ("replica-b", "replica-d"))
        stale = intended_owner(identity, ("replica-b", "replica-d", "replica-dead"))
        if live == "replica-d" and stale == "replica-dead":
            return {node(identity): identity}
        number += 1


async def test_a_new_replica_hands_no_base_to_a_member_whose_lease_ran_out_before_it_looked(
    api: client.ApiClient, leases: FakeLeases
) -> None:
    """PROBLEM (since members are judged by observed renewals, f7ad36e): a replica counts
    every membership Lease it sees for the first time as live for a full
    REPLICA_LEASE_SECONDS, however long ago it was renewed. The Lease of a replica that
    was killed (kill -9, OOM, a node lost) is never deleted, so a replica that starts later
    (a joining one, every pod of a rolling update) counts the dead one as a member for its
    first 15 s, and hands it bases: their Lease then names a dead holder, nobody acts on
    them or renews them until the dead one is judged gone and the Lease is quiet (about
    15 s more). Seen end to end in tests/e2e/test_replicas.py (replica-d hands a base to
    the killed replica-a). Suggested: on first sight, count a member live only if its
    renewTime + duration is still ahead of our wall clock (a skewed live member is then
    counted from its next observed renewal), or never hand over to a member not yet seen
    renewing; and delete membership Leases seen unchanged for many durations."""
    d = Replica("replica-d", leases, api)
    leases.put_member("replica-b")
    leases.put_member("replica-dead", age=60)  # killed a minute ago
    bases = moving_to_a_dead_member()
    [name] = bases
    leases.put_node_lease(name, "replica-d")  # handed to d by b, its intended owner
    await d.round(bases)
    assert leases.holder(name) == "replica-d", (
        f"handed to {leases.holder(name)}, dead for a minute: members {d.membership.members}"
    )


async def test_the_lease_of_a_dead_base_whose_holder_died_too_is_taken_and_cleaned_up(
    api: client.ApiClient, leases: FakeLeases
) -> None:
    """PROBLEM: `Ownership.round` looks only at the bases in this replica's registry. A base
    that goes silent, and whose owner is killed before it deleted the node (between
    BASE_DEAD_SECONDS - REPLICA_LEASE_SECONDS and BASE_DEAD_SECONDS after the silence
    began), is forgotten by every other replica before its intended owner claims it: nobody
    ever holds its Lease again, so nobody deletes the node (only the holder deletes), which
    stays NotReady with its pods for ever (until a replica restarts and adopts it, and even
    then only if that replica is its intended owner). Suggested: claim every node Lease of
    the env whose holder is gone (the table has them all; the identity is on the node, or
    hash the node name), so that the holder's node sync deletes the node of a base it does
    not know."""
    b, c = Replica("replica-b", leases, api), Replica("replica-c", leases, api)
    name = node("base-silent")
    leases.put_node_lease(name, "replica-dead", age=NODE_LEASE_SECONDS + 1)
    for _ in range(2):
        await b.round({})  # the base is in neither registry any more
        await c.round({})
    assert leases.holder(name) in ("replica-b", "replica-c"), (
        "the Lease of a dead base stays with a dead replica: its node is never deleted"
    )
