"""What a base's Node looks like: pure functions of a base record, and how to compare nodes.

`node_manifest` is a pure function of a base record (and of the conditions' last
transitions); the fingerprints say whether a node in the cluster already shows it.
"""

from __future__ import annotations

import datetime
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from module_controller import __version__, naming
from module_controller.protocol import BaseStatus, ProtocolError, decode, encode
from module_controller.protocol.arklet import ARKLET_DEFAULT_PORT
from module_controller.registry import BaseRecord
from module_controller.settings import Settings
from module_controller.tunnels.events import TunnelKind

COMPONENT_LABEL = "virtual-kubelet.koupleless.io/component"
ENV_LABEL = "virtual-kubelet.koupleless.io/env"
BASE_NAME_LABEL = "base.koupleless.io/name"
BASE_VERSION_LABEL = "base.koupleless.io/version"
BASE_CLUSTER_LABEL = "base.koupleless.io/cluster-name"
BASE_HOST_LABEL = "base.koupleless.io/host-name"
HOSTNAME_LABEL = "kubernetes.io/hostname"
IDENTITY_ANNOTATION = "base.koupleless.io/identity"
STATUS_ANNOTATION = "module-controller.koupleless.io/base-status"
# The tunnel a base speaks, so that a restarted operator sends its commands the same way.
TUNNEL_ANNOTATION = "module-controller.koupleless.io/tunnel"
# The Go controller's label for an HTTP base's Arklet port.
TUNNEL_PORT_LABEL = "base.koupleless.io/tunnel-port"
VIRTUAL_NODE_TAINT_KEY = "schedule.koupleless.io/virtual-node"
ENV_TAINT_KEY = "schedule.koupleless.io/node-env"
OUR_TAINT_KEYS = frozenset({VIRTUAL_NODE_TAINT_KEY, ENV_TAINT_KEY})
LEASE_NAMESPACE = "kube-node-lease"

READY_REASON = "BaseHeartbeat"
NOT_READY_REASON = "BaseSilent"


def now_utc() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _timestamp(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_timestamp(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def as_body(manifest: dict[str, Any]) -> Any:
    """The client's methods are typed for model objects, but send plain dicts as they are."""
    return manifest


def _ki(value: int) -> str:
    return f"{value // 1024}Ki"


_QUANTITY_SUFFIXES = {
    "": 1,
    **{
        suffix: 1024 ** (power + 1)
        for power, suffix in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))
    },
    **{suffix: 1000 ** (power + 1) for power, suffix in enumerate(("k", "M", "G", "T", "P", "E"))},
}


def _bytes_of_quantity(quantity: object) -> int | None:
    """The bytes of a whole-number memory quantity ("524288Ki", or "512Mi" as the API server
    writes it back in canonical form); None for anything else."""
    match = re.fullmatch(r"(\d+)([A-Za-z]*)", str(quantity or ""))
    if match is None or match.group(2) not in _QUANTITY_SUFFIXES:
        return None
    factor: int = _QUANTITY_SUFFIXES[match.group(2)]
    return int(match.group(1)) * factor


# Condition type -> (status, lastTransitionTime) as the node last showed them.
Transitions = dict[str, tuple[str, str]]


def transitions_of(node: dict[str, Any]) -> Transitions:
    return {
        str(c.get("type")): (str(c.get("status")), str(c.get("lastTransitionTime")))
        for c in (node.get("status") or {}).get("conditions") or []
        if c.get("type") and c.get("lastTransitionTime")
    }


def memory_of(node: Mapping[str, Any], settings: Settings) -> tuple[int, int] | None:
    """(capacity, allocatable) bytes a base reported, as its node shows them, if any.

    An adopted node keeps them until its base reports again, so a restart does not flap
    the node's memory to the default and back.
    """
    status = node.get("status") or {}
    capacity = (status.get("capacity") or {}).get("memory")
    if capacity == settings.node_memory:
        return None
    in_bytes = _bytes_of_quantity(capacity)
    allocatable = _bytes_of_quantity((status.get("allocatable") or {}).get("memory"))
    if in_bytes is None:
        return None
    return in_bytes, allocatable if allocatable is not None else in_bytes


def env_node_selector(env: str) -> str:
    """Label selector of the virtual nodes of one env."""
    return f"{COMPONENT_LABEL}=vnode,{ENV_LABEL}={env}"


def node_selector(settings: Settings) -> str:
    """Label selector of the nodes this operator owns (its env only)."""
    return env_node_selector(settings.env)


def node_labels(node_name: str, status: BaseStatus, settings: Settings) -> dict[str, str]:
    metadata = status.base_metadata
    return {
        BASE_NAME_LABEL: naming.label_value(metadata.name),
        BASE_VERSION_LABEL: naming.label_value(metadata.version),
        BASE_CLUSTER_LABEL: naming.label_value(metadata.cluster_name),
        BASE_HOST_LABEL: naming.label_value(status.local_host_name),
        # The node's own name, as a kubelet sets it: unique per base, for topology spread.
        HOSTNAME_LABEL: naming.label_value(node_name),
        COMPONENT_LABEL: "vnode",
        ENV_LABEL: naming.label_value(settings.env),
        "type": "virtual-kubelet",
        "kubernetes.io/role": "agent",
    }


def tunnel_labels(record: BaseRecord) -> dict[str, str]:
    """HTTP bases carry their Arklet port as a label, as the Go controller's nodes do."""
    if record.tunnel != "http":
        return {}
    return {TUNNEL_PORT_LABEL: str(record.status.port or ARKLET_DEFAULT_PORT)}


def tunnel_of_node(node: dict[str, Any]) -> TunnelKind:
    """The tunnel recorded on an existing node; MQTT for nodes of older versions."""
    annotations = (node.get("metadata") or {}).get("annotations") or {}
    return "http" if annotations.get(TUNNEL_ANNOTATION) == "http" else "mqtt"


def node_taints(settings: Settings) -> list[dict[str, str]]:
    taints = [{"key": VIRTUAL_NODE_TAINT_KEY, "value": "True", "effect": "NoExecute"}]
    if settings.node_env_taint:
        taints.append({"key": ENV_TAINT_KEY, "value": settings.env, "effect": "NoExecute"})
    return taints


def node_resources(record: BaseRecord, settings: Settings) -> tuple[dict[str, str], ...]:
    capacity = {
        "cpu": settings.node_cpu,
        "memory": settings.node_memory,
        "pods": settings.node_pods,
    }
    allocatable = dict(capacity)
    if record.memory_capacity_bytes is not None:
        capacity["memory"] = _ki(record.memory_capacity_bytes)
        allocatable["memory"] = _ki(record.memory_allocatable_bytes or 0)
    return capacity, allocatable


def node_conditions(
    record: BaseRecord, now: datetime.datetime, previous: Transitions | None = None
) -> list[dict[str, str]]:
    """The node's conditions; a lastTransitionTime moves only when its status changes."""
    stamp = _timestamp(now)
    previous = previous or {}

    def since(kind: str, status: str) -> str:
        shown = previous.get(kind)
        return shown[1] if shown is not None and shown[0] == status else stamp

    ready_status = "True" if record.ready else "False"
    ready = {
        "type": "Ready",
        "status": ready_status,
        "reason": READY_REASON if record.ready else NOT_READY_REASON,
        "message": "the base sends heartbeats" if record.ready else str(record.not_ready_reason),
        "lastHeartbeatTime": stamp,
        "lastTransitionTime": since("Ready", ready_status),
    }
    quiet = [
        {
            "type": kind,
            "status": "False",
            "reason": f"No{kind}",
            "message": "not applicable to a base",
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": since(kind, "False"),
        }
        for kind in ("MemoryPressure", "DiskPressure", "PIDPressure", "NetworkUnavailable")
    ]
    return [ready, *quiet]


def daemon_endpoints(settings: Settings) -> dict[str, Any]:
    """Where the API server finds the node's kubelet: the kubelet proxy's port when it is
    on (kubectl logs for module pods), else 0 (what a node without a kubelet shows). Always
    written, so that turning the proxy off also takes the port back."""
    port = settings.kubelet_proxy_port if settings.kubelet_proxy_enabled else 0
    # "Port" with a capital P is the API's own spelling.
    return {"kubeletEndpoint": {"Port": port}}


def kubelet_port_of(node: dict[str, Any]) -> int:
    """The kubelet port a node advertises (0 for none)."""
    endpoints = (node.get("status") or {}).get("daemonEndpoints") or {}
    return int((endpoints.get("kubeletEndpoint") or {}).get("Port") or 0)


def node_addresses(record: BaseRecord, settings: Settings) -> list[dict[str, str]]:
    """The node's addresses: the base's IP and host name, or the kubelet proxy's alone.

    The API server reaches a node's kubelet (kubectl logs) at the node's preferred address,
    by default a Hostname before an InternalIP; so with the proxy on, the proxy's address is
    the only one (`kubelet_proxy/address.py`). Module pods keep the base's IP either way:
    their podIP and hostIP come from the base record, never from the node.
    """
    if settings.kubelet_proxy_enabled:
        if settings.kubelet_proxy_address is None:
            # The runtime resolves it before any node is written; a node without it would
            # send the API server to the base.
            raise RuntimeError("the kubelet proxy's address is not resolved yet")
        return [{"type": "InternalIP", "address": str(settings.kubelet_proxy_address)}]
    return [
        {"type": "InternalIP", "address": record.ip},
        {
            "type": "Hostname",
            "address": naming.host_name(record.status.local_host_name) or record.node_name,
        },
    ]


def node_status(
    record: BaseRecord,
    settings: Settings,
    now: datetime.datetime,
    previous: Transitions | None = None,
) -> dict[str, Any]:
    capacity, allocatable = node_resources(record, settings)
    return {
        "phase": "Running",
        "conditions": node_conditions(record, now, previous),
        "addresses": node_addresses(record, settings),
        "capacity": capacity,
        "allocatable": allocatable,
        "daemonEndpoints": daemon_endpoints(settings),
        "nodeInfo": {
            "architecture": platform.machine() or "unknown",
            "operatingSystem": "linux",
            "kubeletVersion": f"module-controller-{__version__}",
            "kubeProxyVersion": "",
            "osImage": "koupleless base",
            "kernelVersion": "",
            "containerRuntimeVersion": "koupleless://"
            + naming.label_value(record.status.base_metadata.version),
            "machineID": "",
            "systemUUID": "",
            "bootID": "",
        },
    }


def status_patch(manifest: dict[str, Any]) -> dict[str, Any]:
    """The status patch that makes a node show `manifest`'s status.

    Status patches are strategic merges, which merge `addresses` by type: an address we no
    longer show would stay (the Hostname of a node written before the kubelet proxy was
    turned on, or by the Go controller, which the API server would dial instead of the
    proxy). The `$patch: replace` directive makes the list the one given, whole.
    """
    status = dict(manifest["status"])
    status["addresses"] = [*status["addresses"], {"$patch": "replace"}]
    return {"status": status}


def node_manifest(
    record: BaseRecord, settings: Settings, previous: Transitions | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": record.node_name,
            "labels": node_labels(record.node_name, record.status, settings)
            | tunnel_labels(record),
            "annotations": {
                IDENTITY_ANNOTATION: record.identity,
                STATUS_ANNOTATION: encode(record.status).decode(),
                TUNNEL_ANNOTATION: record.tunnel,
            },
        },
        "spec": {"taints": node_taints(settings)},
        "status": node_status(record, settings, now_utc(), previous),
    }


MANAGED_LABELS = (
    BASE_NAME_LABEL,
    BASE_VERSION_LABEL,
    BASE_CLUSTER_LABEL,
    BASE_HOST_LABEL,
    HOSTNAME_LABEL,
    COMPONENT_LABEL,
    ENV_LABEL,
    "type",
    "kubernetes.io/role",
    TUNNEL_PORT_LABEL,
)
MANAGED_ANNOTATIONS = (IDENTITY_ANNOTATION, STATUS_ANNOTATION, TUNNEL_ANNOTATION)


def metadata_fingerprint(node: dict[str, Any]) -> tuple[Any, ...]:
    """The labels, annotations and taints this operator owns on a node, comparable."""
    metadata = node.get("metadata") or {}
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    taints = (node.get("spec") or {}).get("taints") or []
    return (
        tuple(labels.get(key) for key in MANAGED_LABELS),
        tuple(annotations.get(key) for key in MANAGED_ANNOTATIONS),
        tuple(
            sorted(
                (t.get("key"), t.get("value"), t.get("effect"))
                for t in taints
                if t.get("key") in OUR_TAINT_KEYS
            )
        ),
    )


def status_fingerprint(node: dict[str, Any]) -> tuple[Any, ...]:
    """What of a node's status matters for change detection (timestamps do not)."""
    status = node.get("status") or {}
    conditions = tuple(
        sorted(
            (c.get("type"), c.get("status"), c.get("reason"))
            for c in status.get("conditions") or []
        )
    )
    addresses = tuple(
        sorted((a.get("type"), a.get("address")) for a in status.get("addresses") or [])
    )
    return (
        conditions,
        addresses,
        tuple(sorted((status.get("capacity") or {}).items())),
        tuple(sorted((status.get("allocatable") or {}).items())),
        kubelet_port_of(node),
    )


@dataclass(frozen=True)
class AppliedNode:
    """What the cluster holds for a node, as far as this operator last saw or wrote it."""

    uid: str
    metadata: tuple[Any, ...]
    status: tuple[Any, ...]

    @classmethod
    def of(cls, uid: str, node: dict[str, Any]) -> AppliedNode:
        return cls(uid, metadata_fingerprint(node), status_fingerprint(node))


def base_status_of_node(node: dict[str, Any]) -> tuple[str, BaseStatus] | None:
    """Identity and last heartbeat recorded on an existing node, for adoption at start-up."""
    annotations = (node.get("metadata") or {}).get("annotations") or {}
    identity = annotations.get(IDENTITY_ANNOTATION)
    recorded = annotations.get(STATUS_ANNOTATION)
    if not identity or not recorded:
        return None
    try:
        return identity, decode(BaseStatus, recorded)
    except ProtocolError:
        return None
