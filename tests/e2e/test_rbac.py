"""The shipped ClusterRole is enough: the operator runs under a ServiceAccount bound only to
the rules of manifests/02-clusterrole.yaml, with a token from the TokenRequest API, through
the node lifecycle and the module lifecycle, and the API server never says Forbidden.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller.protocol.states import BizState
from module_controller.settings import SEED_MODULE_LABEL
from module_controller.simulator.base import SimulatedBase
from module_controller.testbed.operator_process import OperatorProcess
from tests.e2e.conftest import BaseFactory, OperatorFactory
from tests.e2e.rbac_support import Restricted, assert_never_forbidden
from tests.e2e.test_nodes import Cluster, node_name
from tests.waiting import wait_for

pytestmark = pytest.mark.usefixtures("env_nodes_cleanup")

BIZ_NAME = "biz1"
BIZ_VERSION = "0.0.1-SNAPSHOT"
BIZ_JAR = (
    "https://serverless-opensource.oss-cn-shanghai.aliyuncs.com/module-packages/stable/"
    "biz1-web-single-host-0.0.1-SNAPSHOT-ark-biz.jar"
)


def _can_i(kubectl: list[str], kubeconfig: Path, *what: str) -> str:
    # The session kubectl's --kubeconfig comes first; a later one wins.
    result = subprocess.run(
        [*kubectl, "auth", "can-i", *what, f"--kubeconfig={kubeconfig}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.stdout.strip()


async def _start(
    restricted: Restricted,
    kubectl: list[str],
    k8s_api: client.ApiClient,
    run_operator: OperatorFactory,
    start_base: BaseFactory,
) -> tuple[Cluster, OperatorProcess, SimulatedBase]:
    # The token really is the ServiceAccount's, and the ServiceAccount really is limited.
    assert _can_i(kubectl, restricted.kubeconfig, "create", "nodes") == "yes"
    assert _can_i(kubectl, restricted.kubeconfig, "list", "secrets", "-A") == "no"
    # Kopf's cluster scanning is off: neither namespaces nor CRDs are granted, or needed.
    assert _can_i(kubectl, restricted.kubeconfig, "list", "namespaces") == "no"
    crds = "customresourcedefinitions.apiextensions.k8s.io"
    assert _can_i(kubectl, restricted.kubeconfig, "watch", crds) == "no"
    operator = run_operator(KUBECONFIG=str(restricted.kubeconfig))
    cluster = Cluster(k8s_api, operator)
    base = await start_base()
    await cluster.wait_ready(node_name(base))
    return cluster, operator, base


async def _base_leaves(cluster: Cluster, base: SimulatedBase) -> None:
    name = node_name(base)
    await base.graceful_exit()
    await cluster.wait_gone(name, timeout=15)
    # As in test_nodes: the Lease goes with its node, written apart from it.
    await cluster.wait_lease_gone(name)


async def test_the_cluster_role_is_enough_for_the_node_lifecycle(
    restricted: Restricted,
    kubectl: list[str],
    k8s_api: client.ApiClient,
    run_operator: OperatorFactory,
    start_base: BaseFactory,
) -> None:
    cluster, operator, base = await _start(restricted, kubectl, k8s_api, run_operator, start_base)
    await _base_leaves(cluster, base)
    assert_never_forbidden(operator)


def _module_pod(name: str, node: str) -> Any:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {SEED_MODULE_LABEL: "module"}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": [
                {
                    "key": "schedule.koupleless.io/virtual-node",
                    "operator": "Equal",
                    "value": "True",
                    "effect": "NoExecute",
                }
            ],
            "containers": [
                {
                    "name": BIZ_NAME,
                    "image": BIZ_JAR,
                    "env": [{"name": "BIZ_VERSION", "value": BIZ_VERSION}],
                }
            ],
        },
    }


async def _describe_pod(
    core: client.CoreV1Api, namespace: str, name: str, cluster: Cluster, base: SimulatedBase
) -> str:
    try:
        pod = await core.read_namespaced_pod(name, namespace)
        conditions = [f"{c.type}={c.status}/{c.reason or ''}" for c in pod.status.conditions or []]
        seen = (
            f"pod {namespace}/{name}: node={pod.spec.node_name} phase={pod.status.phase} "
            f"podIP={pod.status.pod_ip} conditions={conditions} "
            f"deleting={pod.metadata.deletion_timestamp is not None}"
        )
    except ApiException as error:
        seen = f"pod {namespace}/{name}: {error.status} {error.reason}"
    return f"{seen}\nbase {base.label}: {base.describe()}\n{await cluster.describe()}"


async def test_the_cluster_role_is_enough_for_the_module_lifecycle(
    restricted: Restricted,
    kubectl: list[str],
    k8s_api: client.ApiClient,
    namespace: str,
    run_operator: OperatorFactory,
    start_base: BaseFactory,
) -> None:
    cluster, operator, base = await _start(restricted, kubectl, k8s_api, run_operator, start_base)
    core = client.CoreV1Api(k8s_api)
    pod_name = "module-under-rbac"

    def diagnose() -> Any:
        return _describe_pod(core, namespace, pod_name, cluster, base)

    # --- the module block (needs the module pods of issue 5) ---------------------------------
    await core.create_namespaced_pod(namespace, _module_pod(pod_name, node_name(base)))

    async def ready() -> bool:
        pod = await core.read_namespaced_pod(pod_name, namespace)
        conditions = {c.type: c.status for c in pod.status.conditions or []}
        return bool(
            pod.status.phase == "Running"
            and conditions.get("Ready") == "True"
            and pod.status.pod_ip == base.config.ip
        )

    await wait_for(ready, timeout=45, what=f"module pod {pod_name} Ready", diagnose=diagnose)
    assert base.module(BIZ_NAME, BIZ_VERSION) is not None, base.describe()
    await base.wait_for_module(BIZ_NAME, BIZ_VERSION, BizState.ACTIVATED)

    await core.delete_namespaced_pod(pod_name, namespace)

    async def gone() -> bool:
        try:
            await core.read_namespaced_pod(pod_name, namespace)
        except ApiException as error:
            if error.status == 404:
                return True
            raise
        return False

    await wait_for(gone, timeout=45, what=f"module pod {pod_name} removed", diagnose=diagnose)
    await base.wait_for_module(BIZ_NAME, BIZ_VERSION, None)
    # --- end of the module block ---------------------------------------------------------------

    await _base_leaves(cluster, base)
    assert_never_forbidden(operator)
