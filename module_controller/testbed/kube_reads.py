"""Reading Pods and Nodes as the kubernetes_asyncio client returns them (model objects), or
as plain JSON (the `json_` readers, for what kube_watch.ListWatch reports).

Whether a pod or a node is Ready is asked by the tests, the benchmarks and the demo alike;
this is the one place that says how.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The node-lifecycle controller's taints (not-ready, unreachable, ...). The API server taints
# every new node not-ready; only that controller lifts it, once it has seen Ready=True.
HEALTH_TAINT_PREFIX = "node.kubernetes.io/"


def ready_condition(obj: Any) -> Any | None:
    """The Ready condition of a Pod or a Node, or None while it has none."""
    status = obj.status
    conditions = status.conditions if status is not None else None
    return next((c for c in conditions or [] if c.type == "Ready"), None)


def is_ready(obj: Any) -> bool:
    """A Pod or a Node whose Ready condition says True."""
    ready = ready_condition(obj)
    return ready is not None and ready.status == "True"


def health_taints(node: Any) -> list[str]:
    """The keys of the node's node.kubernetes.io/* taints."""
    taints = node.spec.taints if node.spec is not None else None
    return [t.key for t in taints or [] if t.key.startswith(HEALTH_TAINT_PREFIX)]


def is_ready_and_untainted(node: Any) -> bool:
    """Ready=True and the node-lifecycle controller agrees (no health taint): only then does
    the scheduler place pods on it."""
    return is_ready(node) and not health_taints(node)


# --- the same, from plain JSON (what kube_watch.ListWatch reports) -----------------------


def json_is_ready(obj: Mapping[str, Any]) -> bool:
    """A Pod or a Node, as JSON, whose Ready condition says True."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    return ready is not None and ready.get("status") == "True"


def json_health_taints(node: Mapping[str, Any]) -> list[str]:
    """The keys of a node's (as JSON) node.kubernetes.io/* taints."""
    taints = (node.get("spec") or {}).get("taints") or []
    return [t["key"] for t in taints if str(t.get("key", "")).startswith(HEALTH_TAINT_PREFIX)]


def json_is_ready_and_untainted(node: Mapping[str, Any]) -> bool:
    """is_ready_and_untainted, for a node as JSON."""
    return json_is_ready(node) and not json_health_taints(node)
