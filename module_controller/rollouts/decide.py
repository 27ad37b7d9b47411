"""What a ModuleRollout does next, given its Deployment, their ReplicaSets and pods: no I/O.

`decide` is level-based: it reads the world as it is (after an operator restart too) and
returns the writes that move it one stretch further, the status to show and the Events
to record. The status it is given only carries what the world cannot tell: which step was
approved or paused since when, which pods failed, and when a pod's base came back.

The Deployment side (this file): attaching (the Deployment is paused and labelled, once its
own rollout, if any, is over), which ReplicaSet is the stable one, and what happens when
the Deployment's template is the stable one's (nothing to release, or a release finished,
rolled back or given up). A release in progress is release.py.

What the paused Deployment controller does, which this relies on (kube-controller-manager,
pkg/controller/deployment, `sync` and `scale`): no new ReplicaSet for a new template; with
one active ReplicaSet of its own it keeps that one at spec.replicas; with a new ReplicaSet
(template equal but for pod-template-hash) at spec.replicas and available, it scales the
old ones to 0; with two active ReplicaSets otherwise it pins their sum to replicas +
maxSurge, taking from or giving to the largest — which is why the canary is never the
Deployment's until it is complete. ReplicaSets another controller owns it ignores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from module_controller.rollouts import release
from module_controller.rollouts.actions import (
    Action,
    Decision,
    DeleteReplicaSet,
    PatchDeployment,
    ScaleReplicaSet,
)
from module_controller.rollouts.model import (
    PAUSED_BEFORE_ANNOTATION,
    ROLLOUT_LABEL,
    Phase,
    Rollout,
    RolloutSpec,
)
from module_controller.rollouts.steps import PlannedStep, plan_steps, step_label
from module_controller.rollouts.world import (
    Obj,
    annotations_of,
    available_of,
    controller_uid,
    hash_label_of,
    is_ready,
    labels_of,
    name_of,
    replicas_of,
    revision_of,
    same_template,
    selector_matches,
    spec_of,
    template_hash,
    template_of,
    uid_of,
)

# A rollout with nothing to do looks again this often at most (the controller's resync
# may come sooner); one at work looks again at least this often.
BUSY_REQUEUE_SECONDS = 2.0


@dataclass(frozen=True)
class World:
    """What the cluster says: the Deployment (None when it does not exist), the
    ReplicaSets and pods its selector matches, and the rollout's own ReplicaSets."""

    deployment: Obj | None
    replica_sets: Sequence[Obj]
    pods: Sequence[Obj]


@dataclass
class Scene:
    """A rollout and its attached Deployment, read once for one decision."""

    rollout: Rollout
    spec: RolloutSpec
    deployment: Obj
    total: int
    template: dict[str, Any]
    release: str  # our hash of the Deployment's template
    planned: list[PlannedStep]
    owned: list[Obj]  # the Deployment's ReplicaSets
    canaries: list[Obj]  # the rollout's ReplicaSets (not handed over yet)
    stable: Obj
    pods: Sequence[Obj]
    now: float

    @property
    def name(self) -> str:
        return self.rollout.name

    def pods_of(self, replica_set: Obj) -> list[Obj]:
        uid = uid_of(replica_set)
        return [p for p in self.pods if controller_uid(p) == uid]


def decide(rollout: Rollout, world: World, now: float) -> Decision:
    status = rollout.status.model_copy(deep=True)
    status.observed_generation = rollout.generation
    decision = Decision(status)
    spec = rollout.spec
    if spec is None:
        return _failed(decision, f"invalid spec: {rollout.spec_error}")
    deployment = world.deployment
    ours = [rs for rs in world.replica_sets if controller_uid(rs) == rollout.uid]
    target = spec.workload_ref.name
    if deployment is None:
        for replica_set in ours:
            decision.act(release.delete_canary(replica_set, "its Deployment is gone"))
        return _failed(decision, f"Deployment {target} not found")
    holder = labels_of(deployment).get(ROLLOUT_LABEL)
    if holder and holder != rollout.name:
        return _failed(decision, f"Deployment {target} is already paced by ModuleRollout {holder}")

    owned = [rs for rs in world.replica_sets if controller_uid(rs) == uid_of(deployment)]
    template = template_of(deployment)
    if holder != rollout.name:
        if not native_rollout_done(deployment, owned):
            status.phase = Phase.PROGRESSING
            status.message = (
                f"waiting for Deployment {target}'s own rollout to finish before pacing it"
            )
            decision.requeue(BUSY_REQUEUE_SECONDS)
            return decision
        decision.act(attach(deployment, rollout.name))
        # Attached now (the first time, or a Deployment deleted and made again, or given to
        # its own controller by a `kubectl replace`): what the status remembers of a release
        # was on another object, and nothing of it was rolled back or is still paced.
        status.release = status.stable = status.step_ready_at = None
        status.failures, status.base_waits, status.current_step = [], [], 0
        if status.phase in (Phase.ROLLED_BACK, Phase.FAILED):
            status.phase = None
        decision.say(
            "Normal",
            "Attached",
            f"pacing Deployment {target}: it stays paused while this ModuleRollout exists",
        )
    elif not spec_of(deployment).get("paused"):
        decision.act(PatchDeployment({"spec": {"paused": True}}, "resumed by someone"))
        decision.say(
            "Warning",
            "PausedAgain",
            f"Deployment {target} was resumed: paused again (delete this ModuleRollout to "
            "give it back to the Deployment controller)",
        )

    total = replicas_of(deployment)
    stable = find_stable(owned, template, total, status.stable)
    if stable is None:
        status.phase = Phase.PROGRESSING
        status.message = f"waiting for Deployment {target} to make its first ReplicaSet"
        decision.requeue(BUSY_REQUEUE_SECONDS)
        return decision
    scene = Scene(
        rollout=rollout,
        spec=spec,
        deployment=deployment,
        total=total,
        template=template,
        release=template_hash(template),
        planned=plan_steps(spec.steps, total),
        owned=owned,
        canaries=ours,
        stable=stable,
        pods=world.pods,
        now=now,
    )
    status.replicas = total
    if same_template(template_of(stable), template):
        settled(scene, decision)
    else:
        release.progress(scene, decision)
    return decision


def native_rollout_done(deployment: Obj, owned: list[Obj]) -> bool:
    """The Deployment runs its template, as far as its controller goes: one of its
    ReplicaSets has the template and no other one has pods to run."""
    template = template_of(deployment)
    current = [rs for rs in owned if same_template(template_of(rs), template)]
    others = [rs for rs in owned if rs not in current and replicas_of(rs) > 0]
    observed = int((deployment.get("status") or {}).get("observedGeneration") or 0)
    generation = int((deployment.get("metadata") or {}).get("generation") or 0)
    return bool(current) and not others and observed >= generation


def attach(deployment: Obj, rollout: str) -> Action:
    """Pause the Deployment and label it with the rollout's name; a Deployment the user
    had paused is marked so, and stays paused when the rollout lets it go."""
    patch: dict[str, Any] = {"metadata": {"labels": {ROLLOUT_LABEL: rollout}}}
    if spec_of(deployment).get("paused"):
        patch["metadata"]["annotations"] = {PAUSED_BEFORE_ANNOTATION: "true"}
    else:
        patch["spec"] = {"paused": True}
    return PatchDeployment(patch, f"paced by ModuleRollout {rollout}")


def detach(deployment: Obj) -> PatchDeployment | None:
    """Give a Deployment back to its controller (its ModuleRollout is gone): our label
    and annotation off, and resumed unless the user had paused it first."""
    if ROLLOUT_LABEL not in labels_of(deployment):
        return None
    paused_before = annotations_of(deployment).get(PAUSED_BEFORE_ANNOTATION) == "true"
    patch: dict[str, Any] = {
        "metadata": {
            "labels": {ROLLOUT_LABEL: None},
            "annotations": {PAUSED_BEFORE_ANNOTATION: None},
        }
    }
    if not paused_before:
        patch["spec"] = {"paused": False}
    return PatchDeployment(patch, "its ModuleRollout is gone")


def stray_canaries(
    deployment: Obj, rollout_uid: str, replica_sets: Sequence[Obj]
) -> list[DeleteReplicaSet]:
    """The deletion of a rollout's canaries of `deployment`, which it no longer paces (its
    workloadRef was changed): the rollout's decisions only see its current target's."""
    selector = spec_of(deployment).get("selector") or {}
    return [
        DeleteReplicaSet(name_of(replica_set), "its ModuleRollout paces another Deployment")
        for replica_set in replica_sets
        if rollout_uid
        and controller_uid(replica_set) == rollout_uid
        and selector
        and selector_matches(selector, labels_of(template_of(replica_set)))
    ]


def find_stable(
    owned: list[Obj], template: Mapping[str, Any], total: int, recorded: str | None
) -> Obj | None:
    """The Deployment's ReplicaSet that serves while a release is paced.

    One with the Deployment's template when a release is over: the only active one, a
    canary we handed over (it keeps our label), or one fully available (the Deployment's
    own rollout finished). Else the one the status recorded, else the active one with the
    most available pods (the older on a tie).
    """
    active = [rs for rs in owned if replicas_of(rs) > 0]
    for replica_set in owned:
        if not same_template(template_of(replica_set), template) or replica_set not in active:
            continue
        if (
            ROLLOUT_LABEL in labels_of(replica_set)
            or len(active) == 1
            or available_of(replica_set) >= total
        ):
            return replica_set
    for replica_set in active:
        if recorded and hash_label_of(replica_set) == recorded:
            return replica_set
    if active:
        return max(active, key=lambda rs: (available_of(rs), -revision_of(rs)))
    current = [rs for rs in owned if same_template(template_of(rs), template)]
    if current:
        return current[0]
    return max(owned, key=revision_of) if owned else None


def settled(scene: Scene, decision: Decision) -> None:
    """The Deployment's template is the stable one: nothing to release, a release just
    handed over, or one rolled back (by us or by the user)."""
    status = decision.status
    stable = scene.stable
    for replica_set in scene.canaries:
        decision.act(release.delete_canary(replica_set, "the Deployment runs another template"))
    leaving = 0
    for replica_set in scene.owned:
        if replica_set is stable:
            continue
        if replicas_of(replica_set) > 0:
            decision.act(
                ScaleReplicaSet(name_of(replica_set), 0, "the previous version, after the release")
            )
        leaving += len(scene.pods_of(replica_set))
    leaving += sum(len(scene.pods_of(rs)) for rs in scene.canaries)
    ready = sum(1 for p in scene.pods_of(stable) if is_ready(p))
    stable_release = template_hash(template_of(stable))
    previous = status.phase
    abandoned = (
        status.release is not None
        and status.release != stable_release
        and previous in (Phase.PROGRESSING, Phase.PAUSED, Phase.FAILED)
    )
    status.stable = hash_label_of(stable)
    status.new_ready = ready
    status.pods = f"{ready}/{scene.total}"
    # A release whose status recorded more failures than its budget, with rollback: the
    # look that rolled it back had its status write lost. It was ours, not the user's.
    ours = (
        abandoned
        and scene.spec.rollback_on_failure
        and len(status.failures) > scene.spec.failure_budget
    )
    status.failures = [] if previous != Phase.ROLLED_BACK and not ours else status.failures
    status.base_waits = []
    status.step_ready_at = None
    revision = revision_of(stable)
    if previous == Phase.ROLLED_BACK or abandoned:
        if ours:
            cause = release.failure_cause(scene, status)
            status.message = f"{cause}; rolled back to revision {revision}"
            decision.say("Warning", "RolledBack", status.message)
        elif abandoned:
            decision.say(
                "Warning",
                "RolledBack",
                f"the Deployment's template was put back (revision {revision}): the release "
                "was abandoned",
            )
            status.message = f"the Deployment's template was put back to revision {revision}"
        status.phase = Phase.ROLLED_BACK
        status.release = stable_release
    elif leaving:
        status.phase = Phase.PROGRESSING
        status.message = f"the previous version's pods are being removed ({leaving} left)"
    else:
        if previous not in (None, Phase.SUCCEEDED):
            decision.say(
                "Normal",
                "Succeeded",
                f"every pod runs the Deployment's template (revision {revision})",
            )
        status.phase = Phase.SUCCEEDED
        status.message = f"{ready}/{scene.total} pods on revision {revision}"
        status.release = stable_release
    status.current_step = len(scene.planned) if status.phase != Phase.ROLLED_BACK else 0
    status.step = step_label(status.current_step, scene.planned)
    if leaving:
        decision.requeue(BUSY_REQUEUE_SECONDS)


def _failed(decision: Decision, message: str) -> Decision:
    status = decision.status
    if status.phase != Phase.FAILED or status.message != message:
        decision.say("Warning", "Failed", message)
    status.phase = Phase.FAILED
    status.message = message
    return decision
