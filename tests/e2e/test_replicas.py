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
from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest
from kubernetes_asyncio import client

from module_controller.shards.assignment import intended_owner
from module_controller.shards.membership import MEMBER_LABEL
from module_controller.simulator.base import SimulatedBase
from module_controller.testbed.kube_reads import is_ready, is_ready_and_untainted, ready_condition
from module_controller.vnode_manifest import COMPONENT_LABEL, ENV_LABEL, LEASE_NAMESPACE
from tests.e2e.conftest import OPERATOR_TIMINGS, BaseFactory, OperatorFactory, free_port
from tests.e2e.modules_support import (
    PodHistory,
    deployment,
    manifest,
    modules_of,
    set_modules,
    wait_pods,
)
from tests.e2e.replicas_support import (
    COMMAND_NAMES,
    Replica,
    Update,
    choose_identities,
    late_handovers,
    module_commands,
    not_its_own,
    pod_problems,
    version_of,
)
from tests.waiting import wait_for

pytestmark = [pytest.mark.usefixtures("env_nodes_cleanup"), pytest.mark.timeout(300)]

FIRST = ("replica-a", "replica-b", "replica-c")
JOINER = "replica-d"
PER_REPLICA = 10  # bases per replica among FIRST
BASES = PER_REPLICA * len(FIRST)
APP = "sharded"
MONITOR_SECONDS = 0.5
TAKEOVER_SECONDS = 20.0  # the bound: a dead replica's bases owned by others
REPLICA_LEASE_SECONDS = float(OPERATOR_TIMINGS["REPLICA_LEASE_SECONDS"])
LEASE_RENEW_SECONDS = float(OPERATOR_TIMINGS["LEASE_RENEW_SECONDS"])
STOPPED_SECONDS = REPLICA_LEASE_SECONDS + 4  # a partition longer than the membership Lease
OLD, NEW = "1.0.0", "2.0.0"  # the module's version released, and the one rolled out
ROLLED = [f"installBiz biz1:{NEW}", f"uninstallBiz biz1:{OLD}"]  # what each base gets


@dataclass
class Sample:
    at: float
    holders: dict[str, str]  # node -> holder ("" when released)
    owned: dict[str, int | None]


@dataclass
class Monitor:
    """Reads Leases, nodes and pods every MONITOR_SECONDS; records what must never happen."""

    api: client.ApiClient
    env: str
    namespace: str
    replicas: dict[str, Replica]
    nodes: list[str]
    steady: bool = False  # once the release is done: every node and pod stays Ready
    replacing: str | None = None  # while a rolling update replaces this version's pods
    ever_ready: set[str] = field(default_factory=set)  # the pods seen Ready
    began: float = 0.0  # when the latest sample began (monotonic)
    excused: int = 0  # samples where a rolling update excused what steady would not
    dead: set[str] = field(default_factory=set)  # killed, and its bases taken over
    phase: str = "start"
    # What must never happen -> (first seen, last seen, samples), in the order first seen.
    seen_wrong: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    oldest_renewal: dict[str, tuple[float, str]] = field(default_factory=dict)  # phase ->
    last: Sample | None = None
    samples: int = 0
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="replica monitor")

    def violate(self, stamp: str, what: str) -> None:
        first, _, count = self.seen_wrong.get(what, (stamp, stamp, 0))
        self.seen_wrong[what] = (first, stamp, count + 1)

    @property
    def violations(self) -> list[str]:
        return [
            f"{what}: {count} sample(s), {first} to {last}"
            for what, (first, last, count) in self.seen_wrong.items()
        ]

    async def rolling(self, old: str) -> None:
        """From the next sample on (a sample under way may read the pods the update
        changes), the pods of version `old` are being replaced: see pod_problems."""
        self.replacing = old
        asked = time.monotonic()

        async def next_sample() -> bool:
            return self.began > asked

        await wait_for(next_sample, timeout=10, what="a monitor sample", diagnose=self.describe)

    async def describe(self) -> str:
        return f"{self.samples} samples, errors {self.errors[-3:]}"

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.sample()
            except Exception as error:  # a slow API server: counted, never fatal
                self.errors.append(f"{time.strftime('%X')} {self.phase}: {error!r}")
            await asyncio.sleep(max(0.0, MONITOR_SECONDS - (time.monotonic() - started)))

    async def sample(self) -> None:
        self.began = time.monotonic()
        steady, replacing = self.steady, self.replacing  # the rules for what is read now
        coordination = client.CoordinationV1Api(self.api)
        core = client.CoreV1Api(self.api)
        selector = f"{COMPONENT_LABEL}=vnode-lease,{ENV_LABEL}={self.env}"
        leases = await coordination.list_namespaced_lease(LEASE_NAMESPACE, label_selector=selector)
        nodes = await core.list_node(label_selector=f"{ENV_LABEL}={self.env}")
        pods = await core.list_namespaced_pod(self.namespace, label_selector=f"app={APP}")
        owned = await asyncio.gather(
            *(asyncio.to_thread(replica.owned) for replica in self.replicas.values())
        )
        now = time.time()
        stamp = f"{time.strftime('%X')} [{self.phase}]"
        holders: dict[str, str] = {}
        for lease in leases.items:
            name = lease.metadata.name
            holder = lease.spec.holder_identity or ""
            holders[name] = holder
            if holder and holder not in self.replicas:
                self.violate(stamp, f"Lease {name} held by unknown {holder!r}")
            if holder in self.dead:
                self.violate(stamp, f"Lease {name} handed to the dead {holder}")
            renewed = lease.spec.renew_time
            if renewed is not None:
                age = now - renewed.timestamp()
                if age > self.oldest_renewal.get(self.phase, (0.0, ""))[0]:
                    self.oldest_renewal[self.phase] = (age, f"{name} (holder {holder or '-'})")
        if steady:
            seen = {node.metadata.name: node for node in nodes.items}
            for name in self.nodes:
                node = seen.get(name)
                if node is None:
                    self.violate(stamp, f"node {name} is gone")
                elif not is_ready(node):
                    condition = ready_condition(node)
                    reason = condition.reason if condition is not None else "no condition"
                    self.violate(stamp, f"node {name} NotReady ({reason})")
            for problem in pod_problems(pods.items, BASES, replacing, self.ever_ready):
                self.violate(stamp, problem)
            if replacing is not None and pod_problems(pods.items, BASES, None, set()):
                self.excused += 1
        self.ever_ready.update(p.metadata.name for p in pods.items if is_ready(p))
        self.last = Sample(now, holders, dict(zip(self.replicas, owned, strict=True)))
        self.samples += 1


class Fleet:
    """The test's replicas, bases and monitor, with one diagnosis for every wait."""

    def __init__(
        self,
        api: client.ApiClient,
        run_operator: OperatorFactory,
        namespace: str,
        env: str,
    ) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.coordination = client.CoordinationV1Api(api)
        self.run_operator = run_operator
        self.namespace = namespace
        self.env = env
        self.replicas: dict[str, Replica] = {}
        self.bases: list[SimulatedBase] = []
        self.monitor: Monitor | None = None
        self.since = 0.0
        self.snapshot: dict[str, str] = {}
        self.reported: set[str] = set()
        self.failures: list[str] = []

    def start_replica(self, name: str) -> Replica:
        metrics_port, health_port = free_port(), free_port()
        process = self.run_operator(
            CLIENT_ID=name,
            METRICS_PORT=str(metrics_port),
            HEALTH_PORT=str(health_port),
            INVENTORY_POLL_SECONDS="5",
        )
        replica = Replica(name, process, metrics_port)
        self.replicas[name] = replica
        return replica

    def node_of(self, base: SimulatedBase) -> str:
        return f"virtual-node-{base.identity}"

    def live(self) -> list[str]:
        return [name for name, r in self.replicas.items() if not r.killed and not r.stopped]

    async def leases(self) -> list[client.V1Lease]:
        selector = f"{COMPONENT_LABEL}=vnode-lease,{ENV_LABEL}={self.env}"
        found = await self.coordination.list_namespaced_lease(
            LEASE_NAMESPACE, label_selector=selector
        )
        return list(found.items)

    async def holders(self) -> dict[str, str]:
        return {
            lease.metadata.name: lease.spec.holder_identity or "" for lease in await self.leases()
        }

    def expected(self, members: Iterable[str]) -> dict[str, str]:
        """node -> intended owner among `members`."""
        members = tuple(members)
        return {
            self.node_of(base): str(intended_owner(base.identity, members)) for base in self.bases
        }

    async def describe(self) -> str:
        lines = []
        try:
            holders = await self.holders()
        except Exception as error:
            holders = {}
            lines.append(f"cannot read the Leases: {error!r}")
        live = self.live()
        wanted = self.expected(live) if live else {}
        for base in self.bases:
            name = self.node_of(base)
            commands = [c.command for c in base.received() if c.command in COMMAND_NAMES]
            lines.append(
                f"{name}: holder={holders.get(name, 'NO LEASE')!r} "
                f"intended={wanted.get(name)!r} commands={commands}"
            )
        for name, replica in self.replicas.items():
            state = "killed" if replica.killed else "stopped" if replica.stopped else "running"
            owned = await asyncio.to_thread(replica.owned)
            lines.append(f"{name}: {state}, bases_owned={owned}")
        if self.monitor is not None:
            lines.append(
                f"monitor: {self.monitor.samples} samples, "
                f"oldest renewals {self.monitor.oldest_renewal}, errors {self.monitor.errors[-3:]}"
            )
            lines.extend(self.monitor.violations[:20])
        for replica in self.replicas.values():
            lines.append(replica.process.tail(25))
        return "\n".join(lines)

    async def owned_by_intended(self, members: Iterable[str], timeout: float, what: str) -> None:
        """Every base's Lease held by its intended owner among `members`, and the owners'
        gauges say so (each live replica's count; they add up to every base)."""
        members = tuple(members)
        wanted = self.expected(members)
        counts = {member: list(wanted.values()).count(member) for member in members}

        async def settled() -> bool:
            if await self.holders() != wanted:
                return False
            for name in self.live():
                owned = await asyncio.to_thread(self.replicas[name].owned)
                if owned != counts.get(name, 0):
                    return False
            return True

        await wait_for(settled, timeout=timeout, what=what, diagnose=self.describe)

    def commands_since(self, after: float) -> list[str]:
        return [
            f"{self.node_of(base)} {c.command} at {c.at:.1f}"
            for base in self.bases
            for c in base.received()
            if c.command in COMMAND_NAMES and c.at >= after
        ]

    async def uids(self) -> dict[str, str]:
        nodes = await self.core.list_node(label_selector=f"{ENV_LABEL}={self.env}")
        pods = await self.core.list_namespaced_pod(self.namespace, label_selector=f"app={APP}")
        found = {f"node {n.metadata.name}": n.metadata.uid for n in nodes.items}
        # What a new owner writes must be what the old one wrote: the same capacity.
        found.update(
            {
                f"node {n.metadata.name} capacity": str(sorted((n.status.capacity or {}).items()))
                for n in nodes.items
            }
        )
        found.update({f"pod {p.metadata.name}": p.metadata.uid for p in pods.items})
        return found

    def expect(self, condition: bool, problem: str) -> None:
        """A guarantee checked now, reported at the end (the later steps still run)."""
        if not condition:
            self.failures.append(problem)

    async def mark_steady(self) -> None:
        """From here on nothing may happen: remember the objects, start the logs here."""
        assert self.monitor is not None
        self.since = time.time()
        self.snapshot = await self.uids()
        for replica in self.replicas.values():
            replica.mark_log()
        self.monitor.steady = True

    async def check_nothing_happened(self, step: str, update: Update | None = None) -> None:
        """The guarantees of every step: nothing re-sent, nothing NotReady, same objects,
        no replica acting beyond reading; with an `update`, each base got just its commands,
        the pods were replaced (the nodes were not), and each replica did the module work
        of its own bases only. What goes wrong is kept for the end of the test (each thing
        once), so the later steps still run and say what they see."""
        assert self.monitor is not None
        problems = []
        if update is None:
            sent = self.commands_since(self.since)
            if sent:
                problems.append(f"install/uninstall commands sent: {sent}")
        else:
            problems.extend(
                f"{self.node_of(base)} got {got}, not {update.commands}"
                for base in self.bases
                if (got := module_commands(base, self.since)) != update.commands
            )
        wrong = self.monitor.seen_wrong
        seen = [
            f"{what}: {wrong[what][2]} sample(s), {wrong[what][0]} to {wrong[what][1]}"
            for what in list(wrong)
            if what not in self.reported
        ]
        self.reported.update(wrong)
        if seen:
            problems.append("the monitor saw:\n  " + "\n  ".join(seen[:20]))
        now = await self.uids()
        # An update replaces the pods, never the nodes.
        kept = {k: v for k, v in now.items() if update is None or not k.startswith("pod ")}
        before = {
            k: v for k, v in self.snapshot.items() if update is None or not k.startswith("pod ")
        }
        if kept != before:
            changed = sorted(set(kept.items()) ^ set(before.items()))
            problems.append(f"objects replaced or gone: {changed}")
        for name, replica in self.replicas.items():
            acts = replica.acts_since_mark()
            if update is not None:
                acts = not_its_own(acts, name, update.owners, update.pod_nodes)
            if acts:
                problems.append(f"{name} acted: " + "\n  ".join(acts[:10]))
        if problems:
            self.failures.append(f"{step}:\n" + "\n".join(problems) + "\n" + await self.describe())
        # The next step reports only what happens from now on.
        self.since, self.snapshot = time.time(), now
        for replica in self.replicas.values():
            replica.mark_log()


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
