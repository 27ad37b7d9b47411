"""Peer Deployments (ENABLE_MODULE_REPLICAS_SYNC_WITH_BASE): the watches that feed the
runtime's `PeerReplicas` (`modules/peer.py`).

Both are `on.event` handlers, which write nothing onto the objects (no finalizers, no Kopf
annotations): our Nodes (the watch handlers/nodes.py uses, which start-up filters on the
server to this env's virtual nodes) and Deployments labelled strategy=peer (filtered on the
server at start-up). Readiness is read from the Nodes rather than from the base registry:
the Nodes are what the cluster shows (and what the Go controller counts). With the setting
off the runtime has no `peers` and the handlers return at once.
"""

from __future__ import annotations

from typing import Any

import kopf

from module_controller.modules.peer import PeerReplicas
from module_controller.operator_memo import operator_memo
from module_controller.vnode_manifest import COMPONENT_LABEL


def _peers(memo: Any) -> PeerReplicas | None:
    runtime = operator_memo(memo).runtime
    return None if runtime is None else runtime.peers


@kopf.on.event("", "v1", "nodes", labels={COMPONENT_LABEL: "vnode"})
async def peer_node_event(
    type: str | None, name: str, body: kopf.Body, memo: Any, **_: Any
) -> None:
    peers = _peers(memo)
    if peers is None:
        return
    if type == "DELETED":
        peers.node_gone(name)
    else:
        peers.node_seen(name, body)


# No `labels=` filter: a Deployment that loses the peer label must still reach the handler
# (the server-side selector sends it as DELETED, with the new labels).
@kopf.on.event("apps", "v1", "deployments")
async def peer_deployment_event(
    type: str | None,
    body: kopf.Body,
    namespace: str | None,
    name: str | None,
    memo: Any,
    **_: Any,
) -> None:
    peers = _peers(memo)
    if peers is None:
        return
    if type == "DELETED":
        peers.deployment_gone(namespace or "", name or "")
    else:
        peers.deployment_seen(body)
