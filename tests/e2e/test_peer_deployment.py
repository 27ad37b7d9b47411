"""Peer Deployments, end to end: spec.replicas follows the Ready bases of the cluster.

The real operator (ENABLE_MODULE_REPLICAS_SYNC_WITH_BASE=true, a 2 s debounce), simulated
bases of one cluster of this test's own, a Deployment labelled strategy=peer that names
the cluster in its pod template's nodeSelector and spreads one pod per base. A base that
joins gets the module from its baseline, before any pod of it is scheduled there.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller.modules.peer import (
    CLUSTER_LABEL,
    FIELD_MANAGER,
    SCALED_REASON,
    STRATEGY_LABEL,
)
from module_controller.protocol.states import BizState
from module_controller.simulator.base import SimulatedBase
from module_controller.testbed.kube_reads import is_ready, is_ready_and_untainted
from module_controller.testbed.operator_process import OperatorProcess
from tests.e2e.conftest import BaseFactory, OperatorFactory
from tests.e2e.modules_support import deployment, manifest, modules_of
from tests.waiting import wait_for

pytestmark = pytest.mark.usefixtures("env_nodes_cleanup")

DEBOUNCE_SECONDS = 2
NAME = "peer-module"
BIZ = ("biz-peer", "1.0.0")


class Peers:
    """This test's operator, bases, namespace and Deployment, with a diagnosis for every wait."""

    def __init__(self, api: client.ApiClient, namespace: str, operator: OperatorProcess) -> None:
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.namespace = namespace
        self.operator = operator
        self.bases: list[SimulatedBase] = []

    @staticmethod
    def node_of(base: SimulatedBase) -> str:
        return f"virtual-node-{base.identity}"

    async def pods(self) -> list[client.V1Pod]:
        listed = await self.core.list_namespaced_pod(self.namespace, label_selector=f"app={NAME}")
        return [p for p in listed.items if p.metadata.deletion_timestamp is None]

    async def replicas(self) -> int:
        return int((await self.apps.read_namespaced_deployment(NAME, self.namespace)).spec.replicas)

    async def events(self) -> list[str]:
        listed = await self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={NAME}"
        )
        return [e.message for e in listed.items if e.reason == SCALED_REASON]

    async def describe(self) -> str:
        lines = []
        try:
            lines.append(f"deployment replicas={await self.replicas()}")
            lines.append(f"events: {await self.events()}")
        except ApiException as error:
            lines.append(f"deployment: {error.status} {error.reason}")
        for pod in await self.pods():
            lines.append(f"pod {pod.metadata.name} node={pod.spec.node_name} ready={is_ready(pod)}")
        for base in self.bases:
            try:
                node = await self.core.read_node(self.node_of(base))
                shown = f"Ready={is_ready(node)} untainted={is_ready_and_untainted(node)}"
            except ApiException as error:
                shown = f"node {error.status}"
            lines.append(f"base {self.node_of(base)} {shown}: {base.describe()}")
        lines.append(self.operator.tail(40))
        return "\n".join(lines)

    async def wait_ready_nodes(self, bases: list[SimulatedBase]) -> None:
        async def ready() -> bool:
            for base in bases:
                try:
                    node = await self.core.read_node(self.node_of(base))
                except ApiException:
                    return False
                if not is_ready_and_untainted(node):
                    return False
            return True

        await wait_for(ready, timeout=40, what="the bases' nodes Ready", diagnose=self.describe)

    async def wait_scaled(self, replicas: int, timeout: float = 40) -> list[client.V1Pod]:
        """spec.replicas is `replicas`, and that many pods are Ready, one per base."""

        async def scaled() -> tuple[list[client.V1Pod]] | None:
            if await self.replicas() != replicas:
                return None
            pods = await self.pods()
            nodes = {p.spec.node_name for p in pods if is_ready(p)}
            return (pods,) if len(pods) == replicas and len(nodes) == replicas else None

        what = f"{replicas} replicas, each Ready on its own base"
        (pods,) = await wait_for(scaled, timeout=timeout, what=what, diagnose=self.describe)
        return pods


def peer_deployment(env: str, cluster: str) -> Any:
    body = deployment(NAME, env, 1, [BIZ], spread=True)
    body["metadata"]["labels"] = {STRATEGY_LABEL: "peer"}
    body["spec"]["template"]["spec"]["nodeSelector"][CLUSTER_LABEL] = cluster
    return body


async def test_a_peer_deployment_follows_the_ready_bases_of_its_cluster(
    k8s_api: client.ApiClient,
    namespace: str,
    run_operator: OperatorFactory,
    start_base: BaseFactory,
    test_env: str,
) -> None:
    operator = run_operator(
        ENABLE_MODULE_REPLICAS_SYNC_WITH_BASE="true",
        PEER_REPLICAS_DEBOUNCE_SECONDS=str(DEBOUNCE_SECONDS),
        INVENTORY_POLL_SECONDS="3",
    )
    cluster = f"cluster-{test_env}"
    scene = Peers(k8s_api, namespace, operator)
    scene.bases = [await start_base(cluster_name=cluster) for _ in range(3)]
    await scene.wait_ready_nodes(scene.bases)

    # --- three bases: the Deployment, made with one replica, gets three -----------------------
    await scene.apps.create_namespaced_deployment(
        namespace, manifest(peer_deployment(test_env, cluster))
    )
    await scene.wait_scaled(3)

    # --- a fourth base: its baseline brings the module before any pod is placed there --------
    fourth = await start_base(cluster_name=cluster)
    scene.bases.append(fourth)
    await fourth.wait_for_module(*BIZ, BizState.ACTIVATED, timeout=15)
    placed = [
        p.metadata.name for p in await scene.pods() if p.spec.node_name == scene.node_of(fourth)
    ]
    assert placed == [], "the module came before any pod was placed on the new base"
    (baseline,) = fourth.received("baseline")
    assert [(m["bizName"], m["bizVersion"]) for m in baseline.payload] == [BIZ]
    pods = await scene.wait_scaled(4)
    assert scene.node_of(fourth) in {p.spec.node_name for p in pods}
    assert fourth.received("installBiz") == [], "installed by the baseline, not a command"
    assert modules_of(fourth) == {f"{BIZ[0]}:{BIZ[1]}": "ACTIVATED"}

    # --- the fourth base dies: back to three once its node is NotReady and the count held ---
    await fourth.stop()

    async def not_ready() -> bool:
        node = await scene.core.read_node(scene.node_of(fourth))
        return not is_ready(node)

    await wait_for(
        not_ready, timeout=30, what="the dead base's node NotReady", diagnose=scene.describe
    )
    not_ready_at = time.monotonic()
    assert await scene.replicas() == 4, "not at once: the count must hold first"

    async def three() -> bool:
        return await scene.replicas() == 3

    await wait_for(three, timeout=20, what="3 replicas again", diagnose=scene.describe)
    assert time.monotonic() - not_ready_at >= DEBOUNCE_SECONDS - 0.5

    # --- what people see: Events on the Deployment, and who wrote spec.replicas -------------
    expected = [
        f"Scaled peer Deployment from 1 to 3 replicas: 3 Ready bases in cluster {cluster}",
        f"Scaled peer Deployment from 3 to 4 replicas: 4 Ready bases in cluster {cluster}",
        f"Scaled peer Deployment from 4 to 3 replicas: 3 Ready bases in cluster {cluster}",
    ]

    async def reported() -> bool:
        return sorted(await scene.events()) == sorted(expected)

    await wait_for(reported, timeout=15, what=f"the Events {expected}", diagnose=scene.describe)
    body = await scene.apps.read_namespaced_deployment(NAME, namespace)
    owners = [
        entry.manager
        for entry in body.metadata.managed_fields or []
        if "f:replicas" in ((entry.fields_v1 or {}).get("f:spec") or {})
    ]
    assert owners == [FIELD_MANAGER], owners
    log = operator.log.read_text(errors="replace")
    assert "Traceback" not in log, operator.tail()
