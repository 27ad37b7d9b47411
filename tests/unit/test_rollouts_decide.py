"""`decide` when things go wrong or change under it: failures and rollback, a restart in the
middle of a step, a template changed or put back mid-release, a Deployment resumed by
hand, deleted, or paced by another rollout, and specs that make no sense."""

from __future__ import annotations

import copy
from typing import Any

from module_controller.modules import reasons
from module_controller.rollouts.actions import (
    CreateReplicaSet,
    DeletePod,
    DeleteReplicaSet,
    PatchDeployment,
    ReplaceDeploymentTemplate,
    ResetApproval,
    ScaleReplicaSet,
)
from module_controller.rollouts.decide import World, decide, detach
from module_controller.rollouts.model import PAUSED_BEFORE_ANNOTATION, ROLLOUT_LABEL, Phase, Rollout
from module_controller.rollouts.release import NOT_READY_IN_TIME
from module_controller.rollouts.world import format_time, replicas_of
from tests.unit.test_rollouts_fake import JAR, FakeCluster, canary_like, template
from tests.unit.test_rollouts_release import Driver, attached


def failing_release(**spec: Any) -> tuple[FakeCluster, Driver]:
    cluster = FakeCluster()
    driver = attached(cluster, **spec)
    cluster.failing.add(JAR.format(version="2.0.0"))
    cluster.release("2.0.0")
    return cluster, driver


def test_the_first_failure_past_a_budget_of_0_rolls_the_deployment_back() -> None:
    cluster, driver = failing_release()
    stable_before = copy.deepcopy(next(iter(cluster.owned())))
    driver.run(driver.phase_is(Phase.ROLLED_BACK))
    status = driver.status
    assert [(f.reason, f.pod.startswith("biz1-")) for f in status.failures] == [
        ("InstallFailed", True)
    ]
    assert "1 new pods failed (budget 0)" in status.message
    assert "rolled back to revision 1" in status.message
    assert cluster.d["spec"]["template"] == template("1.0.0"), "the template is the old one again"
    assert not cluster.pods_of_version("2.0.0") and len(cluster.replica_sets) == 1
    stable = next(iter(cluster.owned()))
    assert (
        replicas_of(stable) == 6 and stable["metadata"]["uid"] == stable_before["metadata"]["uid"]
    )
    assert driver.reasons()[-2:] == ["PodFailed", "RolledBack"]
    # And it stays so: nothing made again for the release that failed.
    for _ in range(5):
        cluster.tick()
        decision = driver.look()
        assert decision.actions == [] and driver.status.phase == Phase.ROLLED_BACK


def test_failures_within_the_budget_are_replaced_and_the_next_one_stops_it() -> None:
    cluster, driver = failing_release(failureBudget=1)
    driver.run(driver.phase_is(Phase.ROLLED_BACK))
    failures = driver.status.failures
    assert len(failures) == 2 and failures[0].pod != failures[1].pod
    deleted = [a for d in driver.decisions for a in d.actions if isinstance(a, DeletePod)]
    assert [a.name for a in deleted] == [failures[0].pod], "only the one within the budget"
    assert cluster.ready_of_version("1.0.0") == 6


def test_without_rollback_the_release_stops_where_it_is_until_the_budget_is_raised() -> None:
    cluster, driver = failing_release(rollbackOnFailure=False)
    driver.run(driver.phase_is(Phase.FAILED))
    assert "raise failureBudget to go on" in driver.status.message
    assert driver.reasons().count("FailureBudgetExceeded") == 1
    pods = sorted(p["metadata"]["name"] for p in cluster.pods_of_version("2.0.0"))
    for _ in range(5):
        cluster.tick()
        assert driver.look().actions == []
    assert sorted(p["metadata"]["name"] for p in cluster.pods_of_version("2.0.0")) == pods
    assert cluster.d["spec"]["template"] == template("2.0.0"), "the template stays"
    driver.body["spec"]["failureBudget"] = 1
    decision = driver.look()
    assert [type(a) for a in decision.actions] == [DeletePod], "a second try"


def test_a_pod_not_ready_in_time_counts_as_failed() -> None:
    cluster = FakeCluster()
    driver = attached(cluster, readyTimeoutSeconds=30)
    cluster.stuck.add(JAR.format(version="2.0.0"))
    cluster.release("2.0.0")
    driver.look()
    decision = driver.look()
    assert decision.requeue_after is not None and decision.requeue_after <= 30
    driver.run(driver.phase_is(Phase.ROLLED_BACK), seconds=10)
    assert driver.status.failures[0].reason == NOT_READY_IN_TIME


def test_a_restart_at_a_paused_step_keeps_it_paused_even_with_its_status_lost() -> None:
    cluster = FakeCluster()
    driver = attached(cluster)
    cluster.release("2.0.0")
    driver.run(driver.phase_is(Phase.PAUSED, 0))
    kept = driver.status
    for lost in (False, True):
        if lost:
            driver.body["status"] = {}
        cluster.tick(120)
        decision = driver.look()
        status = driver.status
        assert status.phase == Phase.PAUSED and status.current_step == 0, status
        assert status.step == kept.step and status.pods == kept.pods
        assert not [a for a in decision.actions if not isinstance(a, PatchDeployment)]
    assert len(cluster.pods_of_version("2.0.0")) == 1


def test_a_restart_in_the_grace_time_keeps_its_end() -> None:
    cluster = FakeCluster()
    driver = attached(cluster)
    cluster.release("2.0.0")
    driver.run(driver.phase_is(Phase.PAUSED, 0))
    driver.approve()
    driver.run(driver.phase_is(Phase.PAUSED, 1))
    ends = driver.status.step_ready_at
    cluster.tick(10)
    decision = driver.look()
    assert driver.status.step_ready_at == ends
    assert decision.requeue_after is not None and 19 <= decision.requeue_after <= 21


def test_a_newer_template_mid_release_starts_over_from_the_first_step() -> None:
    cluster = FakeCluster()
    driver = attached(cluster)
    cluster.release("2.0.0")
    driver.run(driver.phase_is(Phase.PAUSED, 0))
    driver.approve()
    driver.run(driver.phase_is(Phase.PAUSED, 1))
    cluster.release("3.0.0")
    driver.new = "3.0.0"
    decision = driver.look()
    kinds = [type(a) for a in decision.actions if not isinstance(a, ResetApproval)]
    assert kinds == [DeleteReplicaSet, CreateReplicaSet], kinds
    driver.run(driver.phase_is(Phase.PAUSED, 0))
    assert not cluster.pods_of_version("2.0.0")
    assert cluster.ready_of_version("3.0.0") == 1


def test_the_old_template_put_back_by_hand_mid_release_is_a_roll_back() -> None:
    cluster = FakeCluster()
    driver = attached(cluster)
    cluster.release("2.0.0")
    driver.run(driver.phase_is(Phase.PAUSED, 0))
    cluster.release("1.0.0")
    driver.run(driver.phase_is(Phase.ROLLED_BACK))
    assert "put back to revision" in driver.status.message
    assert not cluster.pods_of_version("2.0.0") and len(cluster.replica_sets) == 1


def test_a_deployment_resumed_by_hand_is_paused_again_and_its_new_replica_set_emptied() -> None:
    cluster = FakeCluster()
    driver = attached(cluster)
    cluster.release("2.0.0")
    driver.run(driver.phase_is(Phase.PAUSED, 0))
    # What a resume makes before we see it: the Deployment's own ReplicaSet of 2.0.0.
    cluster.d["spec"]["paused"] = False
    cluster.apply([canary_like(cluster, "2.0.0-native", 2, cluster.d["metadata"]["uid"])])
    decision = driver.look()
    assert PatchDeployment({"spec": {"paused": True}}, "resumed by someone") in decision.actions
    scaled = [a for a in decision.actions if isinstance(a, ScaleReplicaSet)]
    assert [(a.replicas, a.why) for a in scaled] == [(0, "made by the Deployment while resumed")]
    assert "PausedAgain" in driver.reasons()


def test_no_pacing_while_the_deployments_own_rollout_runs() -> None:
    cluster = FakeCluster()
    cluster.release("2.0.0")  # not yet seen by the Deployment controller
    driver = Driver(cluster)
    decision = driver.look()
    assert decision.actions == []
    assert driver.status.phase == Phase.PROGRESSING
    assert "own rollout to finish" in driver.status.message
    cluster.tick()  # the Deployment controller rolls 2.0.0 out by itself
    driver.run(driver.phase_is(Phase.SUCCEEDED))
    assert cluster.d["spec"]["paused"] is True
    assert cluster.replicas_by_owner()["deployment:2.0.0"] == 6


def test_a_deployment_someone_else_paces_is_left_alone() -> None:
    cluster = FakeCluster()
    cluster.d["metadata"]["labels"][ROLLOUT_LABEL] = "other"
    driver = Driver(cluster)
    decision = driver.look()
    assert decision.actions == []
    assert driver.status.phase == Phase.FAILED
    assert driver.status.message == "Deployment biz1 is already paced by ModuleRollout other"


def test_a_missing_deployment_fails_and_the_canary_goes() -> None:
    cluster = FakeCluster()
    driver = attached(cluster)
    cluster.release("2.0.0")
    driver.run(driver.phase_is(Phase.PAUSED, 0))
    canary = next(rs for rs in cluster.replica_sets.values() if rs not in cluster.owned())
    cluster.deployment = None
    decision = driver.look()
    assert decision.actions == [
        DeleteReplicaSet(canary["metadata"]["name"], "its Deployment is gone")
    ]
    assert driver.status.message == "Deployment biz1 not found"
    assert driver.reasons()[-1] == "Failed"
    assert driver.look().events == [], "said once"


def test_an_invalid_spec_says_which_field() -> None:
    body = {
        "metadata": {"name": "x", "namespace": "n", "uid": "u"},
        "spec": {"workloadRef": {"name": "biz1"}, "steps": [{"replicas": "150%"}]},
    }
    rollout = Rollout.from_body(body)
    assert rollout.spec is None
    decision = decide(rollout, World(None, [], []), 0.0)
    assert decision.status.phase == Phase.FAILED
    assert decision.status.message.startswith("invalid spec: spec.steps[0].replicas: ")
    assert "150%" in decision.status.message


def test_giving_the_deployment_back_resumes_it_unless_it_was_paused_before() -> None:
    cluster = FakeCluster()
    attached(cluster)
    action = detach(cluster.d)
    assert action is not None
    assert action.patch == {
        "metadata": {
            "labels": {ROLLOUT_LABEL: None},
            "annotations": {PAUSED_BEFORE_ANNOTATION: None},
        },
        "spec": {"paused": False},
    }
    paused = FakeCluster()
    paused.d["spec"]["paused"] = True
    driver = Driver(paused)
    first = driver.look()
    assert first.actions == [
        PatchDeployment(
            {
                "metadata": {
                    "labels": {ROLLOUT_LABEL: "biz1"},
                    "annotations": {PAUSED_BEFORE_ANNOTATION: "true"},
                }
            },
            "paced by ModuleRollout biz1",
        )
    ]
    again = detach(paused.d)
    assert again is not None and "spec" not in again.patch
    assert detach(FakeCluster().d) is None, "not ours: nothing to give back"


def test_a_rollback_replaces_the_whole_template() -> None:
    cluster, driver = failing_release()
    # A key the bad template added must not survive the rollback (a merge patch keeps it).
    cluster.d["spec"]["template"]["metadata"]["annotations"] = {"added": "by 2.0.0"}
    cluster.d["metadata"]["generation"] += 1
    driver.run(driver.phase_is(Phase.ROLLED_BACK))
    rollbacks = [
        a for d in driver.decisions for a in d.actions if isinstance(a, ReplaceDeploymentTemplate)
    ]
    assert rollbacks and rollbacks[0].template == template("1.0.0")
    assert "annotations" not in cluster.d["spec"]["template"]["metadata"]


def _not_ready(pod: dict[str, Any], reason: str, since: float | None = None) -> None:
    condition = {"type": "Ready", "status": "False", "reason": reason}
    if since is not None:
        condition["lastTransitionTime"] = format_time(since)
    pod["status"] = {"conditions": [condition]}


def test_a_ready_canary_pod_whose_base_goes_away_is_waiting_not_failed() -> None:
    """A base that misses heartbeats (or is deleted) takes its pods out of Ready: the node
    lifecycle's business, not the module's. With the issue's spec (budget 0, rollback) a
    beta left waiting for approval longer than readyTimeoutSeconds must not be rolled back
    by one base blip."""
    cluster = FakeCluster()
    driver = attached(cluster)
    cluster.release("2.0.0")
    driver.run(driver.phase_is(Phase.PAUSED, 0))
    cluster.tick(600)  # the approver is at lunch
    assert driver.look().actions == []
    (beta,) = cluster.pods_of_version("2.0.0")
    cluster.stuck.add(JAR.format(version="2.0.0"))  # the model's operator leaves it so
    for reason in (reasons.BASE_DOWN, reasons.BASE_GONE):
        _not_ready(beta, reason, cluster.now)
        cluster.tick(600)
        decision = driver.look()
        assert not any(isinstance(a, ReplaceDeploymentTemplate) for a in decision.actions)
        assert driver.status.phase == Phase.PROGRESSING and driver.status.failures == []
        assert [w.pod for w in driver.status.base_waits] == [beta["metadata"]["name"]]


def test_a_pod_back_from_its_base_gets_the_whole_ready_timeout_again() -> None:
    """Its Ready condition has been False since its base went: the timeout counts from
    when the rollout saw it back (the status keeps that), not from the condition."""
    cluster = FakeCluster()
    driver = attached(cluster, readyTimeoutSeconds=30)
    cluster.release("2.0.0")
    driver.run(driver.phase_is(Phase.PAUSED, 0))
    (beta,) = cluster.pods_of_version("2.0.0")
    went = cluster.now
    _not_ready(beta, reasons.BASE_DOWN, went)
    cluster.stuck.add(JAR.format(version="2.0.0"))  # the module installs slowly once back
    cluster.tick(600)
    driver.look()
    _not_ready(beta, reasons.INSTALLING, went)  # the base restarted: installed again
    driver.look()
    (wait,) = driver.status.base_waits
    assert wait.back_at == format_time(cluster.now) and driver.status.failures == []
    cluster.tick(29)
    driver.look()
    assert driver.status.failures == []
    cluster.tick(2)
    driver.look()
    (failure,) = driver.status.failures
    assert failure.reason == NOT_READY_IN_TIME
    assert failure.message.startswith(f"not Ready for 30s, since {wait.back_at} (")


def test_a_pod_that_was_ready_gets_the_ready_timeout_from_when_it_went_not_ready() -> None:
    cluster = FakeCluster()
    driver = attached(cluster, readyTimeoutSeconds=30)
    cluster.release("2.0.0")
    driver.run(driver.phase_is(Phase.PAUSED, 0))
    cluster.tick(600)  # much older than the timeout
    (beta,) = cluster.pods_of_version("2.0.0")
    went = cluster.now
    _not_ready(beta, reasons.REINSTALLING, went)
    cluster.stuck.add(JAR.format(version="2.0.0"))
    driver.look()
    cluster.tick(29)
    driver.look()
    assert driver.status.failures == [] and driver.status.base_waits == []
    cluster.tick(2)
    driver.look()
    (failure,) = driver.status.failures
    assert failure.message == (
        f"not Ready for 30s, since {format_time(went)} ({reasons.REINSTALLING})"
    )


def test_a_failed_pod_is_deleted_only_once_the_status_records_it() -> None:
    """The status is written after the actions: a failed pod deleted by the look that
    first counts it, that look's status write lost, would leave no trace of the failure,
    and the budget would be overrun."""
    cluster = FakeCluster()
    steps = [{"replicas": 2, "pause": {}}, {"replicas": "100%"}]
    driver = attached(cluster, steps=steps, failureBudget=1)
    cluster.release("2.0.0")
    driver.look()
    cluster.tick()
    first = sorted(p["metadata"]["name"] for p in cluster.pods_of_version("2.0.0"))[0]
    cluster.broken_pods.add(first)
    cluster.tick()
    for _ in range(2):
        lost = driver.look(status_lost=True)
        assert lost.requeue_after == 0 and not any(isinstance(a, DeletePod) for a in lost.actions)
        assert first in cluster.pods, "the proof of the failure stays"
    recording = driver.look()
    assert not any(isinstance(a, DeletePod) for a in recording.actions)
    assert [f.pod for f in driver.status.failures] == [first]
    assert DeletePod(first, "failed, within the failure budget: another try") in (
        driver.look().actions
    )
    cluster.tick()  # the replacement is made; it fails too: 2 failures for a budget of 1
    cluster.broken_pods.update(p["metadata"]["name"] for p in cluster.pods_of_version("2.0.0"))
    driver.run(driver.phase_is(Phase.ROLLED_BACK))
    failed = [f.pod for f in driver.status.failures]
    assert len(failed) == 2 and failed[0] == first


def test_the_rollback_waits_until_the_failures_calling_for_it_are_recorded() -> None:
    cluster, driver = failing_release()
    decision = driver.look()
    while not driver.status.failures:
        cluster.tick()
        decision = driver.look()
    assert not any(isinstance(a, ReplaceDeploymentTemplate) for a in decision.actions)
    assert decision.requeue_after == 0 and driver.status.phase == Phase.PROGRESSING
    assert driver.status.message.endswith("; rolling back to revision 1")
    # The look that rolls back has its status write lost: the next one still says why.
    rollback = driver.look(status_lost=True)
    assert any(isinstance(a, ReplaceDeploymentTemplate) for a in rollback.actions)
    cluster.tick()
    driver.look()
    status = driver.status
    assert status.phase == Phase.ROLLED_BACK and len(status.failures) == 1
    assert "1 new pods failed (budget 0)" in status.message
    assert status.message.endswith("; rolled back to revision 1")
    assert driver.reasons()[-2:] == ["PodFailed", "RolledBack"]


def test_a_deployment_deleted_mid_release_and_made_again_is_no_roll_back() -> None:
    cluster = FakeCluster()
    driver = attached(cluster)
    cluster.release("2.0.0")
    driver.run(driver.phase_is(Phase.PAUSED, 0))
    cluster.delete_deployment()
    driver.look()
    assert driver.status.message == "Deployment biz1 not found"
    cluster.create_deployment("1.0.0")
    driver.run(driver.phase_is(Phase.SUCCEEDED))
    assert "RolledBack" not in driver.reasons()
    assert driver.status.message == "6/6 pods on revision 1"
    assert not cluster.pods_of_version("2.0.0") and not driver.status.failures
