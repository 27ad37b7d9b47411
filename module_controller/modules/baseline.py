"""The baseline of a starting base: the modules of every Deployment that targets it.

A base asks for its baseline once at start and installs it by itself, so a restarted base
has its modules back before the scheduler has even placed the replacement pods. A
Deployment targets a base when its pod template is a module pod whose node selector and
required node affinity would accept the base's node.
"""

from __future__ import annotations

from typing import Any

from module_controller.modules.spec import pod_modules
from module_controller.protocol import BizModel


def _expression_matches(expression: dict[str, Any], labels: dict[str, str]) -> bool:
    key = expression.get("key")
    operator = expression.get("operator")
    values = expression.get("values") or []
    present = key in labels
    value = labels.get(str(key))
    if operator == "In":
        return present and value in values
    if operator == "NotIn":
        return not present or value not in values
    if operator == "Exists":
        return present
    if operator == "DoesNotExist":
        return not present
    if operator in ("Gt", "Lt") and present and values:
        try:
            number, bound = int(str(value)), int(values[0])
        except ValueError:
            return False
        return number > bound if operator == "Gt" else number < bound
    return False


def template_targets(template_spec: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a pod with this spec could be scheduled on a node with these labels."""
    selector = template_spec.get("nodeSelector") or {}
    if any(labels.get(key) != value for key, value in selector.items()):
        return False
    required = ((template_spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = required.get("nodeSelectorTerms") or []
    if not terms:
        return True
    return any(
        all(_expression_matches(e, labels) for e in term.get("matchExpressions") or [])
        for term in terms
    )


def baseline_for(
    deployments: list[dict[str, Any]], node_labels: dict[str, str], module_label: str
) -> list[BizModel]:
    """Modules, oldest Deployment first, of the module Deployments targeting the node."""
    chosen: list[BizModel] = []
    seen: set[str] = set()
    ordered = sorted(
        deployments, key=lambda d: str((d.get("metadata") or {}).get("creationTimestamp"))
    )
    for deployment in ordered:
        template = ((deployment.get("spec") or {}).get("template")) or {}
        labels = (template.get("metadata") or {}).get("labels") or {}
        if labels.get(module_label) != "module":
            continue
        spec = template.get("spec") or {}
        if not template_targets(spec, node_labels):
            continue
        wanted = pod_modules({"spec": spec})
        if not wanted.valid:
            continue
        for module in wanted.modules:
            if module.key not in seen:
                seen.add(module.key)
                chosen.append(module.biz())
    return chosen
