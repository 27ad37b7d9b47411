"""The testbed is a real cluster: real scheduling, real controllers, real node health.

These tests create their own Nodes (no operator is involved) and document what the
operator must do for its virtual nodes: be Ready, have allocatable resources, and renew
a Lease in kube-node-lease, or the node-lifecycle controller declares them unreachable.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller.testbed.binaries import KUBERNETES_VERSION
from module_controller.testbed.kube_reads import ready_condition
from tests.waiting import wait_for

VIRTUAL_NODE_TAINT = client.V1Taint(
    key="schedule.koupleless.io/virtual-node", value="True", effect="NoExecute"
)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _ready_node(name: str) -> client.V1Node:
    now = _now()
    return client.V1Node(
        metadata=client.V1ObjectMeta(
            name=name, labels={"kubernetes.io/hostname": name, "testbed-test": "true"}
        ),
        spec=client.V1NodeSpec(taints=[VIRTUAL_NODE_TAINT]),
        status=client.V1NodeStatus(
            conditions=[
                client.V1NodeCondition(
                    type="Ready",
                    status="True",
                    reason="TestReady",
                    message="created ready by the test",
                    last_heartbeat_time=now,
                    last_transition_time=now,
                )
            ],
            allocatable={"pods": "110", "cpu": "8", "memory": "16Gi"},
            capacity={"pods": "110", "cpu": "8", "memory": "16Gi"},
            addresses=[client.V1NodeAddress(type="InternalIP", address="127.0.0.1")],
        ),
    )


NodeFactory = Callable[[str], Awaitable[str]]


@pytest.fixture
async def make_node(k8s_api: client.ApiClient) -> AsyncIterator[NodeFactory]:
    """Create Ready nodes with unique names; delete them (and their leases) afterwards."""
    core = client.CoreV1Api(k8s_api)
    coordination = client.CoordinationV1Api(k8s_api)
    created: list[str] = []

    async def make(prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        await core.create_node(_ready_node(name))
        created.append(name)
        return name

    yield make
    for name in created:
        for delete in (
            core.delete_node(name),
            coordination.delete_namespaced_lease(name, "kube-node-lease"),
        ):
            try:
                await delete
            except ApiException as error:
                if error.status != 404:
                    raise


async def _renew_lease_forever(api: client.ApiClient, node: str, every: float) -> None:
    """Do what a kubelet (and our operator) does: keep the node's Lease fresh."""
    coordination = client.CoordinationV1Api(api)
    core = client.CoreV1Api(api)
    owner = await core.read_node(node)
    lease = client.V1Lease(
        metadata=client.V1ObjectMeta(
            name=node,
            namespace="kube-node-lease",
            owner_references=[
                client.V1OwnerReference(
                    api_version="v1", kind="Node", name=node, uid=owner.metadata.uid
                )
            ],
        ),
        spec=client.V1LeaseSpec(holder_identity=node, lease_duration_seconds=40, renew_time=_now()),
    )
    await coordination.create_namespaced_lease("kube-node-lease", lease)
    while True:
        await asyncio.sleep(every)
        await coordination.patch_namespaced_lease(
            node,
            "kube-node-lease",
            {"spec": {"renewTime": _now().isoformat().replace("+00:00", "Z")}},
        )


def _taint_keys(node: client.V1Node) -> set[str]:
    return {f"{t.key}:{t.effect}" for t in node.spec.taints or []}


def _describe_node(node: client.V1Node) -> str:
    ready = ready_condition(node)
    return (
        f"node {node.metadata.name}: Ready={ready.status if ready else None} "
        f"({ready.reason if ready else ''}), taints={sorted(_taint_keys(node))}"
    )


async def test_version_reports_the_pinned_release(k8s_api: client.ApiClient) -> None:
    info = await client.VersionApi(k8s_api).get_code()
    assert info.git_version == f"v{KUBERNETES_VERSION}"
    assert (info.major, info.minor) == tuple(KUBERNETES_VERSION.split(".")[:2])


async def test_scheduler_binds_a_deployments_pods_to_a_ready_node(
    k8s_api: client.ApiClient, namespace: str, make_node: NodeFactory
) -> None:
    core = client.CoreV1Api(k8s_api)
    apps = client.AppsV1Api(k8s_api)
    node = await make_node("sched")
    renewer = asyncio.create_task(_renew_lease_forever(k8s_api, node, every=3))
    labels = {"app": "testbed-probe"}
    deployment = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="probe"),
        spec=client.V1DeploymentSpec(
            replicas=3,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(
                    containers=[client.V1Container(name="main", image="example.invalid/none")],
                    node_selector={"kubernetes.io/hostname": node},
                    tolerations=[
                        client.V1Toleration(
                            key=VIRTUAL_NODE_TAINT.key,
                            operator="Equal",
                            value="True",
                            effect="NoExecute",
                        )
                    ],
                ),
            ),
        ),
    )
    try:
        await apps.create_namespaced_deployment(namespace, deployment)

        async def replica_set_owned_by_deployment() -> bool:
            sets = await apps.list_namespaced_replica_set(namespace)
            return any(
                ref.kind == "Deployment" and ref.name == "probe"
                for rs in sets.items
                for ref in rs.metadata.owner_references or []
            )

        async def three_pods_bound() -> bool:
            pods = await core.list_namespaced_pod(namespace, label_selector="app=testbed-probe")
            bound = [p for p in pods.items if p.spec.node_name == node]
            return len(pods.items) == 3 and len(bound) == 3

        async def diagnose() -> str:
            pods = await core.list_namespaced_pod(namespace)
            events = await core.list_namespaced_event(namespace)
            return "\n".join(
                [_describe_node(await core.read_node(node))]
                + [f"pod {p.metadata.name} node={p.spec.node_name}" for p in pods.items]
                + [f"event {e.reason}: {e.message}" for e in events.items[-10:]]
            )

        await wait_for(
            replica_set_owned_by_deployment,
            timeout=30,
            what="the deployment controller to create a ReplicaSet",
            diagnose=diagnose,
        )
        # The scheduler only binds once the node-lifecycle controller has lifted the
        # not-ready taint that TaintNodesByCondition admission put on the new node.
        await wait_for(
            three_pods_bound,
            timeout=60,
            what=f"the scheduler to bind 3 pods to {node}",
            diagnose=diagnose,
        )
    finally:
        renewer.cancel()
        pods = await core.list_namespaced_pod(namespace)
        for pod in pods.items:  # no kubelet finishes their deletion: do it as the kubelet would
            await core.delete_namespaced_pod(pod.metadata.name, namespace, grace_period_seconds=0)


async def test_node_lifecycle_marks_a_silent_node_unreachable_and_keeps_a_leased_one(
    k8s_api: client.ApiClient, make_node: NodeFactory, node_monitor_grace_period: int
) -> None:
    core = client.CoreV1Api(k8s_api)
    silent = await make_node("silent")
    leased = await make_node("leased")
    renewer = asyncio.create_task(_renew_lease_forever(k8s_api, leased, every=3))
    started = asyncio.get_running_loop().time()

    async def diagnose() -> str:
        nodes = [await core.read_node(silent), await core.read_node(leased)]
        return "\n".join(_describe_node(n) for n in nodes)

    try:

        async def silent_is_unreachable() -> bool:
            node = await core.read_node(silent)
            ready = ready_condition(node)
            return (
                ready is not None
                and ready.status == "Unknown"
                and "node.kubernetes.io/unreachable:NoExecute" in _taint_keys(node)
            )

        await wait_for(
            silent_is_unreachable,
            timeout=node_monitor_grace_period + 40,
            what=f"{silent} (no Lease) to become Ready=Unknown and tainted unreachable",
            diagnose=diagnose,
        )
        elapsed = asyncio.get_running_loop().time() - started
        assert elapsed >= node_monitor_grace_period * 0.8, (
            f"the silent node went Unknown after {elapsed:.0f}s, before the "
            f"{node_monitor_grace_period}s grace period: the test is not measuring leases"
        )
        # Past the grace period, and one more monitor period for good measure.
        await asyncio.sleep(6)
        node = await core.read_node(leased)
        ready = ready_condition(node)
        assert ready is not None and ready.status == "True", _describe_node(node)
        assert not any("unreachable" in key for key in _taint_keys(node)), _describe_node(node)
    finally:
        renewer.cancel()


async def test_kubectl_is_built_for_the_same_release(kubectl: list[str]) -> None:
    result = subprocess.run(
        [*kubectl, "version", "-o", "json"], capture_output=True, text=True, check=True
    )
    versions: dict[str, Any] = json.loads(result.stdout)
    assert versions["clientVersion"]["gitVersion"] == f"v{KUBERNETES_VERSION}"
    assert versions["serverVersion"]["gitVersion"] == f"v{KUBERNETES_VERSION}"
