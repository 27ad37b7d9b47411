"""Benchmark (not a test): what a frozen broker costs, with the operator's default timings.

Starts its own testbed, the operator as a subprocess (default settings: bases NotReady after
25 s of silence, deleted after 60 s) and N simulated bases beating every 10 s like real ones,
releases one module Deployment with a pod on every base, then for each freeze length freezes
the broker with SIGSTOP, thaws it with SIGCONT, waits two heartbeat periods and prints:
nodes deleted, nodes that went NotReady, pods replaced or ever not Ready, installs and
uninstalls sent, and when /readyz noticed.

    .venv/bin/python -m benchmarks.broker_freeze [--bases 10] [--freezes 90,300]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from kubernetes_asyncio import client, config

from benchmarks.harness import OPERATOR_STOP_GRACE_SECONDS, mqtt_fleet, start_operator, wait
from module_controller.testbed import testbed
from module_controller.testbed.kube_reads import is_ready, ready_condition
from module_controller.testbed.process import free_port
from tests.e2e.modules_support import deployment

ENV = "freeze"
COMMANDS = ("installBiz", "uninstallBiz")


def readyz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:
        return 0, str(error)


async def main(bases_count: int, freezes: list[float]) -> None:
    logging.basicConfig(level=logging.WARNING)
    # The bases complain loudly while the broker is frozen; that is the point, not news.
    logging.getLogger("module_controller.simulator").setLevel(logging.CRITICAL)
    state_dir = Path(tempfile.mkdtemp(prefix="broker-freeze-"))
    state = testbed.up(state_dir)
    assert state.kubeconfig and state.broker
    (mosquitto_pid,) = [p.pid for p in state.processes if p.name == "mosquitto"]
    health_port = free_port()
    operator = start_operator(state, ENV, state_dir / "operator.log", HEALTH_PORT=str(health_port))
    fleet = mqtt_fleet(state, ENV, first_ip="127.0.50.1")
    api = await config.new_client_from_config(config_file=state.kubeconfig)
    core = client.CoreV1Api(api)
    apps = client.AppsV1Api(api)
    selector = f"virtual-kubelet.koupleless.io/env={ENV}"
    try:
        await fleet.start(bases_count)
        await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ENV)))
        body = deployment("m", ENV, bases_count, [("biz1", "1.0.0")], spread=True)
        await apps.create_namespaced_deployment(ENV, body)

        async def pods_ready() -> set[str] | None:
            pods = (await core.list_namespaced_pod(ENV, label_selector="app=m")).items
            ready = {p.metadata.uid for p in pods if is_ready(p)}
            return ready if len(ready) == bases_count == len(pods) else None

        await wait(pods_ready, 300, f"{bases_count} Ready module pods")
        for freeze in freezes:
            nodes = {
                n.metadata.name: n.metadata.uid
                for n in (await core.list_node(label_selector=selector)).items
            }
            pods = await pods_ready()
            assert pods is not None
            sent = sum(len([c for c in b.received() if c.command in COMMANDS]) for b in fleet.bases)
            deleted: set[str] = set()
            not_ready: set[str] = set()
            pods_down: set[str] = set()
            noticed: float | None = None
            os.kill(mosquitto_pid, signal.SIGSTOP)
            began = time.monotonic()
            end = began + freeze + 20  # the thaw, then two heartbeat periods
            thawed = False
            while time.monotonic() < end:
                if not thawed and time.monotonic() - began >= freeze:
                    os.kill(mosquitto_pid, signal.SIGCONT)
                    thawed = True
                if noticed is None and readyz(health_port)[0] != 200:
                    noticed = time.monotonic() - began
                seen = {
                    n.metadata.name: n
                    for n in (await core.list_node(label_selector=selector)).items
                }
                for name, uid in nodes.items():
                    node = seen.get(name)
                    if node is None or node.metadata.uid != uid:
                        deleted.add(name)
                    elif ready_condition(node) is not None and not is_ready(node):
                        not_ready.add(name)
                listed = (await core.list_namespaced_pod(ENV, label_selector="app=m")).items
                for pod in listed:
                    if pod.metadata.uid not in pods or not is_ready(pod):
                        pods_down.add(pod.metadata.name)
                await asyncio.sleep(1)
            after = sum(
                len([c for c in b.received() if c.command in COMMANDS]) for b in fleet.bases
            )
            noticed_text = f"after {noticed:.1f}s" if noticed is not None else "never"
            print(
                f"broker frozen {freeze:.0f}s, {bases_count} bases: nodes deleted {len(deleted)}, "
                f"nodes NotReady {len(not_ready)}, pods replaced or not Ready {len(pods_down)}, "
                f"installs+uninstalls sent {after - sent}, /readyz failing "
                f"{noticed_text}, "
                f"/readyz now {readyz(health_port)[0]}"
            )
    finally:
        operator.stop(OPERATOR_STOP_GRACE_SECONDS)
        await fleet.stop()
        await api.close()
        testbed.down(state_dir)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", type=int, default=10)
    parser.add_argument("--freezes", default="90,300", help="freeze lengths in seconds")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.bases, [float(x) for x in arguments.freezes.split(",")]))
