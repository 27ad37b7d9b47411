"""`module-controller demo` as a user runs it, against the session's cluster and broker.

The demo runs as a child process with `--kubeconfig` and the broker options, in a private
ENV and the test's namespace, with `--timeout` so it ends by itself: it must exit 0 once
the sample's module pod is Running and Ready, leave nothing behind, and, when that cannot
happen, exit non-zero with a diagnosis that says why. Its view shows the bases each
operator replica holds (one replica by default, two with --replicas 2).
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes_asyncio import client

from module_controller.go_compat import own_namespace
from module_controller.shards.membership import MEMBER_LABEL
from module_controller.testbed.mosquitto import BrokerInfo
from module_controller.vnodes import COMPONENT_LABEL, ENV_LABEL

pytestmark = pytest.mark.usefixtures("env_nodes_cleanup")

SAMPLE_DEPLOYMENT = "test-module-deployment"
# Away from the addresses the other end-to-end tests give their bases (127.0.10.x up).
FIRST_IP = "127.0.40.1"


@dataclass
class DemoRun:
    code: int
    output: str

    def operator_pids(self) -> list[int]:
        """From the header: `operator: pid N` (one replica), `<CLIENT_ID>: pid N` (more)."""
        pids = re.findall(r"(?:operator|replica-\d+): pid (\d+)", self.output)
        assert pids, f"the demo did not show its operators' pids:\n{self.output}"
        return sorted({int(pid) for pid in pids})


async def _run_demo(
    kubeconfig: Path,
    broker: BrokerInfo,
    env: str,
    namespace: str,
    state_dir: Path,
    *extra: str,
    deadline: float,
    environment: dict[str, str] | None = None,
) -> DemoRun:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "module_controller.cli",
        "demo",
        f"--kubeconfig={kubeconfig}",
        f"--mqtt-broker={broker.host}",
        f"--mqtt-port={broker.port}",
        f"--mqtt-username={broker.username}",
        f"--mqtt-password={broker.password}",
        f"--env={env}",
        f"--namespace={namespace}",
        f"--state-dir={state_dir}",
        f"--first-ip={FIRST_IP}",
        *extra,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **(environment or {})},
    )
    try:
        out, _ = await asyncio.wait_for(child.communicate(), deadline)
    except TimeoutError:
        child.kill()
        out, _ = await child.communicate()
        operator_log = state_dir / "operator.log"
        raise AssertionError(
            f"the demo did not end within {deadline:.0f}s although it had a --timeout:\n"
            f"{out.decode(errors='replace')}\n--- {operator_log} ---\n"
            f"{operator_log.read_text(errors='replace')[-4000:] if operator_log.exists() else ''}"
        ) from None
    assert child.returncode is not None
    return DemoRun(child.returncode, out.decode(errors="replace"))


def _process_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and "zombie" not in _proc_state(pid)


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "gone"


async def _nothing_left(
    k8s_api: client.ApiClient,
    run: DemoRun,
    env: str,
    namespace: str,
    state_dir: Path,
    members_namespace: str | None = None,
) -> None:
    """What the demo started is stopped; what it created in the cluster is gone, the
    replicas' membership Leases too (each left cleanly)."""
    apps = client.AppsV1Api(k8s_api)
    core = client.CoreV1Api(k8s_api)
    deployments = await apps.list_namespaced_deployment(namespace)
    assert [d.metadata.name for d in deployments.items] == [], run.output
    nodes = await core.list_node(label_selector=f"{COMPONENT_LABEL}=vnode,{ENV_LABEL}={env}")
    assert [n.metadata.name for n in nodes.items] == [], run.output
    for pid in run.operator_pids():
        assert not _process_alive(pid), f"the demo left its operator {pid} running"
    assert not (state_dir / "demo.json").exists()
    members = await client.CoordinationV1Api(k8s_api).list_namespaced_lease(
        members_namespace or os.environ.get("NAMESPACE") or own_namespace(),
        label_selector=f"{MEMBER_LABEL}={env}",
    )
    assert [lease.spec.holder_identity for lease in members.items] == [], run.output


async def test_the_demo_shows_the_sample_module_running_and_ready(
    k8s_api: client.ApiClient,
    kubeconfig: Path,
    mqtt_broker: BrokerInfo,
    test_env: str,
    namespace: str,
    tmp_path: Path,
) -> None:
    state_dir = tmp_path / "demo"
    run = await _run_demo(
        kubeconfig,
        mqtt_broker,
        test_env,
        namespace,
        state_dir,
        "--timeout=120",
        deadline=240,
    )
    assert run.code == 0, run.output
    assert "The sample's module pod is Running and Ready" in run.output
    # The live view's last frame: three bases, three Ready nodes, the pod on one of them.
    assert "BASES (3 simulated: 'base' 1.1.1)" in run.output
    assert "NODES (3/3 Ready)" in run.output
    assert re.search(
        rf"{SAMPLE_DEPLOYMENT}-\S+ +virtual-node-\S+ +127\.0\.40\.\d+ +Running +True", (run.output)
    ), run.output
    # The seed's two queries, filled in with a real base IP and node name.
    assert re.search(r"--field-selector status\.podIP=127\.0\.40\.\d+", run.output)
    assert re.search(r"--field-selector spec\.nodeName=virtual-node-[0-9a-f-]{36}", run.output)
    assert f"kubectl -n {namespace} rollout undo deployment/{SAMPLE_DEPLOYMENT}" in run.output
    assert f"kubectl -n {namespace} scale deployment/{SAMPLE_DEPLOYMENT}" in run.output
    assert f"KUBECONFIG={kubeconfig}" in run.output
    # One replica, private to the ENV on a shared broker, holds the three bases' Leases.
    assert "REPLICAS (1 live; 3/3 bases held)" in run.output
    assert re.search(rf"\n +{test_env}-replica-1 +live +3 +0\n", run.output), run.output
    assert f"operator: pid {run.operator_pids()[0]} (CLIENT_ID {test_env}-replica-1)" in (
        run.output
    )
    await _nothing_left(k8s_api, run, test_env, namespace, state_dir)


async def test_the_demo_explains_why_nothing_became_ready(
    k8s_api: client.ApiClient,
    kubeconfig: Path,
    mqtt_broker: BrokerInfo,
    test_env: str,
    namespace: str,
    tmp_path: Path,
) -> None:
    state_dir = tmp_path / "demo"
    # No bases: the sample's pod can never be scheduled. Two replicas, whose membership
    # Leases go to the test's namespace (NAMESPACE, as the operators read it).
    run = await _run_demo(
        kubeconfig,
        mqtt_broker,
        test_env,
        namespace,
        state_dir,
        "--bases=0",
        "--replicas=2",
        "--timeout=15",
        deadline=120,
        environment={"NAMESPACE": namespace},
    )
    assert run.code == 1, run.output
    assert "The demo failed: timed out after 15s waiting for the sample's module pod" in (
        run.output
    )
    assert re.search(
        rf"{SAMPLE_DEPLOYMENT}-\S+ +- +- +Pending +False +Unschedulable", (run.output)
    ), run.output
    assert "FailedScheduling" in run.output, "the diagnosis lists the namespace's events"
    assert f"Last lines of the operator log of {test_env}-replica-2" in run.output
    assert len(run.operator_pids()) == 2, run.output
    # Both replicas are members; no node Lease exists yet.
    assert "REPLICAS (2 live; 0/0 bases held)" in run.output
    for number in (1, 2):
        assert re.search(rf"\n +{test_env}-replica-{number} +live +0 +0\n", run.output)
    await _nothing_left(k8s_api, run, test_env, namespace, state_dir, namespace)
