"""ModuleRollouts (module_controller/rollouts/): the watches that feed the rollout controller.

An `on.event` handler, which writes nothing onto the objects it sees: ModuleRollouts (ours,
but a finalizer would hold `kubectl delete` while the operator is down; a deleted
rollout's Deployment is given back by the controller's poll instead). Module pods come
from the runtime's one pod watch (`Runtime.pod_listeners`). Deployments and ReplicaSets
are read by the controller itself, never watched through Kopf.

The controller starts after the runtime (this module registers after handlers/lifecycle.py)
and runs on its API client, Event recorder and metrics registry; with several replicas,
each rollout is worked on by the live replica rendezvous hashing names for it (shards/),
and by none while this replica may not act (its membership lapsed). Without the CRD in the
cluster Kopf serves no ModuleRollouts and logs that once; everything else runs as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kopf

from module_controller.operator_memo import OperatorMemo, operator_memo
from module_controller.rollouts.controller import RolloutController
from module_controller.rollouts.executor import RolloutApi
from module_controller.rollouts.model import GROUP, PLURAL, VERSION
from module_controller.shards.assignment import intended_owner
from module_controller.shards.membership import Membership


def _controller(memo: Any) -> RolloutController | None:
    return operator_memo(memo).rollouts


def owner_check(membership: Membership) -> Callable[[str], bool]:
    """Whether this replica works on a rollout (its key "namespace/name") now."""

    def owns(key: str) -> bool:
        members = membership.members
        return membership.acting and intended_owner(f"rollout/{key}", members) == membership.me

    return owns


def start_controller(ours: OperatorMemo) -> RolloutController | None:
    """The rollout controller on the runtime's parts, started; None without a runtime
    (start-up failed and Kopf is stopping)."""
    runtime = ours.runtime
    if runtime is None:
        return None
    controller = RolloutController(
        RolloutApi(runtime.api),
        runtime.events.record,
        runtime.metrics.registry,
        # Cleared by the clean-up as it begins: no look starts on a closing API client.
        alive=lambda: ours.runtime is not None,
        owns=owner_check(runtime.membership),
    )
    controller.start()
    runtime.pod_listeners.append(controller.pod_event)
    ours.rollouts = controller
    return controller


@kopf.on.startup()
async def start_rollouts(memo: Any, **_: Any) -> None:
    start_controller(operator_memo(memo))


@kopf.on.cleanup()
async def stop_rollouts(memo: Any, **_: Any) -> None:
    ours = operator_memo(memo)
    controller, ours.rollouts = ours.rollouts, None
    if controller is not None:
        if ours.runtime is not None and controller.pod_event in ours.runtime.pod_listeners:
            ours.runtime.pod_listeners.remove(controller.pod_event)
        await controller.stop()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def rollout_event(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    controller = _controller(memo)
    if controller is not None:
        controller.rollout_event(type, body)
