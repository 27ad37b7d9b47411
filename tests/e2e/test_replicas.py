"""Bases sharded over three, then four, operator replicas on Leases (issue 12), end to end.

Three operator processes (CLIENT_IDs replica-a, -b, -c) share thirty simulated bases and a
thirty-replica module Deployment, one pod per base. The bases' identities are chosen so the
rendezvous hashing gives each replica ten, and a fourth replica (replica-d) three of them,
one from each: the test knows every intended owner in advance. A monitor reads the env's
node Leases, its nodes and its module pods every half second for the whole test, and each
live replica's `module_controller_bases_owned`; it records any node or pod not Ready once
the release is done (but what a rolling update must do: see pod_problems), two Ready pods
on one base, any Lease held by an unknown or a killed holder, and the oldest node Lease
renewal it saw. Then, in turn: kill -9 of replica-a; SIGSTOP of replica-b past its
membership Lease, then SIGCONT; replica-d joins; replica-c is killed and started again at
once under the same CLIENT_ID. After each, the bases are held by their intended owners
(whose gauges say so), no base received an install or an uninstall, no pod or node went
NotReady, the nodes and pods are the same objects, and no replica logged a command, a pod
status write or a node write other than refreshing a node it adopted. Last, replica-b is
killed and at once, before anyone takes its bases over, the Deployment is rolled to a new
module version: its bases are taken over within TAKEOVER_SECONDS, the rollout completes
(every pod of the new version Ready, one on each base, which runs that version alone),
every base received exactly one install of the new version and one uninstall of the old
(nothing re-sent by the takeover), on every base the old pod went NotReady (or away)
before the new one went Ready, no node went NotReady nor was replaced, and each replica's
installs, uninstalls and pod writes were for bases it owned. What goes wrong in a step is
reported at the end, so the later steps still run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

import pytest
from kubernetes_asyncio import client

from module_controller.shards.membership import MEMBER_LABEL
from module_controller.testbed.kube_reads import is_ready, is_ready_and_untainted
from module_controller.vnode_manifest import ENV_LABEL
from tests.e2e.conftest import OPERATOR_TIMINGS, BaseFactory, OperatorFactory
from tests.e2e.modules_support import (
    PodHistory,
    deployment,
    manifest,
    modules_of,
    set_modules,
    wait_pods,
)
from tests.e2e.replicas_fleet import APP, BASES, FIRST, MONITOR_SECONDS, PER_REPLICA, Fleet, Monitor
from tests.e2e.replicas_support import (
    COMMAND_NAMES,
    Update,
    choose_identities,
    late_handovers,
    version_of,
)
from tests.waiting import wait_for

pytestmark = [pytest.mark.usefixtures("env_nodes_cleanup"), pytest.mark.timeout(300)]

JOINER = "replica-d"
TAKEOVER_SECONDS = 20.0  # the bound: a dead replica's bases owned by others
REPLICA_LEASE_SECONDS = float(OPERATOR_TIMINGS["REPLICA_LEASE_SECONDS"])
LEASE_RENEW_SECONDS = float(OPERATOR_TIMINGS["LEASE_RENEW_SECONDS"])
STOPPED_SECONDS = REPLICA_LEASE_SECONDS + 4  # a partition longer than the membership Lease
OLD, NEW = "1.0.0", "2.0.0"  # the module's version released, and the one rolled out
ROLLED = [f"installBiz biz1:{NEW}", f"uninstallBiz biz1:{OLD}"]  # what each base gets


async def test_bases_sharded_over_replicas_survive_kill_stop_and_a_joining_replica(
    k8s_api: client.ApiClient,
    namespace: str,
    run_operator: OperatorFactory,
    start_base: BaseFactory,
    test_env: str,
    node_monitor_grace_period: int,
) -> None:
    began = time.monotonic()
    timings: list[str] = []

    def took(step: str) -> None:
        timings.append(f"{step} {time.monotonic() - began:.1f}s")

    fleet = Fleet(k8s_api, run_operator, namespace, test_env)
    for name in FIRST:
        fleet.start_replica(name)
    for identity in choose_identities(test_env, FIRST, JOINER, PER_REPLICA):
        fleet.bases.append(await start_base(identity=identity))
    names = [fleet.node_of(base) for base in fleet.bases]
    monitor = Monitor(k8s_api, test_env, namespace, fleet.replicas, names)
    fleet.monitor = monitor
    monitor.start()
    apps = client.AppsV1Api(k8s_api)
    history = PodHistory(k8s_api, namespace)  # of the rolling update
    try:
        # --- three replicas share the bases, PER_REPLICA each ----------------------------
        monitor.phase = "spread"

        async def nodes_ready() -> bool:
            nodes = await fleet.core.list_node(label_selector=f"{ENV_LABEL}={test_env}")
            ready = [n for n in nodes.items if is_ready_and_untainted(n)]
            return len(ready) == BASES

        await wait_for(nodes_ready, timeout=60, what="every node Ready", diagnose=fleet.describe)
        await fleet.owned_by_intended(FIRST, 30, "the bases spread over three replicas")
        took("spread")
        body = deployment(APP, test_env, BASES, [("biz1", OLD)], spread=True)
        await apps.create_namespaced_deployment(namespace, manifest(body))

        def all_ready(pods: list[client.V1Pod]) -> bool:
            on = {p.spec.node_name for p in pods if is_ready(p)}
            return len(pods) == BASES and on == set(names)

        await wait_pods(
            fleet.core, namespace, f"app={APP}", all_ready, "every pod Ready", 90, fleet.describe
        )
        for base in fleet.bases:
            installs = [c for c in base.received() if c.command in COMMAND_NAMES]
            assert [c.command for c in installs] == ["installBiz"], (
                f"{fleet.node_of(base)} got {installs}\n{await fleet.describe()}"
            )
        took("release")

        async def memory_reported() -> bool:
            # The bases' first health answers set each node's memory: steady from then on.
            nodes = await fleet.core.list_node(label_selector=f"{ENV_LABEL}={test_env}")
            return all((n.status.capacity or {}).get("memory") != "1Ti" for n in nodes.items)

        await wait_for(
            memory_reported, timeout=20, what="every node's memory", diagnose=fleet.describe
        )
        await fleet.mark_steady()

        # --- kill -9 replica-a: its bases go to b and c, nothing re-sent -----------------
        monitor.phase = "kill"
        killed = fleet.replicas["replica-a"]
        killed.killed = True
        killed.process.kill()
        await fleet.owned_by_intended(
            ("replica-b", "replica-c"), TAKEOVER_SECONDS, "replica-a's bases held by b and c"
        )
        took("takeover after kill -9")
        monitor.dead.add("replica-a")  # from now on, no Lease may name it again
        await fleet.check_nothing_happened("after replica-a was killed")

        # --- SIGSTOP replica-b past its membership Lease, then SIGCONT -------------------
        monitor.phase = "stop"
        frozen = fleet.replicas["replica-b"]
        frozen.stopped = True
        os.kill(frozen.process.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        await fleet.owned_by_intended(
            ("replica-c",), TAKEOVER_SECONDS, "replica-b's bases held by c while b is stopped"
        )
        took("takeover after SIGSTOP")
        await asyncio.sleep(max(0.0, STOPPED_SECONDS - (time.monotonic() - stopped_at)))
        monitor.phase = "resume"
        keeper = fleet.replicas["replica-c"]
        b_log, c_log = frozen.log_size(), keeper.log_size()
        os.kill(frozen.process.pid, signal.SIGCONT)
        frozen.stopped = False
        resumed_at = time.monotonic()
        # Back, it must not count what it held before the stop. Its gauge is set at the end
        # of each of its rounds (the first one runs at once): from then on it may never be
        # more than the Leases that name it, which only replica-c's hand-overs give back.
        stale: list[str] = []

        async def watch_gauge() -> None:
            await asyncio.sleep(max(0.0, resumed_at + 1.5 - time.monotonic()))
            while True:
                owned = await asyncio.to_thread(frozen.owned)
                holders = await fleet.holders()
                held = sum(1 for holder in holders.values() if holder == "replica-b")
                if owned is not None and owned > held:
                    stale.append(f"{time.strftime('%X')} gauge {owned}, {held} Lease(s)")
                await asyncio.sleep(MONITOR_SECONDS)

        gauge_watch = asyncio.create_task(watch_gauge())
        try:
            await fleet.owned_by_intended(
                ("replica-b", "replica-c"), 30, "bases back with replica-b after it resumed"
            )
            await asyncio.sleep(max(0.0, resumed_at + 3 - time.monotonic()))
        finally:
            gauge_watch.cancel()
            await asyncio.gather(gauge_watch, return_exceptions=True)
        took("rebalance after SIGCONT")
        fleet.expect(not stale, f"replica-b counted bases it no longer held: {stale}")
        claims = [line for line in frozen.log_since(b_log) if " claimed " in line]
        fleet.expect(not claims, f"replica-b took its bases back by claims: {claims}")
        back = {
            n
            for n, owner in fleet.expected(("replica-b", "replica-c")).items()
            if owner == "replica-b"
        }
        handed = {
            name
            for name in back
            for line in keeper.log_since(c_log)
            if f"{name} handed over to replica-b" in line
        }
        fleet.expect(handed == back, f"not handed back by replica-c: {sorted(back - handed)}")
        await fleet.check_nothing_happened("after replica-b was stopped and resumed")

        # --- replica-d joins: three bases move to it, one from each ----------------------
        monitor.phase = "join"
        after_four = ("replica-b", "replica-c", JOINER)
        assert list(fleet.expected(after_four).values()).count(JOINER) == 3
        fleet.start_replica(JOINER)  # its whole log is checked: it acts on nothing either
        await fleet.owned_by_intended(after_four, 40, "bases rebalanced onto replica-d")
        took("rebalance onto a 4th replica")
        await fleet.check_nothing_happened("after replica-d joined")
        hand_over_age = monitor.oldest_renewal.get("join", (0.0, ""))
        fleet.expect(
            hand_over_age[0] < LEASE_RENEW_SECONDS + 3,
            f"a node Lease went {hand_over_age[0]:.1f}s unrenewed through a hand-over: "
            f"{hand_over_age[1]}",
        )

        # --- kill -9 replica-c and start it again at once, under the same CLIENT_ID ------
        # (a crashed container restarted in its pod): its Leases are still its own, so it
        # holds its bases again and adopts them; nobody claims them meanwhile.
        monitor.phase = "restart"
        old = fleet.replicas["replica-c"]
        old.killed = True
        old.process.kill()
        others = {name: fleet.replicas[name].log_size() for name in ("replica-b", JOINER)}
        killed_at = time.monotonic()
        again = fleet.start_replica("replica-c")  # a new process and log; the same identity

        async def member_again() -> bool:
            return any("This replica is a member" in line for line in again.log_since(0))

        await wait_for(member_again, timeout=30, what="replica-c back", diagnose=fleet.describe)
        back_after = time.monotonic() - killed_at
        await fleet.owned_by_intended(after_four, 30, "replica-c's bases held by it again")
        took(f"restart under the same CLIENT_ID (a member again {back_after:.1f}s after)")
        claims = [
            line
            for name, offset in others.items()
            for line in fleet.replicas[name].log_since(offset)
            if " claimed " in line
        ]
        # Back within its membership Lease, nobody may have claimed from it (a slower start
        # lets the others take its bases over, which is right then).
        fleet.expect(
            not claims or back_after > REPLICA_LEASE_SECONDS - 1,
            f"claimed from a replica back {back_after:.1f}s after its kill: {claims}",
        )
        await fleet.check_nothing_happened("after replica-c was restarted")

        # --- kill -9 replica-b and at once roll the module Deployment to a new version ----
        # Pods of its bases are bound and deleted while nobody acts for them; the new owners
        # carry the update on from what the bases run: each base gets one install and one
        # uninstall, and the old pod goes NotReady before the new one goes Ready.
        monitor.phase = "roll"
        victim = fleet.replicas["replica-b"]
        survivors = ("replica-c", JOINER)
        orphaned = {n for n, o in fleet.expected(after_four).items() if o == victim.name}
        pods = await fleet.core.list_namespaced_pod(namespace, label_selector=f"app={APP}")
        old_by_node = {p.spec.node_name: p.metadata.name for p in pods.items}
        await history.start()
        await monitor.rolling(OLD)
        victim.killed = True
        victim.process.kill()
        killed_at = time.monotonic()
        set_modules(body["spec"]["template"], [("biz1", NEW)])
        await apps.replace_namespaced_deployment(APP, namespace, manifest(body))
        still = {n for n, holder in (await fleet.holders()).items() if holder == victim.name}
        fleet.expect(
            still == orphaned,
            f"the update went out after the takeover began: {sorted(orphaned - still)}",
        )
        await fleet.owned_by_intended(
            survivors, TAKEOVER_SECONDS, "replica-b's bases held by c and d during the update"
        )
        claimed_at = {
            lease.metadata.name: lease.spec.acquire_time.timestamp()
            for lease in await fleet.leases()
            if lease.metadata.name in orphaned
        }
        took(f"takeover during a rolling update ({time.monotonic() - killed_at:.1f}s)")
        monitor.dead.add(victim.name)

        def rolled_out(pods: list[client.V1Pod]) -> bool:
            # As many pods as bases, and a Ready one of the new version on each base.
            on = {p.spec.node_name for p in pods if version_of(p) == NEW and is_ready(p)}
            return len(pods) == BASES and on == set(names)

        new = await wait_pods(
            fleet.core,
            namespace,
            f"app={APP}",
            rolled_out,
            f"{BASES} pods of {NEW} Ready, one per base",
            120,
            fleet.describe,
        )
        monitor.replacing = None  # from the next sample on, every pod stays Ready again
        took("rolling update")

        async def modules_rolled() -> bool:
            return all(modules_of(base) == {f"biz1:{NEW}": "ACTIVATED"} for base in fleet.bases)

        await wait_for(
            modules_rolled,
            timeout=20,
            what=f"biz1:{NEW} alone on every base",
            diagnose=fleet.describe,
        )
        await history.stop_once_ready_seen(new)
        fleet.expect(monitor.excused > 0, "the monitor saw no pod of the update in flux")
        late = late_handovers(history.events, old_by_node, new)
        fleet.expect(not late, "a new pod Ready before the old one left:\n" + "\n".join(late))
        # The step's premise: the update reached replica-b's bases before they were claimed.
        early = {
            e.pod.spec.node_name
            for e in history.events
            if e.pod.spec.node_name in claimed_at and e.at < claimed_at[e.pod.spec.node_name]
        }
        fleet.expect(bool(early), "no pod of replica-b's bases changed before their takeover")
        timings.append(f"({len(early)} of replica-b's {len(orphaned)} bases changed before)")
        pod_nodes = {e.pod.metadata.name: e.pod.spec.node_name for e in history.events}
        await fleet.check_nothing_happened(
            "after replica-b was killed during a rolling update",
            Update(ROLLED, fleet.expected(survivors), pod_nodes),
        )

        oldest = max(monitor.oldest_renewal.values())
        fleet.expect(
            oldest[0] < min(node_monitor_grace_period, 20),
            f"a node Lease went {oldest[0]:.1f}s unrenewed: {oldest[1]} "
            f"(node-monitor grace period {node_monitor_grace_period}s)",
        )
        assert monitor.samples >= (time.monotonic() - began) / MONITOR_SECONDS / 3, (
            f"the monitor sampled only {monitor.samples} times: {monitor.errors[-5:]}"
        )
        took("end")
        print("timings:", "; ".join(timings))
        print("oldest node Lease renewal per phase:", monitor.oldest_renewal)
        assert not fleet.failures, "\n\n".join(fleet.failures)
    finally:
        await monitor.stop()
        await history.stop()
        for replica in fleet.replicas.values():
            if replica.stopped and replica.process.alive:
                os.kill(replica.process.pid, signal.SIGCONT)  # or it cannot stop
        with contextlib.suppress(Exception):
            await apps.delete_namespaced_deployment(APP, namespace)
        # A killed replica's membership Lease outlives it (see the report): not in this cluster.
        with contextlib.suppress(Exception):
            coordination = client.CoordinationV1Api(k8s_api)
            members = await coordination.list_lease_for_all_namespaces(
                label_selector=f"{MEMBER_LABEL}={test_env}"
            )
            for lease in members.items:
                if lease.spec.holder_identity in fleet.live():
                    continue  # a live replica deletes its own when it stops
                await coordination.delete_namespaced_lease(
                    lease.metadata.name, lease.metadata.namespace
                )
