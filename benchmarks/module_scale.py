"""Benchmark (not a test): module install latency and a rolling update, on the testbed.

Starts its own testbed, the operator as a subprocess and N simulated bases in this process,
then:

1. releases M Deployments of N replicas, one pod per base each (N x M module pods, each a
   module of its own on its base), and prints per pod, p50 / p99:
   - bound -> install sent: from the watch seeing the pod bound to a node to the base
     receiving installBiz for that pod's module;
   - install answered -> Ready: from the base receiving installBiz (it answers at once) to
     the watch seeing the pod Ready;
2. updates one Deployment of N replicas (image + BIZ_VERSION) and prints the wall time until
   all N new pods are Ready and every old one is gone;
3. counts the Kubernetes Events of it all (the module pods' namespace, and the nodes'), by
   who posted them and why.

    .venv/bin/python -m benchmarks.module_scale [--bases 100] [--deployments 10]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import logging
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client, config

from benchmarks.harness import (
    OPERATOR_STOP_GRACE_SECONDS,
    list_and_watch,
    mqtt_fleet,
    start_operator,
    wait,
)
from module_controller.testbed import testbed
from module_controller.testbed.kube_reads import health_taints, json_is_ready
from tests.e2e.modules_support import deployment, set_modules

ENV = "bench"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summary(name: str, values: list[float]) -> str:
    if not values:
        return f"{name}: no samples"
    return (
        f"{name}: n={len(values)} p50={statistics.median(values) * 1000:.0f} ms "
        f"p99={percentile(values, 0.99) * 1000:.0f} ms max={max(values) * 1000:.0f} ms"
    )


async def events_report(core: client.CoreV1Api, namespaces: list[str]) -> str:
    """Kubernetes Events in `namespaces`: objects, and by who posted them and why."""
    lines = []
    for namespace in namespaces:
        listed = (await core.list_namespaced_event(namespace)).items
        by_source: Counter[str] = Counter()
        by_reason: Counter[tuple[str, str]] = Counter()
        for event in listed:
            source = event.reporting_component or (event.source and event.source.component) or "?"
            by_source[source] += 1
            by_reason[source, event.reason or "?"] += 1
        repeats = sum((event.count or 1) for event in listed)
        lines.append(
            f"Events in {namespace}: {len(listed)} objects ({repeats} with their repeat counts); "
            + ", ".join(f"{source} {n}" for source, n in by_source.most_common())
        )
        lines.extend(
            f"  {source} {reason}: {n}" for (source, reason), n in by_reason.most_common(12)
        )
    return "\n".join(lines)


class PodWatch:
    """Wall-clock times at which the watch saw each pod bound and Ready."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.bound: dict[str, float] = {}
        self.ready: dict[str, float] = {}
        self.nodes: dict[str, str] = {}
        self.images: dict[str, str] = {}

    async def run(self, api: client.ApiClient, namespace: str) -> None:
        core = client.CoreV1Api(api)
        await list_and_watch(api, core.list_namespaced_pod, self._see, namespace, what="pods")

    def _see(self, kind: str, pod: Mapping[str, Any]) -> None:
        if kind == "DELETED":
            return
        name = pod["metadata"]["name"]
        now = time.time()
        self.seen.add(name)
        spec = pod.get("spec") or {}
        if spec.get("nodeName") and name not in self.bound:
            self.bound[name] = now
            self.nodes[name] = spec["nodeName"]
            self.images[name] = spec["containers"][0]["image"]
        if json_is_ready(pod) and name not in self.ready:
            self.ready[name] = now


async def main(bases_count: int, deployments: int) -> None:
    logging.basicConfig(level=logging.WARNING)
    state_dir = Path(tempfile.mkdtemp(prefix="module-bench-"))
    state = testbed.up(state_dir)
    assert state.kubeconfig and state.broker
    operator = start_operator(state, ENV, state_dir / "operator.log", LOG_LEVEL="WARNING")
    fleet = mqtt_fleet(state, ENV, first_ip="127.0.40.1")
    api = await config.new_client_from_config(config_file=state.kubeconfig)
    core = client.CoreV1Api(api)
    apps = client.AppsV1Api(api)
    try:
        await fleet.start(bases_count)
        by_node = {f"virtual-node-{b.identity}": b for b in fleet.bases}

        async def nodes_ready() -> bool:
            nodes = (
                await core.list_node(label_selector="virtual-kubelet.koupleless.io/env=" + ENV)
            ).items
            return sum(1 for n in nodes if not health_taints(n)) == bases_count

        began = time.monotonic()
        await wait(nodes_ready, 180, f"{bases_count} Ready nodes")
        print(f"{bases_count} bases Ready as nodes in {time.monotonic() - began:.1f}s")
        await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="bench")))
        pods = PodWatch()
        watcher = asyncio.create_task(pods.run(api, "bench"))
        await asyncio.sleep(1)

        began = time.monotonic()
        for number in range(deployments):
            body = deployment(
                f"m{number}", ENV, bases_count, [(f"biz{number}", "1.0.0")], spread=True
            )
            await apps.create_namespaced_deployment("bench", body)
        total = bases_count * deployments

        async def all_ready() -> bool:
            return len(pods.ready) >= total

        await wait(all_ready, 900, f"{total} Ready module pods")
        print(f"{total} module pods Ready {time.monotonic() - began:.1f}s after release")
        to_install = []
        to_ready = []
        for name, bound in pods.bound.items():
            base = by_node[pods.nodes[name]]
            module = name.split("-")[0].replace("m", "biz", 1)
            received = [
                c.at for c in base.received("installBiz") if c.payload.get("bizName") == module
            ]
            if received and name in pods.ready:
                to_install.append(received[0] - bound)
                to_ready.append(pods.ready[name] - received[0])
        print(summary("pod bound -> install command at the base", to_install))
        print(summary("install answered -> pod Ready", to_ready))

        # The rolling update of one N-replica Deployment.
        rolled = await apps.read_namespaced_deployment("m0", "bench")
        body = copy.deepcopy(api.sanitize_for_serialization(rolled))
        set_modules(body["spec"]["template"], [("biz0", "2.0.0")])
        began = time.monotonic()
        await apps.replace_namespaced_deployment("m0", "bench", body)

        async def rolled_out() -> bool:
            current = await apps.read_namespaced_deployment("m0", "bench")
            status = current.status
            listed = await core.list_namespaced_pod("bench", label_selector="app=m0")
            new_image = all(
                p.spec.containers[0].image.endswith("biz0-2.0.0-ark-biz.jar") for p in listed.items
            )
            return bool(
                (status.observed_generation or 0) >= current.metadata.generation
                and status.updated_replicas == bases_count
                and status.available_replicas == bases_count
                and len(listed.items) == bases_count
                and new_image
            )

        await wait(rolled_out, 900, "the rolling update to finish")
        print(
            f"rolling update of {bases_count} replicas across {bases_count} bases: "
            f"{time.monotonic() - began:.1f}s"
        )
        watcher.cancel()
        await asyncio.sleep(3)  # the operator posts Events in the background
        print(await events_report(core, ["bench", "default"]))
    finally:
        operator.stop(OPERATOR_STOP_GRACE_SECONDS)
        await fleet.stop()
        await api.close()
        testbed.down(state_dir)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", type=int, default=100)
    parser.add_argument("--deployments", type=int, default=10)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.bases, arguments.deployments))
