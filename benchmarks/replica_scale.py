"""Benchmark (not a test): bases and module pods sharded over R operator replicas (issue 12).

For each R of ``--replicas`` (one after the other, each on a fresh testbed): R separate
``module-controller run`` processes (distinct CLIENT_IDs, metrics and health ports; the
product's default timings), then ``--bases`` N simulated bases (MQTT, a heartbeat every
10 s), then ``--pods-per-base`` P module Deployments of N replicas each, one pod per base
(as benchmarks/module_scale.py releases them). It prints:

* bases per replica, from the holders of the node Leases (and each replica's own
  ``module_controller_bases_owned``);
* first heartbeat -> node Ready and untainted, p50 / p99; pod bound -> installBiz at the
  base; the base's install reply -> pod Ready, from the reply's arrival on the broker (the
  operator's share) and from its publishTimestamp (see harness.InstallReplies), p50 / p99;
  the time until all N x P pods are Ready;
* each replica's CPU seconds to bring the bases online and to release the pods; then, over
  a steady window of ``--steady`` seconds once everything is Ready and settled, each
  process's CPU (% of one core), each replica's RSS, API writes per second (kube-apiserver's
  ``apiserver_request_total``, write verbs, by resource), the longest node Lease renewal gap
  against the configured period, and any node or pod NotReady;
* with R > 1: kill -9 of the replica holding the most bases, and the seconds until each of
  its bases' Leases has another holder, the longest renewal gap of those Leases, whether any
  node or pod went NotReady, and the install/uninstall commands the bases received after the
  kill (the issue says 0), watched until AFTER_TAKEOVER_SECONDS past the takeover.

    .venv/bin/python -m benchmarks.replica_scale --replicas 1 3 --bases 30 --pods-per-base 2 \\
        --steady 30 [--profile DIR] [--keep]

``--profile DIR`` runs each replica under ``python -m cProfile -o DIR/r<R>-<CLIENT_ID>.prof``
(written when it is stopped; not for the replica killed). The machine is shared by the
testbed, the replicas and the simulated bases: the figures are for this box as a whole.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client, config

from benchmarks import harness, node_scale
from benchmarks.module_scale import PodWatch, percentile
from benchmarks.replica_report import Result, Takeover, comparison, report
from benchmarks.replica_watch import NodeLeases, PodLapses, bases_owned
from module_controller.settings import Settings
from module_controller.shards.assignment import intended_owner
from module_controller.shards.membership import MEMBER_LABEL
from module_controller.simulator.base import SimulatedBase
from module_controller.simulator.fleet import Fleet
from module_controller.testbed import testbed
from module_controller.testbed.operator_process import OperatorProcess
from module_controller.testbed.process import free_port
from module_controller.vnode_manifest import COMPONENT_LABEL, ENV_LABEL, LEASE_NAMESPACE
from tests.e2e.modules_support import deployment

ENV = node_scale.ENV
PODS_NAMESPACE = "bench"
MEMBERS_NAMESPACE = "default"  # the replicas' NAMESPACE, where their membership Leases are
FIRST_IP = "127.3.0.1"  # apart from the other benchmarks' and the e2e tests' bases
DEFAULTS = Settings.model_fields
RETRY_SECONDS = float(DEFAULTS["replica_retry_seconds"].default)
# Two inventory polls: a new owner that re-sent anything after adopting would have by then.
AFTER_TAKEOVER_SECONDS = 2 * float(DEFAULTS["inventory_poll_seconds"].default)
COMMANDS = ("installBiz", "uninstallBiz")
PROGRESS_SECONDS = 30.0
API_WRITE_SECONDS = 0.25


@dataclass
class Replica:
    client_id: str
    process: OperatorProcess
    metrics_port: int


@dataclass
class Bench:
    """One run's testbed, replicas, bases and what watches them."""

    state: testbed.TestbedState
    api: client.ApiClient
    replicas: list[Replica] = field(default_factory=list)
    fleet: Fleet | None = None
    hearts: node_scale.FirstHeartbeats | None = None
    replies: harness.InstallReplies | None = None
    nodes: node_scale.NodeWatch | None = None
    leases: NodeLeases = field(default_factory=NodeLeases)
    pods: PodWatch = field(default_factory=PodWatch)
    lapses: PodLapses = field(default_factory=PodLapses)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def watch(self, job: Coroutine[Any, Any, None]) -> None:
        self.tasks.append(asyncio.create_task(job))

    @property
    def bases(self) -> list[SimulatedBase]:
        assert self.fleet is not None
        return self.fleet.bases

    def cpu(self) -> dict[str, float]:
        return {r.client_id: node_scale.cpu_seconds(r.process.pid) for r in self.replicas}

    async def gauges(self) -> dict[str, int | None]:
        owned = await asyncio.gather(
            *(asyncio.to_thread(bases_owned, r.metrics_port) for r in self.replicas)
        )
        return {r.client_id: count for r, count in zip(self.replicas, owned, strict=True)}

    def commands_since(self, at: float) -> int:
        return sum(
            1
            for base in self.bases
            for c in base.received()
            if c.command in COMMANDS and c.at >= at
        )

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        # The replicas first, so they do not spend the end on every base going away.
        await asyncio.gather(
            *(
                asyncio.to_thread(r.process.stop, harness.OPERATOR_STOP_GRACE_SECONDS)
                for r in self.replicas
            )
        )
        if self.fleet is not None:
            await self.fleet.stop()
        await self.api.close()


async def start_replicas(bench: Bench, count: int, work: Path, profile: Path | None) -> None:
    """`count` replicas, Ready and members of one another before the first base comes, so
    that each base goes straight to its intended owner."""
    ports = [free_port() for _ in range(2 * count)]  # never the same twice
    for number in range(1, count + 1):
        client_id = f"replica-{number}"
        metrics_port, health_port = ports[2 * number - 2], ports[2 * number - 1]
        process = harness.start_operator(
            bench.state,
            ENV,
            work / f"{client_id}.log",
            profile=None if profile is None else profile / f"r{count}-{client_id}.prof",
            CLIENT_ID=client_id,
            NAMESPACE=MEMBERS_NAMESPACE,
            METRICS_PORT=str(metrics_port),
            HEALTH_PORT=str(health_port),
        )
        bench.replicas.append(Replica(client_id, process, metrics_port))
    for replica in bench.replicas:
        await asyncio.to_thread(replica.process.wait_ready, node_scale.OPERATOR_READY_SECONDS, 0.5)
    check_alive(bench.replicas)  # a readiness probe answered by another process passes
    coordination = client.CoordinationV1Api(bench.api)

    async def all_members() -> bool:
        check_alive(bench.replicas)
        leases = await coordination.list_namespaced_lease(
            MEMBERS_NAMESPACE, label_selector=f"{MEMBER_LABEL}={ENV}"
        )
        return len(leases.items) == count

    await harness.wait(all_members, 60, f"{count} membership Leases")
    await asyncio.sleep(2 * RETRY_SECONDS)  # each has listed the others since


def start_watches(bench: Bench) -> None:
    assert bench.state.broker is not None
    bench.hearts = node_scale.FirstHeartbeats(bench.state.broker)
    bench.replies = harness.InstallReplies(bench.state.broker, ENV)
    bench.nodes = node_scale.NodeWatch(bench.api)
    coordination = client.CoordinationV1Api(bench.api)
    core = client.CoreV1Api(bench.api)
    bench.watch(bench.hearts.run())
    bench.watch(bench.replies.run())
    bench.watch(bench.nodes.run())
    bench.watch(
        harness.list_and_watch(
            bench.api,
            coordination.list_namespaced_lease,
            bench.leases.see,
            LEASE_NAMESPACE,
            label_selector=f"{COMPONENT_LABEL}=vnode-lease,{ENV_LABEL}={ENV}",
            what="node Leases",
        )
    )
    bench.watch(
        harness.list_and_watch(
            bench.api, core.list_namespaced_pod, bench.lapses.see, PODS_NAMESPACE, what="pods"
        )
    )


async def bring_bases_online(bench: Bench, count: int, result: Result) -> None:
    assert bench.hearts is not None and bench.nodes is not None
    bench.fleet = harness.mqtt_fleet(bench.state, ENV, first_ip=FIRST_IP)
    await asyncio.wait_for(bench.hearts.subscribed.wait(), 30)
    assert bench.replies is not None
    await asyncio.wait_for(bench.replies.subscribed.wait(), 30)
    await asyncio.wait_for(bench.nodes.synced.wait(), 30)
    before = bench.cpu()
    latencies, written, result.nodes_online_s = await node_scale.bring_online(
        bench.fleet, count, bench.hearts, bench.nodes, 120 + count * 0.3
    )
    result.node_ready = (statistics.median(latencies), percentile(latencies, 0.99))
    result.node_written = (statistics.median(written), percentile(written, 0.99))
    members = [r.client_id for r in bench.replicas]
    wanted = {
        node_scale.NODE_PREFIX + base.identity: intended_owner(base.identity, members)
        for base in bench.bases
    }

    async def with_intended_owners() -> bool:
        if bench.leases.holders != wanted:
            return False
        return sum(count or 0 for count in (await bench.gauges()).values()) == len(wanted)

    await harness.wait(with_intended_owners, 60 + count * 0.1, "every base with its owner")
    result.cpu_online = subtract(bench.cpu(), before)
    result.owned = {r.client_id: len(bench.leases.held_by(r.client_id)) for r in bench.replicas}
    result.gauges = await bench.gauges()


async def release(bench: Bench, per_base: int, result: Result) -> None:
    """P Deployments of N replicas, one pod per base; waits for every pod Ready."""
    core = client.CoreV1Api(bench.api)
    apps = client.AppsV1Api(bench.api)
    count = len(bench.bases)
    await core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=PODS_NAMESPACE))
    )
    bench.watch(bench.pods.run(bench.api, PODS_NAMESPACE))
    await asyncio.sleep(1)  # the watch is listening
    before = bench.cpu()
    began = time.time()
    for number in range(per_base):
        module = f"biz{number}"  # the Deployment is named after its module
        body = deployment(module, ENV, count, [(module, "1.0.0")], spread=True)
        await apps.create_namespaced_deployment(PODS_NAMESPACE, body)
    total = count * per_base

    async def all_ready() -> bool:
        return len(bench.pods.ready) >= total

    progress = asyncio.create_task(release_progress(bench, began))
    writes = asyncio.create_task(time_api_writes(bench, result.api_write))
    try:
        await harness.wait(all_ready, 900 + total * 0.05, f"{total} Ready module pods")
    finally:
        progress.cancel()
        writes.cancel()
    result.pods_ready_s = max(bench.pods.ready.values()) - began
    result.cpu_release = subtract(bench.cpu(), before)
    result.to_install, result.to_ready, result.stamped_to_ready = release_latencies(bench)


def process_pids(bench: Bench) -> dict[str, int]:
    """Every process of the run that may bound it: replicas, bases, the control plane."""
    pids = {r.client_id: r.process.pid for r in bench.replicas}
    pids["bases+benchmark"] = os.getpid()
    return pids | {record.name: record.pid for record in bench.state.processes}


async def release_progress(bench: Bench, began: float) -> None:
    """Every PROGRESS_SECONDS of a release: its pods so far, and who used the CPU.

    A long release (thousands of pods) is bound by one component or another; this says
    which, while it runs."""
    pids = process_pids(bench)
    before = {name: node_scale.cpu_seconds(pid) for name, pid in pids.items()}
    while True:
        await asyncio.sleep(PROGRESS_SECONDS)
        after = {name: node_scale.cpu_seconds(pid) for name, pid in pids.items()}
        busy = sorted(after, key=lambda name: before[name] - after[name])
        shares = ", ".join(
            f"{name} {100 * (after[name] - before[name]) / PROGRESS_SECONDS:.0f}%" for name in busy
        )
        pods = bench.pods
        print(
            f"    +{time.time() - began:.0f}s: pods {len(pods.seen)} created, "
            f"{len(pods.bound)} bound, {len(pods.ready)} Ready; CPU of one core: {shares}",
            flush=True,
        )
        before = after


async def time_api_writes(bench: Bench, seconds: list[float]) -> None:
    """PATCH a ConfigMap every API_WRITE_SECONDS and keep each round trip: what a pod
    status write costs on this box meanwhile, the floor under install answered -> Ready."""
    core = client.CoreV1Api(bench.api)
    name = "write-probe"
    body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name), data={"n": "0"})
    await core.create_namespaced_config_map(PODS_NAMESPACE, body)
    number = 0
    while True:
        await asyncio.sleep(API_WRITE_SECONDS)
        number += 1
        began = time.monotonic()
        await core.patch_namespaced_config_map(name, PODS_NAMESPACE, {"data": {"n": str(number)}})
        seconds.append(time.monotonic() - began)


def release_latencies(bench: Bench) -> tuple[list[float], list[float], list[float]]:
    """Over the Ready pods: pod bound -> its base got installBiz, and the base's install
    reply -> pod Ready, from the reply's arrival on the broker and from its stamp."""
    assert bench.replies is not None
    by_node = {node_scale.NODE_PREFIX + base.identity: base for base in bench.bases}
    to_install, to_ready, stamped_to_ready = [], [], []
    for pod, ready_at in bench.pods.ready.items():
        module = pod.rsplit("-", 2)[0]
        base = by_node[bench.pods.nodes[pod]]
        installs = base.received("installBiz")
        sent = next((c.at for c in installs if c.payload.get("bizName") == module), None)
        if sent is not None:
            to_install.append(sent - bench.pods.bound[pod])
        reply = (base.identity, module)
        if reply in bench.replies.arrived:
            to_ready.append(ready_at - bench.replies.arrived[reply])
            stamped_to_ready.append(ready_at - bench.replies.stamped[reply])
    return to_install, to_ready, stamped_to_ready


async def steady(bench: Bench, seconds: float, result: Result) -> None:
    assert bench.nodes is not None
    await asyncio.sleep(node_scale.SETTLE_SECONDS)  # past the first health and inventory polls
    pids = process_pids(bench)
    assert bench.state.kubeconfig and bench.state.admin_token
    metrics = node_scale.ApiServerMetrics(Path(bench.state.kubeconfig), bench.state.admin_token)
    usage = node_scale.Usage(pids, metrics)
    began = time.time()
    await usage.start()
    await asyncio.sleep(seconds)
    result.window_s, result.cpu, result.writes = await usage.stop()
    result.rss = {r.client_id: node_scale.memory_mib(r.process.pid) for r in bench.replicas}
    result.renewal = bench.leases.longest_unrenewed(began)
    result.steady_node_lapses = sum(1 for at, _ in bench.nodes.lapses if at >= began)
    result.steady_pod_lapses = len(bench.lapses.since(began))
    result.pods_ready_at_end = bench.lapses.ready_count()


async def take_over(bench: Bench) -> Takeover:
    """kill -9 the replica holding the most bases; until its bases have other holders."""
    assert bench.nodes is not None
    victim = max(bench.replicas, key=lambda r: len(bench.leases.held_by(r.client_id)))
    held = bench.leases.held_by(victim.client_id)
    killed_at = time.time()
    victim.process.kill()
    gone = {victim.client_id, ""}

    async def taken_over() -> bool:
        return all(bench.leases.holders.get(name) not in gone for name in held)

    await harness.wait(taken_over, 120, f"{victim.client_id}'s bases with other holders")
    # When the watch saw the last of them change hands, not when this poll noticed.
    seconds = max(bench.leases.changed[name] for name in held) - killed_at
    await asyncio.sleep(AFTER_TAKEOVER_SECONDS)
    survivors = [r for r in bench.replicas if r is not victim]
    gauges = await bench.gauges()
    return Takeover(
        victim=victim.client_id,
        held=len(held),
        seconds=seconds,
        watched_s=time.time() - killed_at,
        renewal=bench.leases.longest_unrenewed(killed_at, held),
        node_lapses=sorted({name for at, name in bench.nodes.lapses if at >= killed_at}),
        pod_lapses=sorted(set(bench.lapses.since(killed_at))),
        commands=bench.commands_since(killed_at),
        owned={r.client_id: len(bench.leases.held_by(r.client_id)) for r in survivors},
        gauges={r.client_id: gauges[r.client_id] for r in survivors},
    )


def check_alive(replicas: list[Replica]) -> None:
    dead = [r.process for r in replicas if not r.process.alive]
    if dead:
        raise RuntimeError(f"{len(dead)} replica(s) exited:\n{dead[0].tail()}")


def subtract(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in after}


def log_problems(replicas: list[Replica]) -> dict[str, int]:
    """WARNING and ERROR lines in each replica's log."""
    counts = {}
    for replica in replicas:
        log = replica.process.log
        text = log.read_text(errors="replace") if log.exists() else ""
        counts[replica.client_id] = sum(
            1 for line in text.splitlines() if " WARNING " in line or " ERROR " in line
        )
    return counts


async def run(
    state: testbed.TestbedState, work: Path, options: argparse.Namespace, replicas: int
) -> Result:
    assert state.kubeconfig is not None
    bench = Bench(state, await config.new_client_from_config(config_file=state.kubeconfig))
    result = Result(replicas=replicas, bases=options.bases, per_base=options.pods_per_base)
    try:
        start_watches(bench)
        await start_replicas(bench, replicas, work, options.profile)
        await bring_bases_online(bench, options.bases, result)
        print(f"  {options.bases} nodes Ready and owned: {result.owned}", flush=True)
        await release(bench, options.pods_per_base, result)
        print(
            f"  {len(bench.pods.ready)} pods Ready {result.pods_ready_s:.1f}s after the release; "
            f"settling {node_scale.SETTLE_SECONDS:.0f}s, then {options.steady:.0f}s steady",
            flush=True,
        )
        await steady(bench, options.steady, result)
        check_alive(bench.replicas)
        if replicas > 1:
            result.takeover = await take_over(bench)
        result.log_problems = log_problems(bench.replicas)
        return result
    finally:
        await bench.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--bases", type=int, default=100)
    parser.add_argument("--pods-per-base", type=int, default=2)
    parser.add_argument("--steady", type=float, default=60.0, help="seconds of steady state")
    parser.add_argument("--profile", type=Path, help="cProfile each replica into this folder")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    options = parser.parse_args()
    if options.profile is not None:
        options.profile = options.profile.absolute()
        options.profile.mkdir(parents=True, exist_ok=True)
    # A SIGTERM tears everything down as a Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    node_scale.raise_file_limit()
    work = Path(tempfile.mkdtemp(prefix="replica-scale-"))
    print(f"work directory (logs; removed at the end unless --keep): {work}", flush=True)
    began = time.monotonic()
    results = []
    try:
        for replicas in options.replicas:
            folder = work / f"r{replicas}"
            state = testbed.up(folder / "testbed")
            print(f"== {replicas} replica(s): testbed up in {state.startup_seconds}s", flush=True)
            try:
                results.append(asyncio.run(run(state, folder, options, replicas)))
            finally:
                testbed.down(folder / "testbed")
            print(report(results[-1]), flush=True)
        print(comparison(results))
        print(f"\nwall time {time.monotonic() - began:.0f}s", flush=True)

    finally:
        if not options.keep:
            subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
