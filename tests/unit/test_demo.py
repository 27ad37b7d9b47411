"""The demo's pure parts: reading the sample, the live view (with its bases per replica,
from Leases), the hints, its arguments."""

from __future__ import annotations

import datetime
import json
import re
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
    ReplicaRow,
    Sample,
    Snapshot,
    default_sample,
    kubectl_hints,
    next_version,
    pod_row,
    render,
    replica_rows,
    shell_exports,
    status_line,
    update_patch,
)
from module_controller.demo.operators import client_ids
from module_controller.testbed.mosquitto import BrokerInfo
from module_controller.testbed.process import ProcessRecord

NODE_A = "virtual-node-11111111-1111-1111-1111-111111111111"
NODE_B = "virtual-node-22222222-2222-2222-2222-222222222222"
NOW = datetime.datetime(2025, 6, 1, 12, 0, 0, tzinfo=datetime.UTC)


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


def _lease(holder: str | None, renewed_ago: float | None, duration: int = 40) -> dict[str, Any]:
    """A Lease as the API serves it (camelCase), renewed `renewed_ago` seconds before NOW."""
    spec: dict[str, Any] = {"leaseDurationSeconds": duration}
    if holder is not None:
        spec["holderIdentity"] = holder
    if renewed_ago is not None:
        renewed = NOW - datetime.timedelta(seconds=renewed_ago)
        spec["renewTime"] = renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"metadata": {"name": "x", "resourceVersion": "1"}, "spec": spec}


def test_bases_are_counted_per_replica_from_the_leases() -> None:
    node_leases = [
        _lease("replica-2", 1),
        _lease("replica-10", 1),
        _lease("replica-2", 39),
        _lease("replica-3", 41),  # ran out: replica-3 died and nobody took it over yet
        _lease("replica-3", 1),
        _lease(None, 0),  # released on a clean stop, not claimed yet
        _lease("", 100),
    ]
    member_leases = [
        _lease("replica-2", 1, duration=15),
        _lease("replica-10", 14, duration=15),
        _lease("replica-3", 16, duration=15),
        _lease("replica-1", 2, duration=15),  # a member that holds nothing (yet)
        _lease(None, 1, duration=15),
    ]
    assert replica_rows(node_leases, member_leases, NOW) == [
        ReplicaRow("replica-1", "live", bases=0, expired=0),
        ReplicaRow("replica-2", "live", bases=2, expired=0),
        ReplicaRow("replica-3", "expired", bases=1, expired=1),
        ReplicaRow("replica-10", "live", bases=1, expired=0),
        ReplicaRow("", "", bases=2),
    ]


def test_a_holder_without_membership_lease_and_an_unrenewed_lease_show_as_such() -> None:
    rows = replica_rows([_lease("gone", 5), _lease("gone", None)], [], NOW)
    assert rows == [ReplicaRow("gone", "none", bases=1, expired=1)]
    # A replica seen with both an old and a fresh membership Lease is live.
    members = [_lease("r", 60, duration=15), _lease("r", 1, duration=15)]
    assert replica_rows([], members, NOW) == [ReplicaRow("r", "live", bases=0)]
    assert replica_rows([], [], NOW) == []


def test_the_view_shows_bases_per_replica(sample: Sample) -> None:
    snapshot = _snapshot([])
    snapshot.replicas = [
        ReplicaRow("replica-1", "live", bases=2),
        ReplicaRow("replica-22", "expired", bases=0, expired=1),
        ReplicaRow("", "", bases=1),
    ]
    lines = render(snapshot, header=[], sample=sample, hints=[]).splitlines()
    start = lines.index("REPLICAS (1 live; 2/4 bases held)")
    table = lines[start + 1 : start + 5]
    # Columns are two spaces or more apart (a cell may hold one).
    assert [re.split(r" {2,}", line.strip()) for line in table] == [
        ["REPLICA", "MEMBERSHIP", "BASES", "EXPIRED"],
        ["replica-1", "live", "2", "0"],
        ["replica-22", "expired", "0", "1"],
        ["(no holder)", "-", "1", "-"],
    ]
    column = table[0].index("BASES")
    assert [line[column] for line in table[1:]] == ["2", "0", "1"], "the columns line up"
    assert lines[start + 5] == "", "the section ends with its table"
    assert (
        lines.index("NODES (2/2 Ready)")
        < start
        < lines.index(
            "MODULE PODS in default (module-controller.koupleless.io/component=module; 0/0 Ready)"
        )
    )
    assert status_line(snapshot).endswith(
        "; bases per replica: replica-1 2, replica-22 0 (1 expired) [membership expired], "
        "no holder 1"
    )


def test_before_any_lease_the_replicas_section_says_so(sample: Sample) -> None:
    lines = render(_snapshot([]), header=[], sample=sample, hints=[]).splitlines()
    start = lines.index("REPLICAS (0 live; 0/0 bases held)")
    assert lines[start + 1] == "  none yet"
    assert "per replica" not in status_line(_snapshot([]))


def test_replica_client_ids_are_private_to_the_env_on_a_shared_broker() -> None:
    assert client_ids("dev", 3, own_broker=True) == ["replica-1", "replica-2", "replica-3"]
    # Their MQTT client ids derive from them: two demos on one broker must not clash.
    assert client_ids("e2eab12", 2, own_broker=False) == [
        "e2eab12-replica-1",
        "e2eab12-replica-2",
    ]


def test_a_state_from_before_replicas_still_names_its_operator() -> None:
    record = ProcessRecord(name="operator", pid=42, start_ticks=7, log="/l")
    other = ProcessRecord(name="operator", pid=43, start_ticks=8, log="/m")
    fields = {"kubeconfig": "/k", "env": "dev", "namespace": "default", "path": ["/b"]}
    broker = {"host": "h", "port": 1, "username": "", "password": ""}
    old = DemoState.model_validate({**fields, "broker": broker, "operator": record.model_dump()})
    assert old.operator_records() == [record]
    new = DemoState.model_validate({**fields, "broker": broker, "operators": [record, other]})
    assert new.operator_records() == [record, other]
    assert DemoState.model_validate_json(new.model_dump_json()).operator_records() == [
        record,
        other,
    ]


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
        (["--replicas", "0"], "--replicas must be at least 1"),
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
