"""Whole releases through `decide`, on the model of the cluster (test_rollouts_fake.py).

`Driver` plays the rollout controller: it decides, carries the actions out on the model,
writes the status back, then lets the model's controllers run a tick. Invariants are
checked at every tick: never more new-version pods than the step's size, and the stable
ReplicaSet keeps every pod until the hand-over.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from module_controller.modules import reasons
from module_controller.rollouts.actions import (
    CreateReplicaSet,
    Decision,
    PatchDeployment,
    ResetApproval,
    RolloutEvent,
)
from module_controller.rollouts.decide import World, decide
from module_controller.rollouts.model import ROLLOUT_LABEL, Phase, Rollout, RolloutStatus
from module_controller.rollouts.steps import plan_steps
from module_controller.rollouts.world import format_time, replicas_of
from tests.unit.test_rollouts_fake import JAR, NAMESPACE, FakeCluster

ISSUE_STEPS: list[dict[str, Any]] = [
    {"replicas": 1, "pause": {}},
    {"replicas": "50%", "pause": {"duration": 30}},
    {"replicas": "100%"},
]


class Driver:
    def __init__(self, cluster: FakeCluster, **spec: Any) -> None:
        self.cluster = cluster
        self.body: dict[str, Any] = {
            "metadata": {
                "name": "biz1",
                "namespace": NAMESPACE,
                "uid": "rollout-1",
                "generation": 1,
            },
            "spec": {"workloadRef": {"name": "biz1"}, "steps": ISSUE_STEPS, **spec},
            "status": {},
        }
        self.events: list[RolloutEvent] = []
        self.decisions: list[Decision] = []
        self.old = "1.0.0"
        self.new = "2.0.0"

    @property
    def status(self) -> RolloutStatus:
        return Rollout.from_body(self.body).status

    def look(self, status_lost: bool = False) -> Decision:
        """One look; `status_lost`: its actions are carried out, but the status write
        and the Events after them are not (an API error, the operator stopping)."""
        deployment, replica_sets, pods = self.cluster.world()
        rollout = Rollout.from_body(self.body)
        decision = decide(rollout, World(deployment, replica_sets, pods), self.cluster.now)
        for action in decision.actions:
            if isinstance(action, ResetApproval):
                self.body["spec"]["approvedStep"] = 0
        self.cluster.apply(decision.actions)
        if status_lost:
            return decision
        self.body["status"] = decision.status.as_patch()
        self.events += decision.events
        self.decisions.append(decision)
        return decision

    def run(self, until: Callable[[], bool], rounds: int = 40, seconds: float = 1.0) -> None:
        for _ in range(rounds):
            self.look()
            self.check()
            if until():
                return
            self.cluster.tick(seconds)
        raise AssertionError(f"not reached in {rounds} rounds: {self.status!r}")

    def phase_is(self, phase: Phase, step: int | None = None) -> Callable[[], bool]:
        def reached() -> bool:
            status = self.status
            return status.phase == phase and (step is None or status.current_step == step)

        return reached

    def approve(self) -> None:
        self.body["spec"]["approvedStep"] = self.status.current_step + 1

    def check(self) -> None:
        status = self.status
        if status.release is None or self.cluster.deployment is None:
            return
        new_pods = len(self.cluster.pods_of_version(self.new))
        total = replicas_of(self.cluster.d)
        spec = Rollout.from_body(self.body).spec
        assert spec is not None
        planned = plan_steps(spec.steps, total)
        size = planned[min(status.current_step, len(planned) - 1)].size
        assert new_pods <= max(size, total if status.phase == Phase.SUCCEEDED else size), (
            f"{new_pods} new pods at step {status.step} (size {size})"
        )

    def reasons(self) -> list[str]:
        return [event.reason for event in self.events]


def attached(cluster: FakeCluster, **spec: Any) -> Driver:
    driver = Driver(cluster, **spec)
    driver.run(driver.phase_is(Phase.SUCCEEDED))
    assert cluster.d["spec"]["paused"] is True
    assert cluster.d["metadata"]["labels"][ROLLOUT_LABEL] == "biz1"
    return driver


def test_attaching_pauses_and_labels_the_deployment_and_says_so() -> None:
    cluster = FakeCluster()
    driver = Driver(cluster)
    first = driver.look()
    assert first.actions == [
        PatchDeployment(
            {"metadata": {"labels": {ROLLOUT_LABEL: "biz1"}}, "spec": {"paused": True}},
            "paced by ModuleRollout biz1",
        )
    ]
    assert driver.reasons() == ["Attached"]
    assert driver.status.phase == Phase.SUCCEEDED
    assert driver.status.pods == "6/6"
    cluster.tick()
    again = driver.look()
    assert again.actions == [] and again.events == []


def test_the_issues_release_beta_approval_grace_and_hand_over() -> None:
    cluster = FakeCluster()
    driver = attached(cluster)
    stable = next(iter(cluster.owned()))["metadata"]["name"]
    cluster.release("2.0.0")

    driver.run(driver.phase_is(Phase.PAUSED, 0))
    assert cluster.ready_of_version("2.0.0") == 1, "beta: exactly one new pod"
    assert "approve to go on: module-controller rollout approve biz1" in driver.status.message
    assert driver.status.step == "1/3" and driver.status.pods == "1/6"
    # It stays there, however long: nothing is approved.
    for _ in range(10):
        cluster.tick(60)
        decision = driver.look()
        assert decision.actions == []
    assert len(cluster.pods_of_version("2.0.0")) == 1
    assert cluster.replicas_by_owner()[f"deployment:{driver.old}"] == 6, "old pods all kept"

    driver.approve()
    driver.run(driver.phase_is(Phase.PAUSED, 1))
    assert cluster.ready_of_version("2.0.0") == 3, "50% of 6"
    assert "grace time 30s" in driver.status.message
    driver.run(driver.phase_is(Phase.SUCCEEDED), seconds=5)

    assert cluster.replicas_by_owner() == {"deployment:1.0.0": 0, "deployment:2.0.0": 6}
    assert cluster.ready_of_version("2.0.0") == 6 and not cluster.pods_of_version("1.0.0")
    handed = [rs for rs in cluster.owned() if rs["metadata"]["name"] != stable]
    assert (
        len(handed) == 1
        and handed[0]["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
    ), "the canary became the Deployment's revision 2"
    assert driver.reasons() == [
        "Attached",
        "ReleaseStarted",
        "StepStarted",
        "StepPaused",
        "StepApproved",
        "StepStarted",
        "StepPaused",
        "StepStarted",
        "HandedOver",
        "Succeeded",
    ]
    assert driver.status.step == "3/3" and driver.status.pods == "6/6"
    assert driver.status.message == "6/6 pods on revision 2"


def test_the_stable_replica_set_keeps_every_pod_until_the_hand_over() -> None:
    cluster = FakeCluster()
    driver = attached(cluster, steps=[{"replicas": 2}, {"replicas": 4}, {"replicas": 6}])
    cluster.release("2.0.0")
    seen: list[tuple[int, int]] = []

    def handed_over() -> bool:
        seen.append((len(cluster.pods_of_version("1.0.0")), len(cluster.pods_of_version("2.0.0"))))
        return driver.status.phase == Phase.SUCCEEDED

    driver.run(handed_over)
    before = [old for old, new in seen if new < 6]
    assert before and all(old == 6 for old in before), seen
    assert max(new for _, new in seen) == 6


def test_an_approval_given_ahead_lets_the_step_go_on_at_once() -> None:
    cluster = FakeCluster()
    driver = attached(cluster)
    cluster.release("2.0.0")
    driver.look()  # the release starts
    driver.body["spec"]["approvedStep"] = 1
    driver.run(driver.phase_is(Phase.PAUSED, 1))
    assert "StepApproved" in driver.reasons()


def test_a_new_release_starts_unapproved() -> None:
    cluster = FakeCluster()
    driver = attached(cluster, approvedStep=3)
    cluster.release("2.0.0")
    decision = driver.look()
    assert ResetApproval() in decision.actions
    driver.run(driver.phase_is(Phase.PAUSED, 0))
    assert driver.body["spec"]["approvedStep"] == 0


def test_a_grace_time_waits_for_approval_when_a_pod_failed_in_the_step() -> None:
    cluster = FakeCluster()
    steps = [{"replicas": 2, "pause": {"duration": 5}}, {"replicas": "100%"}]
    driver = attached(cluster, steps=steps, failureBudget=1)
    cluster.release("2.0.0")
    driver.look()
    cluster.tick()
    first = sorted(p["metadata"]["name"] for p in cluster.pods_of_version("2.0.0"))[0]
    cluster.broken_pods.add(first)
    driver.run(driver.phase_is(Phase.PAUSED, 0))
    assert [f.pod for f in driver.status.failures] == [first]
    assert first not in cluster.pods, "replaced within the budget"
    assert "a pod failed in this step, approve to go on" in driver.status.message
    cluster.tick(600)
    assert driver.look().actions == []
    driver.approve()
    driver.run(driver.phase_is(Phase.SUCCEEDED))


def test_steps_short_of_every_pod_end_with_one_of_every_pod() -> None:
    cluster = FakeCluster()
    driver = attached(cluster, steps=[{"replicas": "50%"}])
    cluster.release("2.0.0")
    driver.run(driver.phase_is(Phase.SUCCEEDED))
    assert driver.status.step == "2/2"
    assert cluster.ready_of_version("2.0.0") == 6


def test_a_pause_on_the_last_step_holds_before_the_old_pods_go() -> None:
    cluster = FakeCluster()
    driver = attached(cluster, steps=[{"replicas": "100%", "pause": {}}])
    cluster.release("2.0.0")
    driver.run(driver.phase_is(Phase.PAUSED, 0))
    assert cluster.ready_of_version("2.0.0") == 6 and len(cluster.pods_of_version("1.0.0")) == 6
    driver.approve()
    driver.run(driver.phase_is(Phase.SUCCEEDED))
    assert not cluster.pods_of_version("1.0.0")


def test_releasing_an_earlier_revision_again_reuses_its_replica_set() -> None:
    cluster = FakeCluster()
    driver = attached(cluster, steps=[{"replicas": 3}])
    cluster.release("2.0.0")
    driver.run(driver.phase_is(Phase.SUCCEEDED))
    names = set(cluster.replica_sets)
    driver.new, driver.old = "1.0.0", "2.0.0"
    cluster.release("1.0.0")
    driver.run(driver.phase_is(Phase.SUCCEEDED))
    assert set(cluster.replica_sets) == names, "no ReplicaSet made for a known template"
    assert cluster.replicas_by_owner() == {"deployment:1.0.0": 6, "deployment:2.0.0": 0}
    created = [a for d in driver.decisions for a in d.actions if isinstance(a, CreateReplicaSet)]
    assert len(created) == 1


def test_a_scale_in_the_middle_of_a_release_resizes_the_steps() -> None:
    cluster = FakeCluster()
    driver = attached(cluster)
    cluster.release("2.0.0")
    driver.run(driver.phase_is(Phase.PAUSED, 0))
    driver.approve()
    driver.run(driver.phase_is(Phase.PAUSED, 1))
    cluster.scale(10)
    driver.run(lambda: cluster.ready_of_version("2.0.0") == 5)
    assert cluster.replicas_by_owner()["deployment:1.0.0"] == 10
    assert driver.status.pods == "5/10"


def test_a_deployment_of_no_replicas_is_released_at_once() -> None:
    cluster = FakeCluster(replicas=0)
    driver = attached(cluster)
    cluster.release("2.0.0")
    driver.run(driver.phase_is(Phase.PAUSED, 0))  # step 0 of 0 pods still asks for approval
    driver.approve()
    driver.run(driver.phase_is(Phase.SUCCEEDED))
    assert cluster.replicas_by_owner() == {"deployment:1.0.0": 0, "deployment:2.0.0": 0}


def test_the_status_after_a_hand_over_names_the_new_stable() -> None:
    cluster = FakeCluster()
    driver = attached(cluster, steps=[{"replicas": "100%"}])
    before = driver.status.stable
    cluster.release("2.0.0")
    driver.run(driver.phase_is(Phase.SUCCEEDED))
    assert driver.status.stable not in (None, before)
    assert driver.status.release == driver.status.stable
    assert JAR.format(version="2.0.0") in str(copy.deepcopy(cluster.d["spec"]["template"]))


def test_a_step_whose_pods_drop_out_of_ready_starts_its_grace_time_again() -> None:
    cluster = FakeCluster()
    steps = [{"replicas": 2, "pause": {"duration": 30}}, {"replicas": "100%"}]
    driver = attached(cluster, steps=steps)
    cluster.release("2.0.0")
    driver.run(driver.phase_is(Phase.PAUSED, 0))
    cluster.tick(20)
    pod = cluster.pods_of_version("2.0.0")[0]
    pod["status"] = {
        "conditions": [{"type": "Ready", "status": "False", "reason": reasons.REINSTALLING}]
    }
    driver.look()
    dropped = driver.status
    assert dropped.phase == Phase.PROGRESSING and dropped.step_ready_at is None
    cluster.tick()  # Ready again
    decision = driver.look()
    assert driver.status.phase == Phase.PAUSED
    assert driver.status.step_ready_at == format_time(cluster.now)
    assert decision.requeue_after is not None and decision.requeue_after >= 29, (
        "the whole grace time from when the step's pods were all Ready again"
    )
