"""The e2e replicas test's fleet (its operator replicas, bases and wait diagnoses) and its
monitor, which reads Leases, nodes and pods every MONITOR_SECONDS for the whole test and
records what must never happen (tests/e2e/test_replicas.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from kubernetes_asyncio import client

from module_controller.shards.assignment import intended_owner
from module_controller.simulator.base import SimulatedBase
from module_controller.testbed.kube_reads import is_ready, ready_condition
from module_controller.vnode_manifest import COMPONENT_LABEL, ENV_LABEL, LEASE_NAMESPACE
from tests.e2e.conftest import OperatorFactory, free_port
from tests.e2e.replicas_support import (
    COMMAND_NAMES,
    Replica,
    Update,
    module_commands,
    not_its_own,
    pod_problems,
)
from tests.waiting import wait_for

FIRST = ("replica-a", "replica-b", "replica-c")
PER_REPLICA = 10  # bases per replica among FIRST
BASES = PER_REPLICA * len(FIRST)
APP = "sharded"
MONITOR_SECONDS = 0.5


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
