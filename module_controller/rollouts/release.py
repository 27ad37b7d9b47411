"""A release in progress: the Deployment's template differs from the stable ReplicaSet's.

The new version runs in the canary, a ReplicaSet the ModuleRollout controls (so the paused
Deployment leaves it alone), with the Deployment's template plus a pod-template-hash label
of ours. Step by step the canary grows to the step's size, never past it; the stable keeps
all its pods, and on each base the operator takes the old pod out of Ready before the new
one goes Ready. A step is done when that many new pods are Ready; then it waits for
approval (`pause: {}`), for its grace time (`pause: {duration: N}`, only if no pod failed
in it), or goes on. After the last step the canary is handed over to the Deployment, which
then scales the old ReplicaSet to 0 itself.

A new pod failing (InstallFailed, a BROKEN module, a wrong version, ...) or not Ready within
readyTimeoutSeconds counts against the step's failureBudget and is replaced while the
budget lasts; past it the release stops, and with rollbackOnFailure the Deployment's
template is put back and the canary deleted. The timeout counts from when the pod last went
NotReady (its creation, for one never Ready) or when its base came back: a pod waiting for
its base (BaseNotReady, BaseGone) is not failing, its base is the node lifecycle's business.

A failure is counted before anything is done about it: the pod that shows it is deleted,
or the release rolled back, only by a look whose rollout status (as read) already records
it. The status is written after the actions; were a failed pod deleted in the look that
first counts it and that write lost (an API error, the operator stopping), the next look
would find no trace of the failure and the budget would be overrun.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from module_controller.rollouts.actions import (
    Action,
    CreateReplicaSet,
    Decision,
    DeletePod,
    DeleteReplicaSet,
    PatchReplicaSet,
    ReplaceDeploymentTemplate,
    ResetApproval,
    ScaleReplicaSet,
)
from module_controller.rollouts.model import (
    API_VERSION,
    DESIRED_REPLICAS_ANNOTATION,
    HASH_LABEL,
    KIND,
    MAX_REPLICAS_ANNOTATION,
    ROLLOUT_LABEL,
    BaseWait,
    Failure,
    Phase,
    RolloutStatus,
)
from module_controller.rollouts.steps import PlannedStep, max_surge, step_label, step_of
from module_controller.rollouts.world import (
    Obj,
    failure_of,
    format_time,
    hash_label_of,
    is_deleting,
    is_ready,
    name_of,
    not_ready_since,
    parse_time,
    ready_condition,
    replicas_of,
    revision_of,
    same_template,
    spec_of,
    template_of,
    uid_of,
    waiting_on_base,
    without_hash,
)

if TYPE_CHECKING:
    from module_controller.rollouts.decide import Scene

NOT_READY_IN_TIME = "NotReadyInTime"
# While pods are on their way, look again this often at least (their events come sooner).
PROGRESS_REQUEUE_SECONDS = 2.0


def progress(scene: Scene, decision: Decision) -> None:
    status = decision.status
    spec = scene.spec
    stable = scene.stable
    status.stable = hash_label_of(stable)
    for replica_set in scene.owned:
        if replica_set is not stable and replicas_of(replica_set) > 0:
            # The Deployment made it while it was resumed: the canary does that work.
            decision.act(
                ScaleReplicaSet(name_of(replica_set), 0, "made by the Deployment while resumed")
            )
    canary = _canary(scene, decision)
    halted = status.release == scene.release and len(status.failures) > spec.failure_budget
    if status.release != scene.release or status.phase == Phase.ROLLED_BACK:
        _start(scene, decision, canary)
    elif halted and status.phase == Phase.FAILED:
        status.step = step_label(status.current_step, scene.planned)
        return  # stays as it stopped until the budget, the template or the spec changes
    index = min(status.current_step, len(scene.planned) - 1)
    for _ in scene.planned:  # each pass either stops or moves on to the next step
        step = scene.planned[index]
        if not _work_on(scene, decision, canary, step):
            break
        if index == len(scene.planned) - 1:
            _hand_over(scene, decision, canary)
            break
        if not _may_go_on(scene, decision, step):
            break
        index += 1
        status.current_step = index
        status.step_ready_at = None
        status.failures = []
        decision.say("Normal", "StepStarted", _step_text(scene, scene.planned[index]))
    status.step = step_label(status.current_step, scene.planned)


def _canary(scene: Scene, decision: Decision) -> Obj | None:
    """The ReplicaSet that runs this release: ours, or a ReplicaSet of the Deployment's
    with this template and no pods (an older revision released again), taken over. Our
    ReplicaSets of other templates are deleted."""
    found: Obj | None = None
    for replica_set in scene.canaries:
        if found is None and same_template(template_of(replica_set), scene.template):
            found = replica_set
        else:
            decision.act(delete_canary(replica_set, "a newer template replaced its release"))
    if found is not None:
        return found
    for replica_set in scene.owned:
        if (
            replica_set is not scene.stable
            and replicas_of(replica_set) == 0
            and same_template(template_of(replica_set), scene.template)
        ):
            decision.act(
                PatchReplicaSet(
                    name_of(replica_set),
                    {
                        "metadata": {
                            "ownerReferences": [_owner(scene)],
                            "labels": {ROLLOUT_LABEL: scene.name},
                        }
                    },
                    "an earlier revision of this template, released again",
                )
            )
            return replica_set
    return None


def _start(scene: Scene, decision: Decision, canary: Obj | None) -> None:
    status = decision.status
    status.release = scene.release
    status.failures = []
    status.base_waits = []
    status.step_ready_at = None
    status.current_step = 0 if canary is None else step_of(replicas_of(canary), scene.planned)
    if scene.spec.approved_step != 0:
        decision.act(ResetApproval())
        # The decision below must not count the previous release's approval.
        scene.spec = scene.spec.model_copy(update={"approved_step": 0})
    decision.say(
        "Normal",
        "ReleaseStarted",
        f"new template {scene.release} ({_images(scene.template)}), replacing revision "
        f"{revision_of(scene.stable)}: {len(scene.planned)} steps",
    )
    decision.say("Normal", "StepStarted", _step_text(scene, scene.planned[status.current_step]))


def _work_on(scene: Scene, decision: Decision, canary: Obj | None, step: PlannedStep) -> bool:
    """Bring the canary to the step's size and count its pods; True when the step's pods
    are all Ready (and the release did not stop)."""
    status = decision.status
    status.phase = Phase.PROGRESSING
    if canary is None:
        decision.act(CreateReplicaSet(canary_body(scene, step.size)))
        pods: list[Obj] = []
    else:
        if replicas_of(canary) != step.size:
            decision.act(ScaleReplicaSet(name_of(canary), step.size, _step_text(scene, step)))
        pods = [p for p in scene.pods_of(canary) if not is_deleting(p)]
    ready = [p for p in pods if is_ready(p)]
    status.new_ready = len(ready)
    status.pods = f"{len(ready)}/{scene.total}"
    if not _count_failures(scene, decision, pods):
        _stop(scene, decision, canary)
        return False
    done = canary is not None and replicas_of(canary) == step.size and len(ready) >= step.size
    if not done:
        # The grace time is for the step's pods all Ready: it starts again once they are.
        status.step_ready_at = None
        waiting = f"{len(ready)}/{step.size} new pods Ready"
        if status.failures:
            waiting += f", {len(status.failures)} failed (budget {scene.spec.failure_budget})"
        status.message = f"step {step_label(step.index, scene.planned)}: {waiting}"
        decision.requeue(PROGRESS_REQUEUE_SECONDS)
    return done


def _count_failures(scene: Scene, decision: Decision, pods: list[Obj]) -> bool:
    """Record the step's new failures and replace the failed pods already recorded; False
    once the step has more failures than its budget."""
    status = decision.status
    budget = scene.spec.failure_budget
    known = {failure.pod for failure in status.failures}
    recorded = recorded_failures(scene.rollout.status, status)
    back = {wait.pod: wait.back_at for wait in status.base_waits}
    status.base_waits = []
    for pod in pods:
        if is_ready(pod):
            continue
        name = name_of(pod)
        failed = failure_of(pod) or _not_ready_in_time(scene, decision, pod, back)
        if failed is None:
            continue
        if name not in known:
            status.failures.append(Failure(pod=name, reason=failed[0], message=failed[1]))
            known.add(name)
            decision.say(
                "Warning",
                "PodFailed",
                f"new pod {name} failed ({len(status.failures)} of budget {budget}): "
                f"{failed[0]}: {failed[1]}",
            )
        if len(status.failures) > budget:
            continue
        if name in recorded:
            decision.act(DeletePod(name, "failed, within the failure budget: another try"))
        else:
            decision.requeue(0)  # deleted by the look after this one's status is written
    return len(status.failures) <= budget


def _not_ready_in_time(
    scene: Scene, decision: Decision, pod: Obj, back: dict[str, str | None]
) -> tuple[str, str] | None:
    """(NotReadyInTime, why) for a pod not Ready within the timeout; None while it waits
    for its base, or still has time (a look is asked for when that time is up)."""
    status = decision.status
    name = name_of(pod)
    if waiting_on_base(pod):
        status.base_waits.append(BaseWait(pod=name))
        return None  # its pod event, when the base is back, brings the next look
    since = not_ready_since(pod)
    if name in back:
        back_at = back[name] or format_time(scene.now)
        status.base_waits.append(BaseWait(pod=name, backAt=back_at))
        since = max(since or 0.0, parse_time(back_at) or 0.0)
    if since is None:
        return None
    timeout = scene.spec.ready_timeout_seconds
    if scene.now - since < timeout:
        decision.requeue(since + timeout - scene.now)
        return None
    condition = ready_condition(pod)
    said = ": ".join(str(condition.get(k)) for k in ("reason", "message") if condition.get(k))
    return NOT_READY_IN_TIME, f"not Ready for {timeout}s, since {format_time(since)}" + (
        f" ({said})" if said else ""
    )


def recorded_failures(written: RolloutStatus, status: RolloutStatus) -> set[str]:
    """The failed pods of the current release and step that the rollout's status, as read
    at the start of the look, already records."""
    if written.release != status.release or written.current_step != status.current_step:
        return set()
    return {failure.pod for failure in written.failures}


def failure_cause(scene: Scene, status: RolloutStatus) -> str:
    step = step_label(status.current_step, scene.planned)
    first = status.failures[0]
    return (
        f"step {step}: {len(status.failures)} new pods failed (budget "
        f"{scene.spec.failure_budget}), first {first.pod}: {first.reason}: {first.message}"
    )


def _stop(scene: Scene, decision: Decision, canary: Obj | None) -> None:
    status = decision.status
    cause = failure_cause(scene, status)
    revision = revision_of(scene.stable)
    if scene.spec.rollback_on_failure:
        if len(recorded_failures(scene.rollout.status, status)) <= scene.spec.failure_budget:
            # The rollback deletes the pods that show the failures: record them first.
            status.phase = Phase.PROGRESSING
            status.message = f"{cause}; rolling back to revision {revision}"
            decision.requeue(0)
            return
        decision.act(
            ReplaceDeploymentTemplate(
                without_hash(template_of(scene.stable)), scene.template, "rollback"
            )
        )
        if canary is not None:
            decision.act(delete_canary(canary, "rollback"))
        status.phase = Phase.ROLLED_BACK
        status.message = f"{cause}; rolled back to revision {revision}"
        decision.say("Warning", "RolledBack", status.message)
    else:
        if scene.rollout.status.phase != Phase.FAILED:
            decision.say("Warning", "FailureBudgetExceeded", cause)
        status.phase = Phase.FAILED
        status.message = (
            f"{cause}; stopped: raise failureBudget to go on, or change the Deployment's "
            f"template (the previous one is revision {revision})"
        )


def _may_go_on(scene: Scene, decision: Decision, step: PlannedStep) -> bool:
    """The step's pods are Ready: may the next step start now?"""
    status = decision.status
    ready_at = parse_time(status.step_ready_at)
    if ready_at is None:
        ready_at = scene.now
        status.step_ready_at = format_time(ready_at)
    pause = step.pause
    if pause is None:
        return True
    label = step_label(step.index, scene.planned)
    if scene.spec.approved_step > step.index:
        decision.say("Normal", "StepApproved", f"step {label} approved")
        return True
    ready = f"{status.new_ready}/{step.size} new pods Ready"
    approve = f"module-controller rollout approve {scene.name}"
    if pause.duration is not None and not status.failures:
        ends = ready_at + pause.duration
        if ends <= scene.now:
            return True
        # The time it ends, not a countdown: the status does not change at every look.
        message = f"step {label}: {ready}; grace time {pause.duration}s, goes on at " + (
            format_time(ends)
        )
        decision.requeue(ends - scene.now)
    elif pause.duration is not None:
        message = f"step {label}: {ready}; a pod failed in this step, approve to go on: {approve}"
    else:
        message = f"step {label}: {ready}; approve to go on: {approve}"
    before = scene.rollout.status
    if before.phase != Phase.PAUSED or before.current_step != step.index:
        decision.say("Normal", "StepPaused", message)
    status.phase = Phase.PAUSED
    status.message = message
    return False


def _hand_over(scene: Scene, decision: Decision, canary: Obj | None) -> None:
    """The last step is Ready: the canary becomes the Deployment's new ReplicaSet."""
    if canary is None:
        return
    status = decision.status
    total = scene.total
    surge = max_surge(dict(scene.deployment), total)
    decision.act(
        PatchReplicaSet(
            name_of(canary),
            {
                "metadata": {
                    "ownerReferences": [_deployment_owner(scene.deployment)],
                    "annotations": {
                        DESIRED_REPLICAS_ANNOTATION: str(total),
                        MAX_REPLICAS_ANNOTATION: str(total + surge),
                    },
                }
            },
            "hand-over: the release's last step is Ready",
        )
    )
    decision.act(ScaleReplicaSet(name_of(scene.stable), 0, "the previous version"))
    status.message = (
        f"all {total} new pods Ready: handed over to the Deployment, removing the previous version"
    )
    decision.say("Normal", "HandedOver", status.message)
    decision.requeue(PROGRESS_REQUEUE_SECONDS)


def canary_body(scene: Scene, replicas: int) -> dict[str, Any]:
    """A ReplicaSet of the Deployment's template, controlled by the ModuleRollout."""
    deployment = scene.deployment
    template = copy.deepcopy(scene.template)
    meta = template.setdefault("metadata", {})
    meta["labels"] = {**(meta.get("labels") or {}), HASH_LABEL: scene.release}
    selector = copy.deepcopy(dict(spec_of(deployment).get("selector") or {}))
    selector["matchLabels"] = {**(selector.get("matchLabels") or {}), HASH_LABEL: scene.release}
    labels = {**meta["labels"], ROLLOUT_LABEL: scene.name}
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": f"{name_of(deployment)}-{scene.release}",
            "namespace": scene.rollout.namespace,
            "labels": labels,
            "ownerReferences": [_owner(scene)],
        },
        "spec": {
            "replicas": replicas,
            "minReadySeconds": int(spec_of(deployment).get("minReadySeconds") or 0),
            "selector": selector,
            "template": template,
        },
    }


def delete_canary(replica_set: Obj, why: str) -> Action:
    return DeleteReplicaSet(name_of(replica_set), why)


def _owner(scene: Scene) -> dict[str, Any]:
    # Controller: the Deployment (and the ReplicaSet controller) leave it to us. No
    # blockOwnerDeletion: that would need rights on the ModuleRollout's finalizers.
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": scene.name,
        "uid": scene.rollout.uid,
        "controller": True,
    }


def _deployment_owner(deployment: Obj) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": name_of(deployment),
        "uid": uid_of(deployment),
        "controller": True,
    }


def _step_text(scene: Scene, step: PlannedStep) -> str:
    label = step_label(step.index, scene.planned)
    share = f" ({step.written})" if step.written.endswith("%") else ""
    pods = "pod" if step.size == 1 else "pods"
    return f"step {label}: the new version on {step.size} {pods}{share}"


def _images(template: dict[str, Any]) -> str:
    containers = (template.get("spec") or {}).get("containers") or []
    return ", ".join(f"{c.get('name')}={c.get('image')}" for c in containers) or "no containers"
