"""Our nodes' Leases in kube-node-lease: who holds each base (shards/ownership.py).

An `on.event` handler, which writes nothing onto the Leases; the watch is filtered on the
server to this env's node Leases (set at start-up). It updates the runtime's ownership
table; bases this replica now holds reach the dispatcher as an OwnershipGained event.
"""

from __future__ import annotations

from typing import Any

import kopf

from module_controller.operator_memo import operator_memo
from module_controller.vnode_manifest import LEASE_NAMESPACE


@kopf.on.event("coordination.k8s.io", "v1", "leases")
async def node_lease_event(
    type: str | None, name: str, namespace: str | None, body: kopf.Body, memo: Any, **_: Any
) -> None:
    runtime = operator_memo(memo).runtime
    if runtime is None or namespace != LEASE_NAMESPACE:
        return
    if type == "DELETED":
        await runtime.ownership.lease_gone(name)
    else:
        await runtime.ownership.lease_seen(name, dict(body))
