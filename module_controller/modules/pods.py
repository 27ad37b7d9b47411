"""A module pod as the operator sees it: the parts of the object that plans are made from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from module_controller.modules import reasons
from module_controller.modules.spec import UPGRADE_ANNOTATION, PodModules, pod_modules
from module_controller.modules.status import is_ready, ready_condition


@dataclass
class ModulePod:
    """A module pod as last seen in a watch event (or in the start-up listing)."""

    namespace: str
    name: str
    uid: str
    node_name: str | None
    created: str
    deleting: bool
    wants: PodModules
    status: dict[str, Any]
    resource_version: str
    deletion_seen_at: float | None = None
    # Made by a controller (ReplicaSet, StatefulSet, ...), which replaces it when deleted.
    owned: bool = False
    upgrade: str = ""  # the UPGRADE_ANNOTATION's value (see spec.py)
    seen: float = 0.0  # when this operator first saw it (clock seconds)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def age(self) -> tuple[str, float, int, str]:
        """Sorts pods oldest first. creationTimestamp counts whole seconds: a Deployment
        makes the new pod in the second it deletes the old one, so the order in which we
        saw them decides a tie. After an operator restart every pod is seen at once: then
        a pod that shows it lost to a newer one is the older, so the restart keeps which
        pod serves; only then does the name decide."""
        return (self.created, self.seen, 0 if self.shows_outdone else 1, self.name)

    @property
    def shows_outdone(self) -> bool:
        """Its status says a newer pod's version or jar took its module's place."""
        ready = ready_condition(self.status)
        return (
            ready is not None
            and ready.get("status") == "False"
            and ready.get("reason") in (reasons.SUPERSEDED, reasons.REPLACED)
        )

    @property
    def observed_ready(self) -> bool:
        """Its status, as last seen, says Ready."""
        return is_ready(self.status)


def module_pod_of(body: dict[str, Any]) -> ModulePod:
    metadata = body.get("metadata") or {}
    owners = metadata.get("ownerReferences") or []
    annotations = metadata.get("annotations") or {}
    return ModulePod(
        namespace=str(metadata.get("namespace") or ""),
        name=str(metadata.get("name") or ""),
        uid=str(metadata.get("uid") or ""),
        node_name=(body.get("spec") or {}).get("nodeName") or None,
        created=str(metadata.get("creationTimestamp") or ""),
        deleting=metadata.get("deletionTimestamp") is not None,
        wants=pod_modules(body),
        status=dict(body.get("status") or {}),
        resource_version=str(metadata.get("resourceVersion") or ""),
        owned=any(owner.get("controller") for owner in owners if isinstance(owner, dict)),
        upgrade=str(annotations.get(UPGRADE_ANNOTATION) or ""),
    )
