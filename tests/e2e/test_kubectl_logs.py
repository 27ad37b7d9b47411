"""`kubectl logs <module pod>` shows the log of the base's own pod (KUBELET_PROXY_ENABLED).

The path is the real one: kubectl → kube-apiserver → the operator's kubelet proxy (the port
the virtual node advertises) → the API server again, for the base pod's log → that pod's
kubelet. The testbed has no kubelet and no container runtime, so the base pod's node is
`HostKubelet`, a stand-in that serves the pod's log from a file this test appends to.

The simulated base reports the host name `localhost`, so its pod is named `localhost`: the
API server reaches a node's kubelet at the node's preferred address, which by kube-apiserver's
default (`--kubelet-preferred-address-types` starting with Hostname) is the node's Hostname
address — the base's host name. `localhost` resolves everywhere, to where the operator
listens; with InternalIP preferred (kubeadm's setting) the base's loopback IP reaches it too.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller.kubelet_proxy.server import free_port
from module_controller.settings import SEED_MODULE_LABEL
from module_controller.testbed.host_kubelet import HostKubelet
from tests.e2e.conftest import BaseFactory, OperatorFactory
from tests.e2e.test_nodes import Cluster, node_name
from tests.e2e.test_rbac import (  # noqa: F401  (restricted: the fixture, used by name)
    Restricted,
    _assert_never_forbidden,
    restricted,
)
from tests.waiting import wait_for

pytestmark = [pytest.mark.usefixtures("env_nodes_cleanup"), pytest.mark.timeout(120)]

BASE_POD = "localhost"  # the base's host name, hence its pod's name (see above)
MODULE_POD = "biz1-module"
KUBECTL_SECONDS = 20.0
FIRST_LINES = "base started\nbiz1 installed\n"


@pytest.fixture
async def host_kubelet(k8s_api: client.ApiClient, tmp_path: Path) -> AsyncIterator[HostKubelet]:
    kubelet = HostKubelet(k8s_api, f"testbed-host-{uuid.uuid4().hex[:8]}", tmp_path / "logs")
    await kubelet.start()
    try:
        yield kubelet
    finally:
        await kubelet.stop()


async def kubectl_run(kubectl: list[str], *args: str) -> tuple[int, str, str]:
    """Run kubectl without blocking the loop: the stand-in kubelet answers from this loop."""
    process = await asyncio.create_subprocess_exec(
        *kubectl, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), KUBECTL_SECONDS)
    except TimeoutError:
        process.kill()
        await process.wait()
        what = " ".join(args)
        raise AssertionError(f"kubectl {what} did not finish in {KUBECTL_SECONDS}s") from None
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def module_pod(node: str) -> Any:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": MODULE_POD, "labels": {SEED_MODULE_LABEL: "module"}},
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
                    "name": "biz1",
                    "image": "https://repo.example/modules/biz1-0.0.1-ark-biz.jar",
                    "env": [{"name": "BIZ_VERSION", "value": "0.0.1"}],
                }
            ],
        },
    }


async def test_kubectl_logs_of_a_module_pod_show_its_base_pods_log(
    kubectl: list[str],
    k8s_api: client.ApiClient,
    namespace: str,
    run_operator: OperatorFactory,
    start_base: BaseFactory,
    host_kubelet: HostKubelet,
    restricted: Restricted,  # noqa: F811
) -> None:
    # Under the shipped ClusterRole only: pods/log is granted there, nothing else is needed.
    port = free_port()
    operator = run_operator(
        KUBECONFIG=str(restricted.kubeconfig),
        KUBELET_PROXY_ENABLED="true",
        KUBELET_PROXY_PORT=str(port),
    )
    cluster = Cluster(k8s_api, operator)
    core = client.CoreV1Api(k8s_api)
    base = await start_base(host_name=BASE_POD)
    node = await cluster.wait_ready(node_name(base))
    assert node.status.daemon_endpoints.kubelet_endpoint.port == port
    await core.create_namespaced_pod(namespace, module_pod(node.metadata.name))

    async def diagnose() -> str:
        try:
            pod = await core.read_namespaced_pod(MODULE_POD, namespace)
            seen = f"module pod: node={pod.spec.node_name} phase={pod.status.phase}"
        except ApiException as error:
            seen = f"module pod: {error.status} {error.reason}"
        streams = f"stand-in kubelet streams: {host_kubelet.active_streams}"
        return f"{seen}\n{streams}\n{await cluster.describe(node.metadata.name)}"

    async def scheduled() -> bool:
        pod = await core.read_namespaced_pod(MODULE_POD, namespace)
        return bool(pod.spec.node_name)

    await wait_for(scheduled, timeout=20, what="the module pod on the node", diagnose=diagnose)

    async def logs(*args: str) -> tuple[int, str, str]:
        return await kubectl_run(kubectl, "logs", "-n", namespace, *args)

    # --- the base is not a pod (yet): the reason, and how the base pod is named -----------
    code, out, err = await logs(MODULE_POD)
    assert code != 0, out
    assert "is not a pod in the cluster" in err, f"{err}\n{await diagnose()}"
    assert f"no pod named '{BASE_POD}' in namespace {namespace}" in err, err
    assert "base.koupleless.io/host-name" in err, err

    # --- the base runs as a pod: its log, directly and as the module pod's ------------------
    log_file = await host_kubelet.run_pod(namespace, BASE_POD, "base")
    log_file.write_text(FIRST_LINES)
    assert await logs(BASE_POD) == (0, FIRST_LINES, "")
    code, out, err = await logs(MODULE_POD)
    assert (code, out) == (0, FIRST_LINES), f"{err}\n{await diagnose()}"
    assert await logs(MODULE_POD, "--tail=1") == (0, "biz1 installed\n", "")

    # --- followed: a line written after kubectl started shows up, until kubectl stops -----
    follower = await asyncio.create_subprocess_exec(
        *kubectl, "logs", "-f", "-n", namespace, MODULE_POD,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert follower.stdout is not None
        seen = []
        for _ in FIRST_LINES.splitlines():
            seen.append(await asyncio.wait_for(follower.stdout.readline(), KUBECTL_SECONDS))
        assert b"".join(seen).decode() == FIRST_LINES
        with log_file.open("a") as appending:
            appending.write("a line written while kubectl follows\n")
        later = await asyncio.wait_for(follower.stdout.readline(), KUBECTL_SECONDS)
        assert later == b"a line written while kubectl follows\n"
    finally:
        follower.terminate()
        await follower.wait()

    # The whole chain unwinds: API server → proxy → API server → stand-in kubelet.
    async def unwound() -> bool:
        return host_kubelet.active_streams == 0

    await wait_for(
        unwound, timeout=15, what="the followed log closed end to end", diagnose=diagnose
    )
    await core.delete_namespaced_pod(MODULE_POD, namespace, grace_period_seconds=0)
    _assert_never_forbidden(operator)
