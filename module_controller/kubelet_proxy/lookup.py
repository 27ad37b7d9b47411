"""From a module pod to the container of its base's own pod, as the Go controller finds it.

module pod → `spec.nodeName` → one of our virtual nodes → the node's label
`base.koupleless.io/host-name` (else `kubernetes.io/hostname`) names the base's pod, looked
up in the module pod's namespace → the base pod's label `base.koupleless.io/container-name`
(default `base`) names its container. A base whose host name is its pod name (what a Java
process in a pod reports by default) is found; a base that runs outside the cluster is not,
and the refusal says so and how the base pod is named.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller import naming
from module_controller.kubelet_proxy.paths import LogTarget, Refusal
from module_controller.vnode_manifest import (
    BASE_HOST_LABEL,
    COMPONENT_LABEL,
    ENV_LABEL,
    HOSTNAME_LABEL,
)

CONTAINER_NAME_LABEL = "base.koupleless.io/container-name"
DEFAULT_BASE_CONTAINER = "base"


@dataclass(frozen=True)
class BaseContainer:
    """The container whose log stands for a module pod's log."""

    namespace: str
    pod: str
    container: str


class ObjectReader(Protocol):
    """Reads of single objects as plain dicts; None when the API server says 404."""

    async def pod(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def node(self, name: str) -> dict[str, Any] | None: ...


class ApiReader:
    """`ObjectReader` over the API server."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)

    async def pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found = await self.core.read_namespaced_pod(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        raw: dict[str, Any] = self.api.sanitize_for_serialization(found)
        return raw

    async def node(self, name: str) -> dict[str, Any] | None:
        try:
            found = await self.core.read_node(name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        raw: dict[str, Any] = self.api.sanitize_for_serialization(found)
        return raw


def _labels(thing: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = (thing.get("metadata") or {}).get("labels") or {}
    return labels


def _not_a_pod(target: LogTarget, node: str, base_pod: str | None) -> Refusal:
    missing = (
        f"no pod named {base_pod!r} in namespace {target.namespace}"
        if base_pod
        else "the node names no base pod"
    )
    return Refusal(
        400,
        f"kubectl logs for module pod {target.namespace}/{target.pod} shows the log of its "
        f"base's own pod, but the base of node {node} is not a pod in the cluster ({missing}). "
        f"The node's label {BASE_HOST_LABEL} (the base's host name, which is its pod name "
        f"when the base runs in a pod) names the base pod, looked up in the module pod's "
        f"namespace; the pod's label {CONTAINER_NAME_LABEL} names its container "
        f"(default {DEFAULT_BASE_CONTAINER!r}).",
    )


def base_container_of(base_pod: dict[str, Any]) -> str:
    """The base's container in its pod: the pod's label, else `base`, else its only one."""
    name = str((base_pod.get("metadata") or {}).get("name"))
    containers = [str(c.get("name")) for c in (base_pod.get("spec") or {}).get("containers") or []]
    labelled = _labels(base_pod).get(CONTAINER_NAME_LABEL)
    if labelled:
        if labelled not in containers:
            raise Refusal(
                400,
                f"base pod {name} has no container {labelled!r}, which its label "
                f"{CONTAINER_NAME_LABEL} names (it has {', '.join(containers) or 'none'})",
            )
        return labelled
    if DEFAULT_BASE_CONTAINER in containers:
        return DEFAULT_BASE_CONTAINER
    if len(containers) == 1:
        return containers[0]  # unambiguous; the Go controller would insist on "base"
    raise Refusal(
        400,
        f"base pod {name} has no container {DEFAULT_BASE_CONTAINER!r} and several others "
        f"({', '.join(containers)}): name the base's container with the pod label "
        f"{CONTAINER_NAME_LABEL}",
    )


async def locate_base(reader: ObjectReader, env: str, target: LogTarget) -> BaseContainer:
    """The base container whose log is `target`'s log, or a Refusal that says why not."""
    pod = await reader.pod(target.namespace, target.pod)
    if pod is None:
        raise Refusal(404, f"pod {target.namespace}/{target.pod} not found")
    node_name = (pod.get("spec") or {}).get("nodeName")
    if not node_name:
        raise Refusal(400, f"pod {target.namespace}/{target.pod} is not on a node yet")
    node = await reader.node(node_name)
    if node is None:
        raise Refusal(404, f"node {node_name} of pod {target.namespace}/{target.pod} not found")
    labels = _labels(node)
    if labels.get(COMPONENT_LABEL) != "vnode" or labels.get(ENV_LABEL) != naming.label_value(env):
        raise Refusal(
            404,
            f"node {node_name} is not a virtual node of this module controller (env {env})",
        )
    base_pod_name = labels.get(BASE_HOST_LABEL) or labels.get(HOSTNAME_LABEL)
    if not base_pod_name:
        raise _not_a_pod(target, node_name, None)
    base_pod = await reader.pod(target.namespace, base_pod_name)
    if base_pod is None:
        raise _not_a_pod(target, node_name, base_pod_name)
    return BaseContainer(target.namespace, base_pod_name, base_container_of(base_pod))
