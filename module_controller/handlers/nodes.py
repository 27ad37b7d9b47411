"""Our virtual Nodes, as the cluster sees them: a node deleted by hand is put back."""

from __future__ import annotations

from typing import Any

import kopf

from module_controller.controller import ModuleController
from module_controller.vnodes import COMPONENT_LABEL


@kopf.on.event("", "v1", "nodes", labels={COMPONENT_LABEL: "vnode"})
async def node_event(type: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    if type == "DELETED":
        controller: ModuleController = memo["controller"]
        controller.node_deleted(name)
