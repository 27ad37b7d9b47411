"""The demo's pure parts: reading the sample, the live view, the hints, its arguments."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio import client

from module_controller import cli
from module_controller.demo import (
    BaseRow,
    DemoState,
    NodeRow,
    PodRow,
    Sample,
    Snapshot,
    default_sample,
    kubectl_hints,
    next_version,
    pod_row,
    render,
    shell_exports,
    status_line,
    update_patch,
)
from module_controller.testbed.mosquitto import BrokerInfo

NODE_A = "virtual-node-11111111-1111-1111-1111-111111111111"
NODE_B = "virtual-node-22222222-2222-2222-2222-222222222222"


@pytest.fixture
def sample() -> Sample:
    return Sample.from_manifest(yaml.safe_load(default_sample().read_text()), None)


def _snapshot(pods: list[PodRow]) -> Snapshot:
    return Snapshot(
        bases=[
            BaseRow(NODE_A.removeprefix("virtual-node-"), "127.0.1.1", "127.0.1.1:1238", True),
            BaseRow(NODE_B.removeprefix("virtual-node-"), "127.0.1.2", "127.0.1.2:1238", True),
        ],
        nodes=[
            NodeRow(NODE_A, "base 1.1.1", "127.0.1.1", "True", "BaseHeartbeat"),
            NodeRow(NODE_B, "base 1.1.1", "127.0.1.2", "True", "BaseHeartbeat"),
        ],
        pods=pods,
    )


def test_the_seed_sample_is_read_as_is(sample: Sample) -> None:
    assert sample.name == "test-module-deployment"
    assert sample.namespace == "default"
    assert sample.selector == {"app": "test-module-deployment-non-peer"}
    assert (sample.container, sample.biz_version) == ("biz1", "0.0.1-SNAPSHOT")
    assert sample.owns({"app": "test-module-deployment-non-peer", "pod-template-hash": "x"})
    assert not sample.owns({"app": "other"})
    moved = Sample.from_manifest(yaml.safe_load(default_sample().read_text()), "shop")
    assert moved.namespace == "shop"


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("0.0.1-SNAPSHOT", "0.0.2-SNAPSHOT"),
        ("1.2.9", "1.2.10"),
        ("2024.05", "2024.06"),
        ("latest", "latest-2"),
    ],
)
def test_the_next_version_counts_up_the_last_number(version: str, expected: str) -> None:
    assert next_version(version) == expected


def test_the_update_changes_jar_and_biz_version_in_one_patch(sample: Sample) -> None:
    patch = json.loads(update_patch(sample))
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "biz1"
    assert container["image"].endswith("/biz1-web-single-host-0.0.2-SNAPSHOT-ark-biz.jar")
    assert container["env"] == [{"name": "BIZ_VERSION", "value": "0.0.2-SNAPSHOT"}]
    assert "'" not in update_patch(sample), "it goes inside single quotes in the hint"


def test_the_hints_query_the_base_that_runs_the_module(sample: Sample) -> None:
    running = PodRow("test-module-deployment-x", NODE_B, "127.0.1.2", "Running", True, "")
    hints = kubectl_hints(
        sample, _snapshot([running]), Path("/state/kubeconfig"), ["/bin dir", "/venv/bin"]
    )
    text = "\n".join(hints)
    assert hints[0] == "export KUBECONFIG=/state/kubeconfig PATH='/bin dir':/venv/bin:\"$PATH\""
    assert "kubectl get pod -n default --field-selector status.podIP=127.0.1.2 -o wide" in text
    assert f"kubectl get pod -n default --field-selector spec.nodeName={NODE_B} -o wide" in text
    assert "kubectl -n default rollout undo deployment/test-module-deployment" in text
    assert "kubectl -n default scale deployment/test-module-deployment --replicas=3" in text
    assert "kubectl -n default delete deployment/test-module-deployment" in text
    assert (
        f"kubectl -n default patch deployment/test-module-deployment -p '{update_patch(sample)}'"
        in (text)
    )
    assert "curl -s -X POST http://127.0.1.2:1238/queryAllBiz" in text


def test_without_nodes_the_hints_keep_placeholders(sample: Sample) -> None:
    hints = kubectl_hints(sample, Snapshot([], [], []), Path("/k"), ["/bin"])
    text = "\n".join(hints)
    assert "status.podIP=<baseIP>" in text
    assert "spec.nodeName=virtual-node-<baseUUID>" in text
    assert "curl" not in text


def test_the_view_shows_bases_nodes_pods_and_hints(sample: Sample) -> None:
    pods = [
        PodRow("test-module-deployment-a", NODE_A, "127.0.1.1", "Running", True, ""),
        PodRow("test-module-deployment-b", "", "", "Pending", False, "Unschedulable: no nodes"),
    ]
    snapshot = _snapshot(pods)
    hints = kubectl_hints(sample, snapshot, Path("/k"), ["/bin"])
    text = render(snapshot, header=["HEADER"], sample=sample, hints=hints)
    lines = text.splitlines()
    assert lines[0] == "HEADER"
    assert "BASES (2 simulated: 'base' 1.1.1)" in lines
    assert "NODES (2/2 Ready)" in lines
    assert (
        "MODULE PODS in default (module-controller.koupleless.io/component=module; 1/2 Ready)"
        in lines
    )
    (pending,) = [line for line in lines if "test-module-deployment-b" in line]
    assert pending.split() == [
        "test-module-deployment-b",
        "-",
        "-",
        "Pending",
        "False",
        "Unschedulable:",
        "no",
        "nodes",
    ]
    # Columns line up: each pod row's NODE column starts where the header's does.
    (header,) = [line for line in lines if line.strip().startswith("NAME") and "POD IP" in line]
    column = header.index("NODE")
    (running,) = [line for line in lines if "test-module-deployment-a" in line]
    assert running[column:].startswith(NODE_A)
    assert lines[-len(hints) :] == [f"  {hint}" for hint in hints]


def test_an_empty_view_says_so(sample: Sample) -> None:
    text = render(
        Snapshot([], [], [], error="connection refused"), header=[], sample=sample, hints=[]
    )
    assert "  none yet" in text
    assert "(could not read the cluster: connection refused)" in text


def _pod(**status: Any) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name="m-1", namespace="default"),
        spec=client.V1PodSpec(containers=[client.V1Container(name="biz1")], node_name=None),
        status=client.V1PodStatus(**status),
    )


def test_a_pod_row_says_why_a_pod_is_not_ready() -> None:
    unscheduled = _pod(
        phase="Pending",
        conditions=[
            client.V1PodCondition(
                type="PodScheduled",
                status="False",
                reason="Unschedulable",
                message="0/3 nodes are available:\n 3 node(s) didn't match affinity.",
            )
        ],
    )
    row = pod_row(unscheduled)
    assert (row.phase, row.ready, row.node) == ("Pending", False, "")
    assert row.detail == "Unschedulable: 0/3 nodes are available: 3 node(s) didn't match affinity."

    ready = _pod(
        phase="Running",
        pod_ip="127.0.1.1",
        conditions=[
            client.V1PodCondition(type="PodScheduled", status="True"),
            client.V1PodCondition(type="Ready", status="True"),
        ],
    )
    assert pod_row(ready) == PodRow("m-1", "", "127.0.1.1", "Running", True, "")

    deleting = _pod(phase="Running", conditions=[])
    deleting.metadata.deletion_timestamp = datetime.datetime.now(datetime.UTC)
    assert pod_row(deleting).detail == "deleting"


def test_the_status_line_for_pipes() -> None:
    pods = [PodRow("p", NODE_A, "127.0.1.1", "Pending", False, "installing")]
    line = status_line(_snapshot(pods))
    assert line == (
        f"bases 2/2 connected; nodes 2/2 Ready; module pods: p Pending on {NODE_A} (installing)"
    )


def test_the_exports_point_kubectl_and_the_simulator_at_the_demo() -> None:
    state = DemoState(
        kubeconfig="/state/kube config",
        broker=BrokerInfo(host="127.0.0.1", port=1883, username="u", password="p w"),
        path=["/kubectl", "/venv/bin"],
        env="dev",
        namespace="default",
    )
    assert shell_exports(state).splitlines() == [
        "export KUBECONFIG='/state/kube config'",
        "export MQTT_BROKER=127.0.0.1",
        "export MQTT_PORT=1883",
        "export MQTT_USERNAME=u",
        "export MQTT_PASSWORD='p w'",
        'export PATH=/kubectl:/venv/bin:"$PATH"',
    ]


def test_an_existing_cluster_needs_a_broker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MQTT_BROKER", raising=False)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("{}")
    code = cli.main(["demo", "--kubeconfig", str(kubeconfig), "--state-dir", str(tmp_path)])
    assert code == 2
    assert "--kubeconfig needs a broker: --mqtt-broker HOST" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bases", "-1"], "--bases cannot be negative"),
        (["--timeout", "0"], "--timeout must be positive"),
        (["--kubeconfig", "/nonexistent/kubeconfig"], "no such file"),
        (["--sample", "/nonexistent/sample.yaml"], "no such file"),
    ],
)
def test_bad_arguments_are_refused_before_anything_starts(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["demo", "--state-dir", str(tmp_path / "state"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "state").exists(), "nothing was started"


def test_exports_without_a_running_demo_say_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["demo", "--exports", "--state-dir", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"No demo is running with state in {tmp_path}" in captured.err
