"""Regression tests of sharding problems found in reviews (module_controller/shards/), on
fake Leases."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller.inbox import ModulePodChanged
from module_controller.protocol.states import BizState
from module_controller.registry import BaseRegistry
from module_controller.settings import Settings
from module_controller.shards.assignment import intended_owner
from module_controller.shards.membership import member_lease_name
from module_controller.tunnels.events import BaseInventory
from module_controller.vnode_manifest import (
    LEASE_NAMESPACE,
)
from module_controller.vnodes import NodeSyncer
from tests.unit.modules_support import simple
from tests.unit.shards_support import (
    ENV,
    NAMESPACE,
    NODE_LEASE_SECONDS,
    FakeLeases,
    Replica,
    ShardedWired,
    bases_for,
    node,
    one_held_base,
)
from tests.unit.wiring_support import (
    IDENTITY,
    FakeCluster,
    heartbeat,
    module_pod,
)

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
    await a.ownership.lease_seen(old_event)  # the lagging watch
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
    await sharded.ownership.lease_gone({"metadata": {"name": name}})  # the watch: DELETED
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
    await sharded.ownership.lease_seen(sharded.leases.body(name))  # the watch
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


# --- Found in review, fixed since: kept as regression tests -----------------------------------


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
    a, name, bases = await one_held_base(api, leases)
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


async def test_a_node_create_that_conflicts_then_reads_404_is_tried_again(
    api: client.ApiClient,
) -> None:
    """create 409 (the node was there), then read 404 (deleted since): the 404 is raised,
    so the work queue tries again with backoff, and the base gets its node."""
    settings = Settings()
    registry = BaseRegistry(settings)
    syncer = NodeSyncer(settings, registry, api)
    cluster = FakeCluster([])
    syncer.core = cluster  # type: ignore[assignment]
    syncer.coordination = cluster  # type: ignore[assignment]
    beat = heartbeat("base-x")
    registry.adopt("base-x", beat.status, "virtual-node-base-x")
    name = "virtual-node-base-x"

    async def create_conflict(body: dict[str, Any], **_: Any) -> Any:
        raise ApiException(status=409)  # an old node, being deleted

    async def read_gone(node: str) -> dict[str, Any]:
        raise ApiException(status=404)  # gone by now

    cluster.create_node = create_conflict  # type: ignore[method-assign]
    cluster.read_node = read_gone  # type: ignore[method-assign,assignment]
    retried = False
    try:
        await syncer.sync(name)
    except ApiException:
        retried = True  # the work queue retries with back-off
    retried = retried or name in syncer.queue._pending or name in syncer.queue._retries
    assert retried, "the node of a live base is never created: nobody tries again"


async def test_a_base_that_leaves_while_its_node_is_created_leaves_no_node(
    sharded: ShardedWired,
) -> None:
    """Found by the e2e fuzz test: a base said DEACTIVATED right after its first heartbeat,
    while its node was being created. The sync after the create found no base and deleted
    the node only if this replica held its Lease, which was not written yet: the node was
    forgotten, not deleted, and stayed (no Lease, NodeStatusUnknown) for good."""
    wired = sharded.wired
    name = wired.registry.node_name_for(IDENTITY)
    await sharded.replicas_round()
    creating, go_on = asyncio.Event(), asyncio.Event()
    create_node = wired.cluster.create_node

    async def held_create(body: dict[str, Any], **_: Any) -> Any:
        creating.set()
        await go_on.wait()
        return await create_node(body)

    wired.cluster.create_node = held_create  # type: ignore[method-assign]
    await wired.say(heartbeat())
    await asyncio.wait_for(creating.wait(), 5)
    leaving = heartbeat()
    leaving.status.state = BizState.DEACTIVATED
    await wired.say(leaving)
    go_on.set()
    await wired.until_logged(("create node", name))
    await sharded.settle()
    assert name not in wired.cluster.nodes, "the node of a base gone outlived it"
    assert sharded.leases.holder(name) is None
