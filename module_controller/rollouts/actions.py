"""What a decision asks for: API writes, carried out in order by executor.py.

Each is plain data, so the decision is tested by comparing lists. Writes to the user's
Deployment are merge patches of exactly the fields we own (spec.paused, our label and
annotation) under our field manager, except the rollback, which replaces the whole pod
template (a merge patch would keep map keys the bad template added).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from module_controller.k8s_events import EventType
from module_controller.rollouts.model import RolloutStatus


@dataclass(frozen=True)
class PatchDeployment:
    """A merge patch of the Deployment (pause, label, annotation)."""

    patch: dict[str, Any]
    why: str


@dataclass(frozen=True)
class ReplaceDeploymentTemplate:
    """Put `template` back as the Deployment's pod template (a rollback), if the template
    is still `replacing` (not changed by someone meanwhile)."""

    template: dict[str, Any]
    replacing: dict[str, Any]
    why: str


@dataclass(frozen=True)
class CreateReplicaSet:
    body: dict[str, Any]


@dataclass(frozen=True)
class ScaleReplicaSet:
    name: str
    replicas: int
    why: str


@dataclass(frozen=True)
class PatchReplicaSet:
    """A merge patch of a ReplicaSet (the hand-over of the canary)."""

    name: str
    patch: dict[str, Any]
    why: str


@dataclass(frozen=True)
class DeleteReplicaSet:
    """Delete a canary and, in the background, its pods."""

    name: str
    why: str


@dataclass(frozen=True)
class DeletePod:
    """A failed new pod, within the budget: its ReplicaSet makes another try."""

    name: str
    why: str


@dataclass(frozen=True)
class ResetApproval:
    """A new release starts with nothing approved: spec.approvedStep back to 0."""

    why: str = "a new release starts unapproved"


Action = (
    PatchDeployment
    | ReplaceDeploymentTemplate
    | CreateReplicaSet
    | ScaleReplicaSet
    | PatchReplicaSet
    | DeleteReplicaSet
    | DeletePod
    | ResetApproval
)


@dataclass(frozen=True)
class RolloutEvent:
    """A Kubernetes Event on the ModuleRollout (kubectl describe lists them)."""

    type: EventType
    reason: str
    message: str


@dataclass
class Decision:
    # The status to write once the actions are done.
    status: RolloutStatus
    actions: list[Action] = field(default_factory=list)
    events: list[RolloutEvent] = field(default_factory=list)
    # Look again after this many seconds at the latest (pod events may wake it sooner).
    requeue_after: float | None = None

    def act(self, action: Action) -> None:
        self.actions.append(action)

    def say(self, type: EventType, reason: str, message: str) -> None:
        self.events.append(RolloutEvent(type, reason, message))

    def requeue(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        if self.requeue_after is None or seconds < self.requeue_after:
            self.requeue_after = seconds
