"""Helpers of the sharded-replicas end-to-end test (test_replicas.py): choosing the bases'
identities, reading a replica's gauge and log, and the rules its monitor and its rolling
update step judge by. Pure but for Replica, which reads a process's metrics and log."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from module_controller.shards.assignment import intended_owner
from module_controller.simulator.base import SimulatedBase
from module_controller.testbed.kube_reads import is_ready
from module_controller.testbed.operator_process import OperatorProcess
from tests.e2e.modules_support import PodEvent

COMMAND_NAMES = ("installBiz", "uninstallBiz")
# What a replica may not log once the release is done: commands, pod writes, node writes
# other than the new owner's refresh of a node it adopts (Ready=True, as it was).
ACTS = re.compile(
    r"Installing |Uninstalling |Pod \S+ is |Created node |Updated node \S+: Ready=False"
    r"|Deleted node "
)
# What the owner of a base logs for a module pod of it: the base's identity, or the pod.
MODULE_ACT = re.compile(
    r"(?:Installing \S+ \(\S+\) on|Uninstalling \S+ from) base (?P<base>\S+)\.$"
    r"|Pod [^/\s]+/(?P<pod>\S+) is "
)


def node_name(identity: str) -> str:
    return f"virtual-node-{identity}"


def choose_identities(
    prefix: str, first: Sequence[str], joiner: str, per_replica: int
) -> list[str]:
    """`per_replica` identities for each of `first` (three); with the first of them gone and
    `joiner` joined, the joiner gets exactly three, one first held by each of the three. The
    one first held by the gone replica would go back to it were it counted among the members
    with the joiner: a joiner that counts the killed replica as live hands it that base."""
    gone = first[0]
    with_joiner = (*first[1:], joiner)
    everyone = (*first, joiner)
    chosen: dict[str, list[str]] = {member: [] for member in first}
    moving: dict[str, int] = dict.fromkeys(first, 0)
    number = 0
    while any(len(ids) < per_replica for ids in chosen.values()):
        identity = f"{prefix}-b{number:03d}"
        number += 1
        owner = intended_owner(identity, tuple(first))
        assert owner is not None
        to_joiner = intended_owner(identity, with_joiner) == joiner
        if len(chosen[owner]) >= per_replica or (to_joiner and moving[owner] >= 1):
            continue
        if to_joiner and owner == gone and intended_owner(identity, everyone) != owner:
            continue
        if not to_joiner and moving[owner] == 0 and len(chosen[owner]) == per_replica - 1:
            continue  # keep the last place for one that moves to the joiner
        chosen[owner].append(identity)
        moving[owner] += to_joiner
    return [identity for member in first for identity in chosen[member]]


@dataclass
class Replica:
    name: str
    process: OperatorProcess
    metrics_port: int
    stopped: bool = False
    killed: bool = False
    log_mark: int = 0

    def owned(self) -> int | None:
        """Its module_controller_bases_owned, or None when it does not answer (stopped)."""
        if self.stopped or self.killed:
            return None
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                text = answer.read().decode()
        except OSError:
            return None
        found = re.search(r"^module_controller_bases_owned (\S+)$", text, re.MULTILINE)
        return None if found is None else int(float(found.group(1)))

    def log_size(self) -> int:
        return self.process.log.stat().st_size if self.process.log.exists() else 0

    def log_since(self, offset: int) -> list[str]:
        with self.process.log.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace").splitlines()

    def mark_log(self) -> None:
        self.log_mark = self.log_size()

    def acts_since_mark(self) -> list[str]:
        return [line for line in self.log_since(self.log_mark) if ACTS.search(line)]


def version_of(pod: Any) -> str:
    """A module pod's `version` label (the test's pods carry it: spread=True)."""
    return str((pod.metadata.labels or {}).get("version", ""))


def pod_problems(
    pods: Sequence[Any], count: int, replacing: str | None, ever_ready: set[str]
) -> list[str]:
    """What the monitor may never see among the module pods once the release is done.

    Steady (`replacing` None): `count` pods, each Ready and not being deleted. While the
    pods of version `replacing` are replaced: an old pod may be deleted, or NotReady once a
    new pod is bound to its base (the base's module makes way for the new version); a new
    pod may not be Ready yet, but once seen Ready (in `ever_ready`) it stays Ready, and it
    is never deleted. Never two Ready pods on one base."""
    problems = []
    ready_on: dict[str, list[str]] = {}
    new_on = {p.spec.node_name for p in pods if version_of(p) != replacing and p.spec.node_name}
    for pod in pods:
        name, node = pod.metadata.name, pod.spec.node_name
        deleting = pod.metadata.deletion_timestamp is not None
        where = f"pod {name} ({version_of(pod)}) on {node}"
        if is_ready(pod):
            ready_on.setdefault(node, []).append(name)
        if replacing is None:
            if not is_ready(pod) or deleting:
                problems.append(f"{where} not Ready (phase {pod.status.phase})")
        elif version_of(pod) == replacing:
            if not is_ready(pod) and not deleting and node not in new_on:
                problems.append(f"{where} NotReady with no new pod there, and not deleted")
        elif deleting:
            problems.append(f"{where} deleted during the update")
        elif name in ever_ready and not is_ready(pod):
            problems.append(f"{where} NotReady after it was Ready (phase {pod.status.phase})")
    if replacing is None and len(pods) != count:
        problems.append(f"{len(pods)} module pods, not {count}")
    problems.extend(
        f"two Ready pods on {node}: {sorted(names)}"
        for node, names in ready_on.items()
        if len(names) > 1
    )
    return problems


def late_handovers(
    events: Sequence[PodEvent], old_by_node: Mapping[str, str], new_pods: Iterable[Any]
) -> list[str]:
    """Bases where the new pod went Ready before the old one went out of service (NotReady,
    or removed), in the API server's order of events (as test_modules.py checks it)."""
    problems = []
    for pod in new_pods:
        name, node = pod.metadata.name, pod.spec.node_name
        old = old_by_node.get(node)
        if old is None:
            problems.append(f"new pod {name} on {node}, where no old pod was")
            continue
        ready = next(
            (i for i, e in enumerate(events) if e.pod.metadata.name == name and is_ready(e.pod)),
            None,
        )
        out = next(
            (
                i
                for i, e in enumerate(events)
                if e.pod.metadata.name == old and (e.type == "DELETED" or not is_ready(e.pod))
            ),
            None,
        )
        if ready is None or out is None or out > ready:
            problems.append(
                f"on {node}: old pod {old} out of service at event {out}, "
                f"new pod {name} Ready at event {ready}"
            )
    return problems


def module_commands(base: SimulatedBase, after: float) -> list[str]:
    """The installs and uninstalls a base received since `after`, as `command name:version`
    (sorted: the order between an install and an uninstall is the operator's)."""
    found = []
    for c in base.received():
        if c.command in COMMAND_NAMES and c.at >= after:
            body = c.payload if isinstance(c.payload, dict) else {}
            found.append(f"{c.command} {body.get('bizName')}:{body.get('bizVersion')}")
    return sorted(found)


def not_its_own(
    lines: Iterable[str], replica: str, owners: Mapping[str, str], pod_nodes: Mapping[str, str]
) -> list[str]:
    """Which of `lines` (a replica's acts) are not module work for a base it owns: an
    install, an uninstall or a pod write for a base whose owner (`owners`: node -> replica)
    is someone else, or any other act. `pod_nodes`: pod name -> node."""
    wrong = []
    for line in lines:
        found = MODULE_ACT.search(line)
        if found is None:
            wrong.append(line)
            continue
        base, pod = found.group("base"), found.group("pod")
        node = node_name(base) if base is not None else pod_nodes.get(pod)
        if node is None or owners.get(node) != replica:
            wrong.append(line)
    return wrong


@dataclass(frozen=True)
class Update:
    """What a step that rolls the module Deployment expects, where the other steps expect
    nothing at all: each base gets `commands`, and each replica's module work is for the
    bases it owns."""

    commands: list[str]  # each base's, as module_commands gives them
    owners: Mapping[str, str]  # node -> the replica that acts for it
    pod_nodes: Mapping[str, str]  # pod name -> node
