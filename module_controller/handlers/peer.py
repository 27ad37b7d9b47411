"""Peer Deployments (ENABLE_MODULE_REPLICAS_SYNC_WITH_BASE): the watches that feed
`modules/peer.py`'s `PeerReplicas`, and its start and stop.

Both watches are `on.event` handlers, which write nothing onto the objects (no finalizers,
no Kopf annotations): our Nodes (the watch handlers/nodes.py uses, which start-up filters
on the server to this env's virtual nodes) and Deployments labelled strategy=peer
(filtered on the server, set below). Readiness is read from the Nodes rather than from the
base registry: the Nodes are what the cluster shows (and what the Go controller counts),
and reading them needs nothing of the runtime's insides.

With the setting off nothing starts and the handlers return at once. With it on,
`PeerReplicas` gets an API client and an Event recorder of its own: Kopf runs clean-up
handlers in the order they were registered, so the runtime's client is closed before this
clean-up runs, and a patch must not go out on a closed client meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import kopf
from kubernetes_asyncio import client

from module_controller.handlers.lifecycle import describe_startup_error
from module_controller.k8s_events import EventRecorder
from module_controller.kube import new_api_client
from module_controller.modules.peer import (
    PEER_SELECTOR,
    PeerReplicas,
    deployment_patcher,
    node_lister,
)
from module_controller.operator_memo import OperatorMemo, operator_memo
from module_controller.tasks import cancel_and_wait
from module_controller.vnode_manifest import COMPONENT_LABEL, node_selector

log = logging.getLogger(__name__)


@dataclass
class _Running:
    api: client.ApiClient
    events: EventRecorder
    peers: PeerReplicas
    task: asyncio.Task[None]


# One operator per process. Kept here, not in the memo: OperatorMemo is the runtime's, and
# Kopf's own memo (under `kopf run`) is copied per object.
_running: _Running | None = None


def peer_replicas() -> PeerReplicas | None:
    """The running PeerReplicas, if the setting is on and the operator started."""
    return None if _running is None else _running.peers


@kopf.on.startup()
async def start_peer_replicas(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    global _running
    # Only peer Deployments reach the operator, whether the setting is on or not.
    settings.watching.label_selectors["apps", "deployments"] = PEER_SELECTOR
    ours = operator_memo(memo)
    # handlers/lifecycle.py's start-up has run: this module imports it, so it registered
    # first, and Kopf runs start-up handlers one after the other in that order.
    runtime = ours.runtime
    if runtime is None or not runtime.settings.enable_module_replicas_sync_with_base:
        return
    config = runtime.settings
    try:
        api = await new_api_client()
    except Exception as error:
        # As any start-up failure (handlers/lifecycle.py): `run` says why and exits 1.
        reason = f"start-up failed: peer Deployments: {describe_startup_error(error)}"
        ours.startup_failure = reason
        raise kopf.PermanentError(reason) from error
    metrics = runtime.metrics
    events = EventRecorder(api, instance=config.client_id, metrics=metrics)
    events.start()
    peers = PeerReplicas(
        debounce_seconds=config.peer_replicas_debounce_seconds,
        patch=deployment_patcher(api),
        list_nodes=node_lister(api, node_selector(config)),
        record=events.record,
        api_errors=lambda status: metrics.record_api_error("deployments", status),
    )
    task = asyncio.create_task(peers.run(), name="peer-replicas")
    task.add_done_callback(lambda done: _ended(done, ours))
    _running = _Running(api, events, peers, task)
    log.info(
        "Peer Deployments follow the Ready bases of their cluster, rescaled once a count has "
        "held for %.0fs.",
        config.peer_replicas_debounce_seconds,
    )


@kopf.on.cleanup()
async def stop_peer_replicas(**_: Any) -> None:
    global _running
    running, _running = _running, None
    if running is None:
        return
    await cancel_and_wait([running.task])
    await running.events.stop()
    await running.api.close()


def _ended(task: asyncio.Task[None], memo: OperatorMemo) -> None:
    """`PeerReplicas.run` ends only when cancelled; anything else is a bug and fatal, as for
    the runtime's tasks: /healthz fails and `module-controller run` exits 1."""
    if task.cancelled() or task.exception() is None:
        return
    error = task.exception()
    log.critical("The peer-replicas task failed; the operator stops.", exc_info=error)
    if memo.health is not None:
        memo.health.operator_failed("kubernetes", f"the peer-replicas task failed: {error!r}")
    if memo.stop_flag is not None:
        memo.stop_flag.set()


@kopf.on.event("", "v1", "nodes", labels={COMPONENT_LABEL: "vnode"})
async def peer_node_event(type: str | None, name: str, body: kopf.Body, **_: Any) -> None:
    peers = peer_replicas()
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
    type: str | None, body: kopf.Body, namespace: str | None, name: str | None, **_: Any
) -> None:
    peers = peer_replicas()
    if peers is None:
        return
    if type == "DELETED":
        peers.deployment_gone(namespace or "", name or "")
    else:
        peers.deployment_seen(body)
