"""Membership, ownership and hand-over of bases sharded over replicas
(module_controller/shards/), on fake Leases (tests/unit/shards_support.py)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from kubernetes_asyncio import client

from module_controller.shards import ownership as ownership_module
from module_controller.shards.assignment import intended_owner
from module_controller.shards.membership import MEMBER_LABEL, member_lease_name
from module_controller.shards.ownership import HANDOVERS_PER_ROUND
from module_controller.vnode_manifest import (
    LEASE_NAMESPACE,
)
from module_controller.vnodes import NodeSyncer
from tests.unit.shards_support import (
    ENV,
    NAMESPACE,
    NODE_LEASE_SECONDS,
    FakeLeases,
    Replica,
    a_node_syncer,
    bases_for,
    one_base_for_a_joiner,
)
from tests.unit.wiring_support import (
    FakeCluster,
    heartbeat,
)
from tests.waiting import wait_for

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
    gained = len(a.gained)
    await a.round(bases)
    assert leases.holder(name) == "replica-a"
    assert a.ownership.holds(name), "still ours, and only this base was held back"
    assert a.gained[gained:] == [name], "looked at again, afresh"
    free.set()
    await a.round(bases)  # hands it over this time
    assert leases.holder(name) == "replica-d"


async def test_a_node_sync_in_flight_during_the_settle_neither_renews_nor_takes_the_base_back(
    api: client.ApiClient,
    leases: FakeLeases,
) -> None:
    """The settle waits for a node sync that started before the hand-over; that sync must
    not renew the Lease being handed over (its renewal would put this replica back as the
    holder in its table, and make the hand-over's write fail)."""
    syncers: list[NodeSyncer] = []

    async def settle(name: str, identity: str) -> None:
        await syncers[0].queue.settled(name)

    a, name, bases = await one_base_for_a_joiner(api, leases, settle)
    syncer = a_node_syncer(a, api, leases)
    syncers.append(syncer)
    syncer.registry.adopt(bases[name], heartbeat(bases[name]).status, name)
    cluster = cast(FakeCluster, syncer.core)
    in_patch = asyncio.Event()
    release = asyncio.Event()
    patch_status = cluster.patch_node_status

    async def slow_patch_node_status(node: str, body: Any, **_: Any) -> None:
        in_patch.set()
        await release.wait()
        await patch_status(node, body)

    cluster.patch_node_status = slow_patch_node_status  # type: ignore[method-assign,assignment]
    syncer.start()
    try:
        syncer.queue.add(name)  # a node sync that checked it may write the node
        await asyncio.wait_for(in_patch.wait(), 2)
        handing = asyncio.create_task(a.round(bases))
        await wait_for(
            lambda: asyncio.sleep(0, not a.ownership.holds(name)), timeout=2, what="the marker"
        )
        release.set()
        await asyncio.wait_for(handing, 5)
        renewed = [b for verb, n, b in leases.writes if n == name and isinstance(b, list)]
        assert not renewed, f"renewed the Lease it was handing over; gained again: {a.gained}"
        assert leases.holder(name) == "replica-d", "the hand-over was lost to our own renewal"
    finally:
        await syncer.stop()


async def test_one_base_busy_past_the_settle_bound_holds_back_only_that_base(
    api: client.ApiClient,
    leases: FakeLeases,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ownership_module, "SETTLE_SECONDS", 0.05)
    free = asyncio.Event()

    async def settle(name: str, identity: str) -> None:
        await free.wait()

    a, moving, bases = await one_base_for_a_joiner(api, leases, settle)
    staying = bases_for("replica-a", ("replica-a", "replica-d"), 3, start=500)
    for name in staying:
        leases.put_node_lease(name, "replica-a")
    bases = {**bases, **staying}
    await a.ownership._relist()
    assert all(a.ownership.holds(name) for name in staying)
    await a.round(bases)  # the moving base is busy past the bound
    assert leases.holder(moving) == "replica-a"
    assert [n for n in staying if not a.ownership.holds(n)] == [], (
        "bases not being handed over stopped for a busy one"
    )
    free.set()


async def test_the_membership_lease_of_a_replica_dead_long_ago_is_deleted(
    api: client.ApiClient, leases: FakeLeases
) -> None:
    """A killed replica never deletes its own Lease: the others do once it has been quiet
    for three durations, and count it out at once; a recent one stays, counted out too."""
    leases.put_member("replica-ancient", age=100, duration=15)
    leases.put_member("replica-recent", age=20, duration=15)
    a = Replica("replica-a", leases, api)
    await a.round({})
    deleted = [name for kind, name, _ in leases.writes if kind == "delete"]
    assert deleted == [member_lease_name(ENV, "replica-ancient")]
    assert (NAMESPACE, member_lease_name(ENV, "replica-recent")) in leases.store
    assert a.membership.members == ("replica-a",)


async def test_a_renewal_answered_as_json_is_learnt_without_the_clients_serializer(
    api: client.ApiClient, leases: FakeLeases, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The renewal path hands the API server's JSON over: walking it through the client's
    # serializer again cost a sixth of each renewal (100 a second at 1,000 bases).
    replica = Replica("replica-a", leases, api)
    await replica.round({})
    walked: list[object] = []
    monkeypatch.setattr(api, "sanitize_for_serialization", walked.append)
    body = {
        "metadata": {"name": "virtual-node-b1", "resourceVersion": "7"},
        "spec": {"holderIdentity": "replica-a", "renewTime": "2026-12-02T10:00:00.000000Z"},
    }
    await replica.ownership.lease_written("virtual-node-b1", body)
    assert walked == []
    assert replica.ownership.holds("virtual-node-b1")
