"""`kubectl logs <module pod>` shows the log of the base's own pod (KUBELET_PROXY_ENABLED).

The path is the real one: kubectl → kube-apiserver → the operator's kubelet proxy (the port
the virtual node advertises) → the API server again, for the base pod's log → that pod's
kubelet. The testbed has no kubelet and no container runtime, so the base pod's node is
`HostKubelet`, a stand-in that serves the pod's log from a file this test appends to.

The API server reaches a node's kubelet at the node's preferred address. With the proxy on,
a virtual node's only address is the proxy's (KUBELET_PROXY_ADDRESS here: 127.0.0.1, where
the operator listens; in a cluster, else, the ClusterIP of the labelled Service, the second
test), so the base may have any host name, and its pod any name; module pods keep the base's
IP.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller.kubelet_proxy.address import PROXY_SERVICE_LABEL
from module_controller.kubelet_proxy.server import free_port
from module_controller.settings import SEED_MODULE_LABEL
from module_controller.testbed.host_kubelet import HostKubelet
from module_controller.testbed.operator_process import OperatorProcess
from tests.e2e.conftest import BaseFactory, OperatorFactory
from tests.e2e.rbac_support import FORBIDDEN, Restricted, assert_never_forbidden
from tests.e2e.test_nodes import Cluster, node_name
from tests.waiting import wait_for

pytestmark = [pytest.mark.usefixtures("env_nodes_cleanup"), pytest.mark.timeout(120)]

PROXY_ADDRESS = "127.0.0.1"  # where the operator's proxy listens (every interface)
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


def addresses(node: client.V1Node) -> list[tuple[str, str]]:
    return [(a.type, a.address) for a in node.status.addresses or []]


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
    restricted: Restricted,
) -> None:
    # Under the shipped ClusterRole only: pods/log is granted there, nothing else is needed.
    port = free_port()
    operator = run_operator(
        KUBECONFIG=str(restricted.kubeconfig),
        KUBELET_PROXY_ENABLED="true",
        KUBELET_PROXY_PORT=str(port),
        KUBELET_PROXY_ADDRESS=PROXY_ADDRESS,
    )
    cluster = Cluster(k8s_api, operator)
    core = client.CoreV1Api(k8s_api)
    base = await start_base()
    base_pod = base.config.resolved_host_name  # a base in a pod reports its pod's name
    node = await cluster.wait_ready(node_name(base))
    assert node.status.daemon_endpoints.kubelet_endpoint.port == port
    assert addresses(node) == [("InternalIP", PROXY_ADDRESS)]
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

    async def pod_ip() -> str | None:
        pod = await core.read_namespaced_pod(MODULE_POD, namespace)
        return pod.status.pod_ip if pod.status.host_ip else None

    # The node's address is the proxy's; the module pod's IPs stay the base's.
    shown = await wait_for(pod_ip, timeout=20, what="the module pod's IP", diagnose=diagnose)
    assert shown == base.config.ip

    async def logs(*args: str) -> tuple[int, str, str]:
        return await kubectl_run(kubectl, "logs", "-n", namespace, *args)

    # --- the base is not a pod (yet): the reason, and how the base pod is named -----------
    code, out, err = await logs(MODULE_POD)
    assert code != 0, out
    assert "is not a pod in the cluster" in err, f"{err}\n{await diagnose()}"
    assert f"no pod named '{base_pod}' in namespace {namespace}" in err, err
    assert "base.koupleless.io/host-name" in err, err

    # --- the base runs as a pod: its log, directly and as the module pod's ------------------
    log_file = await host_kubelet.run_pod(namespace, base_pod, "base")
    log_file.write_text(FIRST_LINES)
    assert await logs(base_pod) == (0, FIRST_LINES, "")
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
    assert_never_forbidden(operator)


async def test_nodes_advertise_the_cluster_ip_of_the_labelled_service_in_namespace(
    k8s_api: client.ApiClient,
    namespace: str,
    run_operator: OperatorFactory,
    start_base: BaseFactory,
    restricted: Restricted,
) -> None:
    """The Go controller's way, under the shipped ClusterRole: without KUBELET_PROXY_ADDRESS
    the nodes advertise the ClusterIP of the Service labelled
    virtual-kubelet.koupleless.io/kubelet-proxy-service=true in NAMESPACE; without such a
    Service the operator does not start, and says what to do."""
    cluster = Cluster(k8s_api)
    core = client.CoreV1Api(k8s_api)
    port = free_port()

    def with_the_proxy() -> OperatorProcess:
        return run_operator(
            KUBECONFIG=str(restricted.kubeconfig),
            KUBELET_PROXY_ENABLED="true",
            KUBELET_PROXY_PORT=str(port),
            NAMESPACE=namespace,
        )

    # A node written before the proxy was turned on shows the base's IP and host name.
    before = run_operator(KUBECONFIG=str(restricted.kubeconfig))
    base = await start_base()
    node = await cluster.wait_ready(node_name(base))
    assert ("Hostname", base.config.resolved_host_name) in addresses(node)
    uid = node.metadata.uid
    before.stop()

    # No Service: start-up fails with one line naming the label, the namespace and the way out.
    refused = with_the_proxy()

    async def exited() -> bool:
        return refused.exit_code is not None

    await wait_for(exited, timeout=30, what="the operator to give up", diagnose=_tail(refused))
    last = refused.log.read_text().strip().splitlines()[-1]
    assert refused.exit_code == 1, last
    assert last.startswith("module-controller: start-up failed: "), last
    where = f"{PROXY_SERVICE_LABEL}=true in namespace {namespace} (NAMESPACE)"
    assert f"no Service is labelled {where}" in last, last
    assert "KUBELET_PROXY_ADDRESS" in last, last
    assert not FORBIDDEN.search(refused.log.read_text()), refused.tail()

    # The Service (here without a selector: only its ClusterIP matters to this test).
    service: Any = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "kubelet-proxy", "labels": {PROXY_SERVICE_LABEL: "true"}},
        "spec": {"ports": [{"name": "kubelet-proxy", "port": port}]},
    }
    created = await core.create_namespaced_service(namespace, service)
    cluster_ip = created.spec.cluster_ip
    operator = with_the_proxy()
    cluster.operator = operator

    # The adopted node shows the ClusterIP alone: the base's Hostname is gone, not merged in.
    async def advertised() -> client.V1Node | None:
        found = await cluster.node(node_name(base))
        return found if found and addresses(found) == [("InternalIP", cluster_ip)] else None

    node = await wait_for(
        advertised,
        timeout=30,
        what=f"the node's only address {cluster_ip}",
        diagnose=lambda: cluster.describe(node_name(base)),
    )
    assert node.metadata.uid == uid, "the same node, patched"
    assert node.status.daemon_endpoints.kubelet_endpoint.port == port
    assert_never_forbidden(operator)


def _tail(operator: OperatorProcess) -> Callable[[], Awaitable[str]]:
    async def tail() -> str:
        return operator.tail()

    return tail
