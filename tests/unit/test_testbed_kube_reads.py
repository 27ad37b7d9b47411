"""Whether a pod or a node is Ready, read from kubernetes_asyncio model objects or JSON."""

from __future__ import annotations

from kubernetes_asyncio import client

from module_controller.testbed.kube_reads import (
    health_taints,
    is_ready,
    is_ready_and_untainted,
    json_health_taints,
    json_is_ready,
    json_is_ready_and_untainted,
    ready_condition,
)


def _node(ready: str | None, *taints: str) -> client.V1Node:
    conditions = [client.V1NodeCondition(type="MemoryPressure", status="False")]
    if ready is not None:
        conditions.append(client.V1NodeCondition(type="Ready", status=ready, reason="Why"))
    return client.V1Node(
        metadata=client.V1ObjectMeta(name="n"),
        spec=client.V1NodeSpec(
            taints=[client.V1Taint(key=key, effect="NoSchedule") for key in taints] or None
        ),
        status=client.V1NodeStatus(conditions=conditions),
    )


def test_the_ready_condition_of_a_pod_or_a_node() -> None:
    pod = client.V1Pod(
        status=client.V1PodStatus(
            conditions=[
                client.V1PodCondition(type="PodScheduled", status="True"),
                client.V1PodCondition(type="Ready", status="False", reason="InstallFailed"),
            ]
        )
    )
    condition = ready_condition(pod)
    assert condition is not None and condition.reason == "InstallFailed"
    assert not is_ready(pod)
    assert is_ready(_node("True"))
    assert not is_ready(_node("Unknown"))


def test_no_status_or_no_ready_condition_is_not_ready() -> None:
    assert ready_condition(client.V1Pod()) is None
    assert ready_condition(client.V1Pod(status=client.V1PodStatus())) is None
    assert not is_ready(client.V1Pod(status=client.V1PodStatus()))
    assert ready_condition(_node(None)) is None


def test_a_node_is_ready_and_untainted_once_the_lifecycle_controller_agrees() -> None:
    fresh = _node("True", "node.kubernetes.io/not-ready", "schedule.koupleless.io/virtual-node")
    assert health_taints(fresh) == ["node.kubernetes.io/not-ready"]
    assert not is_ready_and_untainted(fresh)
    assert is_ready_and_untainted(_node("True", "schedule.koupleless.io/virtual-node"))
    assert not is_ready_and_untainted(_node("False"))
    assert health_taints(client.V1Node()) == []


async def test_the_json_readers_say_what_the_model_readers_say() -> None:
    async with client.ApiClient() as api:
        _agree_on_nodes(api)


def _agree_on_nodes(api: client.ApiClient) -> None:
    nodes = [
        _node("True"),
        _node("False"),
        _node(None),
        _node("True", "node.kubernetes.io/not-ready", "schedule.koupleless.io/virtual-node"),
        _node("True", "schedule.koupleless.io/virtual-node"),
        client.V1Node(),
    ]
    for node in nodes:
        as_json = api.sanitize_for_serialization(node)
        assert json_is_ready(as_json) == is_ready(node), as_json
        assert json_health_taints(as_json) == health_taints(node), as_json
        assert json_is_ready_and_untainted(as_json) == is_ready_and_untainted(node), as_json
    assert not json_is_ready({"status": None})
