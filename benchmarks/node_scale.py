"""Benchmark (not a test): the operator with 100, 500 and 1,000 bases on a fresh testbed.

Starts its own testbed (etcd, kube-apiserver, controller manager, scheduler, Mosquitto) in a
temporary directory, the operator as a child process with its default timings, and a fleet
of simulated bases in this process (MQTT only, a heartbeat every 10 s as real bases). The
counts are reached one after the other (100, then 400 more, then 500 more); for each it
prints:

* time from a base's first heartbeat (its publishTimestamp, seen on the broker) to its
  node Ready (Ready=True and no node.kubernetes.io/* taint, seen by a node watch): p50, p99
  and max over the bases that just came online;
* the operator process's CPU (% of one core, from /proc/<pid>/stat) and RSS over a steady
  window of ``--steady`` seconds, with the CPU of the other processes for context;
* API writes per second in that window (kube-apiserver's ``apiserver_request_total`` for
  POST, PUT, PATCH, APPLY and DELETE, by resource), next to the cluster's own background
  rate measured before any base came online;
* whether every node stayed Ready through the window (any NotReady moment is counted).

    .venv/bin/python benchmarks/node_scale.py [--counts 100 500 1000] [--steady 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import ssl
import statistics
import subprocess
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes_asyncio import client, config

from benchmarks import harness
from module_controller.simulator.config import BaseConfig, MqttSettings
from module_controller.simulator.fleet import Fleet
from module_controller.testbed import testbed
from module_controller.testbed.kube_reads import json_is_ready, json_is_ready_and_untainted
from module_controller.testbed.mosquitto import BrokerInfo
from module_controller.testbed.operator_process import OperatorProcess
from module_controller.testbed.process import free_port

ENV = "bench"
SELECTOR = f"virtual-kubelet.koupleless.io/env={ENV}"
NODE_PREFIX = "virtual-node-"
WRITE_VERBS = {"POST", "PUT", "PATCH", "APPLY", "DELETE"}
OPERATOR_READY_SECONDS = 60.0
SETTLE_SECONDS = 25.0  # after the last node is Ready: first health polls and lease renewals
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_SAMPLE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


# --- what the operator and the cluster cost ---------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_mib(pid: int) -> tuple[float, float]:
    """(RSS, peak RSS) of a process in MiB."""
    values = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                values[line.split(":")[0]] = int(line.split()[1]) / 1024
    return values.get("VmRSS", float("nan")), values.get("VmHWM", float("nan"))


class ApiServerMetrics:
    """Writes counted by kube-apiserver itself, by resource."""

    def __init__(self, kubeconfig: Path, token: str) -> None:
        document = yaml.safe_load(kubeconfig.read_text())
        self.url = document["clusters"][0]["cluster"]["server"].rstrip("/") + "/metrics"
        self.token = token
        self.tls = ssl.create_default_context()
        self.tls.check_hostname = False
        self.tls.verify_mode = ssl.CERT_NONE  # loopback, the testbed's self-signed CA

    def _fetch(self) -> Counter[str]:
        request = urllib.request.Request(self.url)
        request.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request, timeout=10, context=self.tls) as response:
            text = response.read().decode()
        writes: Counter[str] = Counter()
        for line in text.splitlines():
            match = _SAMPLE.match(line)
            if not match:
                continue
            labels = dict(_LABEL.findall(match["labels"]))
            if labels.get("verb") not in WRITE_VERBS:
                continue
            kind = labels.get("resource", "?")
            if labels.get("subresource"):
                kind += "/" + labels["subresource"]
            writes[kind] += int(float(match["value"]))
        return writes

    async def writes(self) -> Counter[str]:
        return await asyncio.to_thread(self._fetch)


@dataclass
class Usage:
    """CPU of the interesting processes and API writes, between two moments."""

    pids: dict[str, int]
    api: ApiServerMetrics
    began: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    writes: Counter[str] = field(default_factory=Counter)

    async def start(self) -> None:
        self.writes = await self.api.writes()
        self.cpu = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.began = time.monotonic()

    async def stop(self) -> tuple[float, dict[str, float], dict[str, float]]:
        """(seconds, CPU % of one core by process, writes per second by resource)."""
        seconds = time.monotonic() - self.began
        cpu = {
            name: 100 * (cpu_seconds(pid) - self.cpu[name]) / seconds
            for name, pid in self.pids.items()
        }
        after = await self.api.writes()
        rates = {kind: (after[kind] - self.writes[kind]) / seconds for kind in after}
        return seconds, cpu, {kind: rate for kind, rate in rates.items() if rate > 0}


# --- what the bases say and what the cluster shows ------------------------------------------


class FirstHeartbeats:
    """The publishTimestamp of each base's first heartbeat, read off the broker."""

    def __init__(self, broker: BrokerInfo) -> None:
        self.broker = broker
        self.first: dict[str, float] = {}
        self.subscribed = asyncio.Event()

    async def run(self) -> None:
        async with harness.broker_listener(
            self.broker, "node-scale-benchmark-listener"
        ) as listener:
            await listener.subscribe(f"koupleless_{ENV}/+/base/heart", qos=0)
            self.subscribed.set()
            async for message in listener.messages:
                identity = str(message.topic).split("/")[1]
                if identity in self.first or not isinstance(message.payload, bytes):
                    continue
                stamp = json.loads(message.payload)["publishTimestamp"]
                self.first[identity] = stamp / 1000


class NodeWatch:
    """Every node of the env: whether it is Ready now, when it first was, when it was not."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.ready: dict[str, bool] = {}
        self.ready_at: dict[str, float] = {}
        self.condition_at: dict[str, float] = {}  # first seen with Ready=True, taints or not
        self.lapses: list[tuple[float, str]] = []  # (wall time, node) of each Ready -> not
        self.synced = asyncio.Event()

    def _see(self, kind: str, node: Mapping[str, Any]) -> None:
        name = node["metadata"]["name"]
        now = time.time()
        if kind == "DELETED":
            self.ready.pop(name, None)
            return
        if json_is_ready(node):  # what the operator writes
            self.condition_at.setdefault(name, now)
        ready = json_is_ready_and_untainted(node)  # and the node-lifecycle controller agrees
        if ready:
            self.ready_at.setdefault(name, now)
        elif self.ready.get(name):
            self.lapses.append((now, name))
        self.ready[name] = ready

    async def run(self) -> None:
        await harness.list_and_watch(
            self.api,
            client.CoreV1Api(self.api).list_node,
            self._see,
            label_selector=SELECTOR,
            what="nodes",
            listed=self.synced,
        )

    def not_ready(self, names: set[str]) -> set[str]:
        return {name for name in names if not self.ready.get(name)}


# --- the operator -----------------------------------------------------------------------------


def start_operator(state: testbed.TestbedState, log: Path) -> OperatorProcess:
    return harness.start_operator(
        state,
        ENV,
        log,
        CLIENT_ID="node-scale-benchmark",
        METRICS_PORT=str(free_port()),
        HEALTH_PORT=str(free_port()),
    )


def log_text(log: Path, last: int = 3000) -> str:
    return log.read_text(errors="replace")[-last:]


# --- the rounds -------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass
class Round:
    count: int
    p50: float
    p99: float
    worst: float
    written_p50: float
    written_p99: float
    online_s: float
    window_s: float
    cpu: dict[str, float]
    rss: tuple[float, float]
    writes: dict[str, float]
    lapses: int
    ready_at_end: int


async def bring_online(
    fleet: Fleet, count: int, hearts: FirstHeartbeats, nodes: NodeWatch, deadline_s: float
) -> tuple[list[float], list[float], float]:
    """Start bases up to `count` and wait for all their nodes Ready.

    Returns, for the new bases, the seconds from the first heartbeat to the node Ready
    (taint lifted) and to the node written with Ready=True, and the time it all took.
    """
    began = time.monotonic()
    new = await fleet.start(count - len(fleet.bases))
    names = {NODE_PREFIX + base.identity: base.identity for base in new}
    all_names = {NODE_PREFIX + base.identity for base in fleet.bases}
    while nodes.not_ready(all_names):
        if time.monotonic() - began > deadline_s:
            missing = sorted(nodes.not_ready(all_names))
            raise RuntimeError(
                f"{len(missing)} of {count} nodes not Ready after {deadline_s:.0f}s: "
                f"{missing[:10]}..."
            )
        await asyncio.sleep(0.2)
    online_s = time.monotonic() - began
    latencies = [
        nodes.ready_at[name] - hearts.first[identity]
        for name, identity in names.items()
        if identity in hearts.first
    ]
    written = [
        nodes.condition_at[name] - hearts.first[identity]
        for name, identity in names.items()
        if identity in hearts.first
    ]
    if len(latencies) < len(names):
        print(f"  ({len(names) - len(latencies)} first heartbeats were not seen)", flush=True)
    return latencies, written, online_s


async def measure(
    count: int,
    fleet: Fleet,
    hearts: FirstHeartbeats,
    nodes: NodeWatch,
    usage: Usage,
    operator_pid: int,
    steady_s: float,
) -> Round:
    latencies, written, online_s = await bring_online(
        fleet, count, hearts, nodes, 120 + count * 0.3
    )
    print(
        f"{count:>5} bases: all nodes Ready {online_s:.1f}s after starting "
        f"{count - (len(fleet.bases) - len(latencies))} new ones; settling "
        f"{SETTLE_SECONDS:.0f}s, then {steady_s:.0f}s steady",
        flush=True,
    )
    await asyncio.sleep(SETTLE_SECONDS)
    names = {NODE_PREFIX + base.identity for base in fleet.bases}
    lapses_before = len(nodes.lapses)
    await usage.start()
    await asyncio.sleep(steady_s)
    window_s, cpu, writes = await usage.stop()
    ours = {name for _, name in nodes.lapses[lapses_before:]}
    return Round(
        count=count,
        p50=statistics.median(latencies),
        p99=percentile(latencies, 0.99),
        worst=max(latencies),
        written_p50=statistics.median(written),
        written_p99=percentile(written, 0.99),
        online_s=online_s,
        window_s=window_s,
        cpu=cpu,
        rss=memory_mib(operator_pid),
        writes=writes,
        lapses=len(ours & names),
        ready_at_end=len(names) - len(nodes.not_ready(names)),
    )


def report(result: Round, background: dict[str, float]) -> str:
    total = sum(result.writes.values())
    shown = ", ".join(
        f"{kind} {rate:.1f}"
        for kind, rate in sorted(result.writes.items(), key=lambda item: -item[1])
        if rate >= 0.05
    )
    others = ", ".join(
        f"{name} {percent:.0f}%" for name, percent in result.cpu.items() if name != "operator"
    )
    return "\n".join(
        [
            f"== {result.count} bases ==",
            f"  first heartbeat -> node Ready, not-ready taint lifted (new bases): "
            f"p50 {result.p50:.2f}s, p99 {result.p99:.2f}s, max {result.worst:.2f}s; all Ready "
            f"{result.online_s:.1f}s after their start",
            f"  first heartbeat -> node written with Ready=True (the operator's part): "
            f"p50 {result.written_p50:.2f}s, p99 {result.written_p99:.2f}s",
            f"  operator: CPU {result.cpu['operator']:.1f}% of one core over "
            f"{result.window_s:.0f}s; RSS {result.rss[0]:.0f} MiB (peak {result.rss[1]:.0f} MiB)",
            f"  API writes/s in steady state: {total:.1f} ({shown}); cluster background "
            f"before any base: {sum(background.values()):.1f}",
            f"  stayed Ready: {result.ready_at_end}/{result.count} Ready at the end, "
            f"{result.lapses} NotReady moment(s) during the {result.window_s:.0f}s window",
            f"  other processes: {others}",
        ]
    )


async def run(state: testbed.TestbedState, work: Path, counts: list[int], steady_s: float) -> None:
    assert state.kubeconfig and state.broker and state.admin_token
    api = await config.new_client_from_config(config_file=state.kubeconfig)
    log = work / "operator.log"
    operator = start_operator(state, log)
    fleet = Fleet(
        BaseConfig(
            name="bench",
            version="1.0.0",
            env=ENV,
            http_api=False,
            mqtt_heartbeat_period_s=10.0,
            mqtt=MqttSettings(
                host=state.broker.host,
                port=state.broker.port,
                username=state.broker.username,
                password=state.broker.password,
            ),
        ),
        first_ip="127.1.0.1",
    )
    hearts = FirstHeartbeats(state.broker)
    nodes = NodeWatch(api)
    tasks = [asyncio.create_task(hearts.run()), asyncio.create_task(nodes.run())]
    try:
        await asyncio.to_thread(operator.wait_ready, OPERATOR_READY_SECONDS, 0.5)
        await asyncio.wait_for(hearts.subscribed.wait(), 30)
        await asyncio.wait_for(nodes.synced.wait(), 30)
        pids = {"operator": operator.pid, "bases+benchmark": os.getpid()}
        pids |= {record.name: record.pid for record in state.processes}
        usage = Usage(pids, ApiServerMetrics(Path(state.kubeconfig), state.admin_token))
        await asyncio.sleep(10)  # past the fresh cluster's own bootstrapping writes
        await usage.start()
        await asyncio.sleep(20)
        _, _, background = await usage.stop()
        print(
            f"cluster background before any base: {sum(background.values()):.1f} writes/s "
            f"({', '.join(f'{k} {v:.1f}' for k, v in background.items())})",
            flush=True,
        )
        results = []
        for count in counts:
            result = await measure(count, fleet, hearts, nodes, usage, operator.pid, steady_s)
            results.append(result)
            print(report(result, background), flush=True)
            if not operator.alive:
                raise RuntimeError(f"the operator died:\n{log_text(log)}")
        print(
            "\n bases | Ready p50 | Ready p99 | written p50 | written p99 | operator CPU "
            "| RSS MiB | writes/s | stayed Ready"
        )
        for r in results:
            print(
                f" {r.count:>5} | {r.p50:>8.2f}s | {r.p99:>8.2f}s | {r.written_p50:>10.2f}s "
                f"| {r.written_p99:>10.2f}s | {r.cpu['operator']:>11.1f}% "
                f"| {r.rss[0]:>7.0f} | {sum(r.writes.values()):>8.1f} | "
                f"{r.ready_at_end}/{r.count}, {r.lapses} lapses over {r.window_s:.0f}s"
            )
        warnings = [line for line in log_text(log, 10**9).splitlines() if " WARNING " in line]
        print(f"\noperator log: {len(warnings)} warning line(s); {log}")
        for line in warnings[:10]:
            print("  " + line[:200])
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await fleet.stop()
        operator.stop(harness.OPERATOR_STOP_GRACE_SECONDS)
        await api.close()


def raise_file_limit() -> None:
    """1,000 bases are 1,000 sockets here and in the broker (a child: it inherits this)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 500, 1000])
    parser.add_argument(
        "--steady", type=float, default=300.0, help="seconds of steady state per count"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    options = parser.parse_args()
    if options.counts != sorted(options.counts):
        parser.error("--counts must grow: each count adds bases to the ones already online")
    raise_file_limit()
    work = Path(tempfile.mkdtemp(prefix="node-scale-"))
    try:
        state = testbed.up(work / "testbed")
        print(f"testbed up in {state.startup_seconds}s ({work})", flush=True)
        try:
            asyncio.run(run(state, work, options.counts, options.steady))
        finally:
            testbed.down(work / "testbed")
    finally:
        if not options.keep:
            subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
