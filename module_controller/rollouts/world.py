"""Reading Deployments, ReplicaSets and pods as the API server sends them (plain dicts).

No I/O. The Deployment controller's own notions are followed where ours must agree with
it: a ReplicaSet is the Deployment's when the Deployment is its controller (ownerReference
with controller=true); a ReplicaSet runs the Deployment's template when the two templates
are equal but for the `pod-template-hash` label (the Deployment controller's
EqualIgnoreHash).
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from module_controller.modules import reasons
from module_controller.rollouts.model import HASH_LABEL

Obj = Mapping[str, Any]

# The alphabet of Kubernetes' generated name suffixes (no vowels, no look-alikes).
_SAFE = "bcdfghjkmnpqrstvwxz2456789"
HASH_LENGTH = 10

# What a new pod's Ready condition says when its module cannot serve, for a reason that
# waiting will not cure: these count against the failure budget at once.
FAILURE_REASONS = frozenset(
    {
        reasons.INSTALL_FAILED,
        reasons.BROKEN,
        reasons.VERSION_MISMATCH,
        reasons.INVALID,
        reasons.WEB_CONTEXT_IN_USE,
    }
)
# What it says when its base is away (silent, or deleted): no fault of the module, and the
# node lifecycle's business (it evicts the pods of a base that stays away, and the
# ReplicaSet makes new ones), so these never count against the failure budget.
BASE_REASONS = frozenset({reasons.BASE_DOWN, reasons.BASE_GONE})


def metadata(obj: Obj) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def name_of(obj: Obj) -> str:
    return str(metadata(obj).get("name") or "")


def uid_of(obj: Obj) -> str:
    return str(metadata(obj).get("uid") or "")


def labels_of(obj: Obj) -> Mapping[str, str]:
    return metadata(obj).get("labels") or {}


def annotations_of(obj: Obj) -> Mapping[str, str]:
    return metadata(obj).get("annotations") or {}


def spec_of(obj: Obj) -> Mapping[str, Any]:
    return obj.get("spec") or {}


def controller_uid(obj: Obj) -> str | None:
    """The uid of the object's controller (the ownerReference with controller=true)."""
    for owner in metadata(obj).get("ownerReferences") or []:
        if owner.get("controller"):
            return str(owner.get("uid") or "")
    return None


def replicas_of(obj: Obj) -> int:
    """spec.replicas of a Deployment or ReplicaSet (the API server defaults it to 1)."""
    value = spec_of(obj).get("replicas")
    return 1 if value is None else int(value)


def available_of(replica_set: Obj) -> int:
    return int((replica_set.get("status") or {}).get("availableReplicas") or 0)


def revision_of(replica_set: Obj) -> int:
    try:
        return int(annotations_of(replica_set).get("deployment.kubernetes.io/revision", "0"))
    except ValueError:
        return 0


def template_of(obj: Obj) -> dict[str, Any]:
    template: dict[str, Any] = spec_of(obj).get("template") or {}
    return template


def without_hash(template: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a pod template without the pod-template-hash label."""
    clean = copy.deepcopy(dict(template))
    meta = dict(clean.get("metadata") or {})
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k != HASH_LABEL}
    meta["labels"] = labels
    clean["metadata"] = meta
    return clean


def same_template(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Equal but for the pod-template-hash label (the Deployment controller's
    EqualIgnoreHash; templates come back from the API server defaulted alike)."""
    return _canonical(without_hash(a)) == _canonical(without_hash(b))


def template_hash(template: Mapping[str, Any]) -> str:
    """Our pod-template-hash of a template: stable, 10 characters of the alphabet
    Kubernetes uses for generated names. Not the Deployment controller's value (a Go hash
    of its structs), which it never checks: it matches ReplicaSets by EqualIgnoreHash."""
    digest = hashlib.sha256(_canonical(without_hash(template)).encode()).digest()
    number = int.from_bytes(digest[:8], "big")
    chars = []
    for _ in range(HASH_LENGTH):
        number, index = divmod(number, len(_SAFE))
        chars.append(_SAFE[index])
    return "".join(chars)


def _canonical(template: Mapping[str, Any]) -> str:
    clean = dict(template)
    meta = {k: v for k, v in (clean.get("metadata") or {}).items() if v not in (None, {}, [])}
    clean["metadata"] = meta
    return json.dumps(clean, sort_keys=True, separators=(",", ":"))


def hash_label_of(replica_set: Obj) -> str:
    return str(labels_of(replica_set).get(HASH_LABEL) or "")


# --- pods ---------------------------------------------------------------------------------


def is_deleting(obj: Obj) -> bool:
    return metadata(obj).get("deletionTimestamp") is not None


def ready_condition(pod: Obj) -> Mapping[str, Any]:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return dict(condition)
    return {}


def is_ready(pod: Obj) -> bool:
    return ready_condition(pod).get("status") == "True" and not is_deleting(pod)


def failure_of(pod: Obj) -> tuple[str, str] | None:
    """(reason, message) when the pod's module failed for good (not just not Ready yet)."""
    condition = ready_condition(pod)
    reason = str(condition.get("reason") or "")
    if condition.get("status") != "True" and reason in FAILURE_REASONS:
        return reason, str(condition.get("message") or "")
    return None


def waiting_on_base(pod: Obj) -> bool:
    condition = ready_condition(pod)
    return condition.get("status") != "True" and condition.get("reason") in BASE_REASONS


def not_ready_since(pod: Obj) -> float | None:
    """When the pod last went NotReady: its Ready condition's lastTransitionTime, or its
    creation when that is later or missing (a pod never Ready has been NotReady since)."""
    created = created_at(pod)
    went = parse_time(ready_condition(pod).get("lastTransitionTime"))
    if went is None or (created is not None and went < created):
        return created
    return went


def created_at(obj: Obj) -> float | None:
    return parse_time(metadata(obj).get("creationTimestamp"))


def parse_time(text: Any) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def format_time(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# --- selectors ------------------------------------------------------------------------------


def selector_string(selector: Mapping[str, Any]) -> str:
    """A LabelSelector as the `labelSelector` query parameter says it."""
    parts = [f"{key}={value}" for key, value in sorted((selector.get("matchLabels") or {}).items())]
    for expression in selector.get("matchExpressions") or []:
        key = expression.get("key")
        operator = expression.get("operator")
        values = ",".join(expression.get("values") or [])
        if operator == "In":
            parts.append(f"{key} in ({values})")
        elif operator == "NotIn":
            parts.append(f"{key} notin ({values})")
        elif operator == "Exists":
            parts.append(str(key))
        elif operator == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key = expression.get("key")
        operator = expression.get("operator")
        values = expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True
