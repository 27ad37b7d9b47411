"""Fencing of bases sharded over replicas: stale tables, and end to end through the data
path (dispatcher, module sync, node sync), on fake Leases (module_controller/shards/)."""

from __future__ import annotations

import datetime
from typing import Any, cast

from kubernetes_asyncio import client

from module_controller.inbox import ModulePodChanged
from module_controller.shards import membership as membership_module
from module_controller.tunnels.events import BaseInventory, BaselineQuery
from module_controller.vnode_manifest import (
    AppliedNode,
    now_utc,
)
from tests.unit.shards_support import (
    NODE_LEASE_SECONDS,
    FakeLeases,
    Replica,
    ShardedWired,
    a_node_syncer,
    bases_for,
    one_held_base,
    partition,
)
from tests.unit.wiring_support import (
    IDENTITY,
    FakeCluster,
    heartbeat,
    module_pod,
)

# --- ownership: fencing and stale tables -------------------------------------------------------


async def test_after_being_fenced_nothing_is_held_until_the_leases_are_listed_again(
    api: client.ApiClient, leases: FakeLeases
) -> None:
    """A partition: renewals fail, the replica stops acting; meanwhile another replica took
    its base, and this one heard nothing of it. Back, it must not believe its old table."""
    a, name, bases = await one_held_base(api, leases)
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
    # Whose messages it leaves undecoded: a Lease another replica holds, nothing else.
    assert a.ownership.held_by_another(theirs)
    assert not a.ownership.held_by_another(mine)
    assert not a.ownership.held_by_another(new_theirs), "no Lease yet: nobody's"
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
