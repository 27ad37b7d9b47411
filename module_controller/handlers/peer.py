"""Peer Deployments (ENABLE_MODULE_REPLICAS_SYNC_WITH_BASE): the watch that feeds the
runtime's `PeerReplicas` (`modules/peer.py`) with Deployments labelled strategy=peer
(filtered on the server at start-up), as an `on.event` handler, which writes nothing onto
them (no finalizers, no Kopf annotations). The runtime's node watch feeds it our Nodes
(`Runtime._vnode_seen`): readiness is read from the Nodes rather than from the base
registry, since the Nodes are what the cluster shows (and what the Go controller counts).
With the setting off the runtime has no `peers` and the handler returns at once.
"""

from __future__ import annotations

from typing import Any

import kopf

from module_controller.modules.peer import PeerReplicas
from module_controller.operator_memo import operator_memo


def _peers(memo: Any) -> PeerReplicas | None:
    runtime = operator_memo(memo).runtime
    return None if runtime is None else runtime.peers


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
