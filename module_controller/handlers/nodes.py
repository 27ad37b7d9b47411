"""Our virtual Nodes, as the cluster sees them: a node deleted by hand is put back."""

from __future__ import annotations

from typing import Any

import kopf

from module_controller.inbox import NodeDeleted
from module_controller.operator_memo import operator_memo
from module_controller.vnode_manifest import COMPONENT_LABEL


@kopf.on.event("", "v1", "nodes", labels={COMPONENT_LABEL: "vnode"})
async def node_event(type: str | None, name: str, memo: Any, **_: Any) -> None:
    runtime = operator_memo(memo).runtime
    if type == "DELETED" and runtime is not None:
        await runtime.inbox.put(NodeDeleted(name))
