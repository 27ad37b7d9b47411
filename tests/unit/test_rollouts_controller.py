"""The rollout controller (work queue, wake-ups, status writes, Events, metrics, giving
Deployments back) and the Kopf handlers that feed it, on the model of the cluster."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from typing import Any, cast

from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client import CollectorRegistry

from module_controller.k8s_events import EventType, ObjectRef
from module_controller.operator_memo import OperatorMemo
from module_controller.rollouts.actions import Action
from module_controller.rollouts.controller import RolloutController
from module_controller.rollouts.model import ROLLOUT_LABEL, Phase, Rollout
from module_controller.rollouts.world import labels_of, parse_time, selector_matches
from tests.unit.test_rollouts_fake import NAMESPACE, FakeCluster, merge
from tests.unit.test_rollouts_release import ISSUE_STEPS
from tests.waiting import wait_for

Handler = Callable[..., Awaitable[None]]


class FakeApi:
    """RolloutApi on the model: one Deployment, the ModuleRollouts by name."""

    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster
        self.rollouts: dict[str, dict[str, Any]] = {}
        self.status_writes = 0
        self.reads = 0

    def add_rollout(self, name: str = "biz1", **spec: Any) -> dict[str, Any]:
        body = {
            "metadata": {"name": name, "namespace": NAMESPACE, "uid": f"r-{name}", "generation": 1},
            "spec": {"workloadRef": {"name": "biz1"}, "steps": ISSUE_STEPS, **spec},
            "status": {},
        }
        self.rollouts[name] = body
        return body

    async def read_rollout(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads += 1
        found = self.rollouts.get(name)
        return copy.deepcopy(found) if found is not None else None

    async def read_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.cluster.deployment)

    async def world_of(
        self, namespace: str, rollout: str, deployment: Any
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """As RolloutApi lists them: by the Deployment's selector, or by the rollout's label."""
        if deployment is None:
            return await self.list_replica_sets(namespace, f"{ROLLOUT_LABEL}={rollout}"), []
        selector = deployment["spec"]["selector"]
        _, replica_sets, pods = self.cluster.world()
        return (
            [rs for rs in replica_sets if selector_matches(selector, labels_of(rs))],
            [p for p in pods if selector_matches(selector, labels_of(p))],
        )

    async def list_replica_sets(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        key, value = selector.split("=")  # the one form the controller asks for
        _, replica_sets, _ = self.cluster.world()
        return [rs for rs in replica_sets if labels_of(rs).get(key) == value]

    async def list_attached_deployments(self) -> list[dict[str, Any]]:
        d = self.cluster.deployment
        return (
            [copy.deepcopy(d)] if d is not None and ROLLOUT_LABEL in d["metadata"]["labels"] else []
        )

    async def carry_out(
        self, namespace: str, rollout: str, deployment: str, action: Action
    ) -> None:
        self.cluster.apply_one(action)

    async def patch_deployment(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        merge(self.cluster.d, patch)

    async def patch_rollout(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        merge(self.rollouts[name], patch)

    async def patch_rollout_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        if name not in self.rollouts:
            raise ApiException(status=404)
        self.status_writes += 1
        self.rollouts[name]["status"] = copy.deepcopy(status)


class Recorded:
    def __init__(self) -> None:
        self.events: list[tuple[ObjectRef, str, str, str]] = []

    def __call__(self, involved: ObjectRef, type: EventType, reason: str, message: str) -> None:
        self.events.append((involved, type, reason, message))

    def reasons(self) -> list[str]:
        return [reason for _, _, reason, _ in self.events]


def controller_on(
    api: FakeApi, registry: CollectorRegistry | None = None
) -> tuple[RolloutController, Recorded]:
    recorded = Recorded()
    controller = RolloutController(
        api,  # type: ignore[arg-type]  # the fake has the methods the controller calls
        recorded,
        registry,
        clock=lambda: api.cluster.now,
    )
    return controller, recorded


async def until(check: Callable[[], bool], what: str, timeout: float = 5) -> None:
    async def condition() -> bool:
        return check()

    await wait_for(condition, timeout=timeout, what=what)


def phase(api: FakeApi, name: str = "biz1") -> str | None:
    return Rollout.from_body(api.rollouts[name]).status.phase


async def test_a_look_decides_carries_out_writes_the_status_and_records_events() -> None:
    api = FakeApi(FakeCluster())
    api.add_rollout()
    registry = CollectorRegistry()
    controller, recorded = controller_on(api, registry)
    await controller.reconcile(f"{NAMESPACE}/biz1")
    assert api.cluster.d["spec"]["paused"] is True
    assert phase(api) == Phase.SUCCEEDED
    assert recorded.reasons() == ["Attached"]
    involved = recorded.events[0][0]
    assert (involved.kind, involved.api_version, involved.uid) == (
        "ModuleRollout",
        "module-controller.koupleless.io/v1alpha1",
        "r-biz1",
    )
    assert (
        registry.get_sample_value("module_controller_module_rollouts", {"phase": "Succeeded"}) == 1
    )
    assert registry.get_sample_value("module_controller_module_rollouts", {"phase": "Paused"}) == 0
    assert registry.get_sample_value("module_controller_module_rollout_reconciles_total") == 1
    writes = api.status_writes
    await controller.reconcile(f"{NAMESPACE}/biz1")
    assert api.status_writes == writes, "an unchanged status is not written again"


async def test_pod_events_of_its_deployment_wake_a_rollout_and_a_grace_time_wakes_it_later() -> (
    None
):
    cluster = FakeCluster()
    api = FakeApi(cluster)
    api.add_rollout(steps=[{"replicas": 1, "pause": {"duration": 1}}, {"replicas": "100%"}])
    controller, recorded = controller_on(api)

    async def drive(check: Callable[[], bool], what: str, seconds: float = 0.1) -> None:
        """Let the model's controllers run, telling the rollout controller of every pod
        (as the operator's pod watch does), until `check` holds."""
        for _ in range(100):
            if check():
                return
            cluster.tick(seconds)
            for pod in list(cluster.pods.values()):
                controller.pod_event(pod)
            await asyncio.sleep(0.02)
        raise AssertionError(f"not reached: {what}; {api.rollouts['biz1']['status']}")

    controller.start()
    try:
        controller.rollout_event(None, api.rollouts["biz1"])
        await until(lambda: phase(api) == Phase.SUCCEEDED, "attached")
        cluster.release("2.0.0")
        controller.rollout_event("MODIFIED", api.rollouts["biz1"])  # (the poll would find it)
        await drive(lambda: phase(api) == Phase.PAUSED, "the grace time of the beta")
        # The model's clock goes on; the look the decision asked for comes by itself.
        await drive(lambda: phase(api) == Phase.SUCCEEDED, "released")
        assert cluster.ready_of_version("2.0.0") == 6
        assert "HandedOver" in recorded.reasons()
    finally:
        await controller.stop()


async def test_a_grace_time_asks_for_a_look_when_it_ends() -> None:
    cluster = FakeCluster()
    api = FakeApi(cluster)
    api.add_rollout(steps=[{"replicas": 1, "pause": {"duration": 30}}, {"replicas": "100%"}])
    controller, _ = controller_on(api)
    key = f"{NAMESPACE}/biz1"
    await controller.reconcile(key)
    cluster.release("2.0.0")
    for _ in range(4):
        await controller.reconcile(key)
        cluster.tick()
    assert phase(api) == Phase.PAUSED
    cluster.tick(10)
    await controller.reconcile(key)
    timer = controller._timers[key]
    due = timer.when() - asyncio.get_running_loop().time()
    ready_at = parse_time(Rollout.from_body(api.rollouts["biz1"]).status.step_ready_at)
    assert ready_at is not None
    assert abs(due - (ready_at + 30 - cluster.now)) < 0.5, due
    await controller.stop()
    assert timer.cancelled()


async def test_a_pod_of_another_namespace_or_selector_wakes_nothing() -> None:
    api = FakeApi(FakeCluster())
    api.add_rollout()
    controller, _ = controller_on(api)
    await controller.reconcile(f"{NAMESPACE}/biz1")
    reads = api.reads
    controller.pod_event({"metadata": {"namespace": "elsewhere", "labels": {"app": "biz1"}}})
    controller.pod_event({"metadata": {"namespace": NAMESPACE, "labels": {"app": "other"}}})
    controller.start()
    try:
        await asyncio.sleep(0.1)
        assert api.reads == reads
        controller.pod_event({"metadata": {"namespace": NAMESPACE, "labels": {"app": "biz1"}}})
        await until(lambda: api.reads > reads, "a look", timeout=2)
    finally:
        await controller.stop()


async def test_a_deployment_whose_rollout_is_gone_is_given_back_and_told() -> None:
    api = FakeApi(FakeCluster())
    api.add_rollout()
    controller, recorded = controller_on(api)
    await controller.reconcile(f"{NAMESPACE}/biz1")
    assert api.cluster.d["spec"]["paused"] is True
    del api.rollouts["biz1"]  # deleted while the operator was away: no event came
    controller.forget(f"{NAMESPACE}/biz1")
    await controller.poll_deployments()
    d = api.cluster.d
    assert d["spec"]["paused"] is False and ROLLOUT_LABEL not in d["metadata"]["labels"]
    involved, _, reason, message = recorded.events[-1]
    assert (involved.kind, involved.name, reason) == ("Deployment", "biz1", "RolloutDetached")
    assert message == "ModuleRollout biz1 is gone: the Deployment is resumed"


async def test_a_labelled_deployment_whose_rollout_exists_is_kept() -> None:
    api = FakeApi(FakeCluster())
    api.add_rollout()
    controller, _ = controller_on(api)
    await controller.reconcile(f"{NAMESPACE}/biz1")
    controller.forget(f"{NAMESPACE}/biz1")  # as after a restart, before Kopf's listing
    await controller.poll_deployments()
    assert api.cluster.d["spec"]["paused"] is True
    assert f"{NAMESPACE}/biz1" in controller.known


async def test_a_deleted_rollout_is_forgotten_and_its_metrics_follow() -> None:
    api = FakeApi(FakeCluster())
    body = api.add_rollout()
    registry = CollectorRegistry()
    controller, _ = controller_on(api, registry)
    await controller.reconcile(f"{NAMESPACE}/biz1")
    controller.rollout_event("DELETED", body)
    assert controller.known == {}
    assert (
        registry.get_sample_value("module_controller_module_rollouts", {"phase": "Succeeded"}) == 0
    )


async def test_the_handlers_feed_the_controller_made_at_start_up() -> None:
    from module_controller.handlers import rollouts as handlers

    # Kopf's decorators retype the handlers for Kopf's calls; called here as Kopf does.
    start = cast(Handler, handlers.start_rollouts)
    stop = cast(Handler, handlers.stop_rollouts)
    rollout_event = cast(Handler, handlers.rollout_event)
    memo = OperatorMemo()
    await start(memo=memo)  # no runtime (start-up failed): nothing starts
    assert handlers._controller(memo) is None
    await rollout_event(type=None, body={"metadata": {"name": "x"}}, memo=memo)

    api = FakeApi(FakeCluster())
    controller, _ = controller_on(api)
    memo.rollouts = controller
    api.add_rollout()
    await rollout_event(type=None, body=api.rollouts["biz1"], memo=memo)
    assert f"{NAMESPACE}/biz1" in controller.known
    await stop(memo=memo)
    assert handlers._controller(memo) is None and memo.rollouts is None


class FakeMembership:
    def __init__(self, me: str, members: tuple[str, ...], acting: bool = True) -> None:
        self.me = me
        self.members = members
        self.acting = acting


def test_each_rollout_is_worked_on_by_one_live_replica() -> None:
    from module_controller.handlers.rollouts import owner_check
    from module_controller.shards.membership import Membership

    members = ("a", "b", "c")
    checks = {m: owner_check(cast(Membership, FakeMembership(m, members))) for m in members}
    keys = [f"ns/rollout-{n}" for n in range(30)]
    for key in keys:
        assert sum(check(key) for check in checks.values()) == 1, key
    assert len({m for m in members for key in keys if checks[m](key)}) == 3, "spread over all"
    lapsed = owner_check(cast(Membership, FakeMembership("a", ("a",), acting=False)))
    assert not any(lapsed(key) for key in keys), "a replica that may not act works on none"


async def test_another_replicas_rollout_is_not_looked_at_until_it_moves_here() -> None:
    api = FakeApi(FakeCluster())
    api.add_rollout()
    mine: set[str] = set()
    recorded = Recorded()
    controller = RolloutController(
        api,  # type: ignore[arg-type]
        recorded,
        clock=lambda: api.cluster.now,
        owns=lambda key: key in mine,
        resync_seconds=0.05,
    )
    controller.rollout_event(None, api.rollouts["biz1"])
    await controller.reconcile(f"{NAMESPACE}/biz1")
    assert phase(api) is None and "paused" not in api.cluster.d["spec"]
    controller.start()
    try:
        mine.add(f"{NAMESPACE}/biz1")  # the replica that had it is gone
        await until(lambda: phase(api) == Phase.SUCCEEDED, "taken up at the next poll")
    finally:
        await controller.stop()


def retarget(api: FakeApi, to: str, deployment: dict[str, Any] | None = None) -> None:
    """spec.workloadRef edited to `to` (the CRD refuses that now; an object stored before
    the rule may still have it), which is `deployment` (None: no such Deployment)."""
    original_read = api.read_deployment

    async def read_deployment(namespace: str, name: str) -> dict[str, Any] | None:
        if name == to:
            return copy.deepcopy(deployment)
        return await original_read(namespace, name)

    api.read_deployment = read_deployment  # type: ignore[method-assign]
    body = api.rollouts["biz1"]
    body["spec"]["workloadRef"] = {"name": to}
    body["metadata"]["generation"] += 1


async def test_a_deployment_its_rollout_no_longer_names_is_given_back() -> None:
    cluster = FakeCluster()
    api = FakeApi(cluster)
    api.add_rollout()
    controller, recorded = controller_on(api)
    key = f"{NAMESPACE}/biz1"
    await controller.reconcile(key)
    assert cluster.d["metadata"]["labels"].get(ROLLOUT_LABEL) == "biz1"
    retarget(api, "biz1-next")
    for _ in range(2):
        await controller.poll_deployments()
        await controller.reconcile(key)
        cluster.tick()
    assert ROLLOUT_LABEL not in cluster.d["metadata"]["labels"], "still labelled as paced"
    assert cluster.d["spec"]["paused"] is False, "still paused: no release of biz1 goes out"
    assert recorded.events[-1][2:] == (
        "RolloutDetached",
        "ModuleRollout biz1 now paces Deployment biz1-next: this one is resumed",
    )
    assert phase(api) == Phase.FAILED  # biz1-next does not exist
    await controller.stop()


async def test_a_retargeted_rollouts_canary_goes_before_its_first_deployment_is_resumed() -> None:
    """The rollout's looks list by its new target's selector and never see the canary of
    the first Deployment: the poll deletes it, then resumes the Deployment."""
    cluster = FakeCluster()
    api = FakeApi(cluster)
    api.add_rollout()
    controller, recorded = controller_on(api)
    key = f"{NAMESPACE}/biz1"
    await controller.reconcile(key)
    cluster.release("2.0.0")
    for _ in range(4):
        await controller.reconcile(key)
        cluster.tick()
    assert phase(api) == Phase.PAUSED and len(cluster.pods_of_version("2.0.0")) == 1
    other = copy.deepcopy(cluster.d)
    other["metadata"].update(name="biz2", uid="uid-biz2", labels={})
    other["spec"]["selector"] = {"matchLabels": {"app": "biz2"}}
    retarget(api, "biz2", other)
    await controller.reconcile(key)
    assert "own rollout to finish" in api.rollouts["biz1"]["status"]["message"]
    calls: list[str] = []
    carry_out, patch_deployment = api.carry_out, api.patch_deployment

    async def carrying_out(namespace: str, rollout: str, deployment: str, action: Any) -> None:
        calls.append(type(action).__name__)
        await carry_out(namespace, rollout, deployment, action)

    async def patching(namespace: str, name: str, patch: dict[str, Any]) -> None:
        calls.append(f"patch {name}")
        await patch_deployment(namespace, name, patch)

    api.carry_out = carrying_out  # type: ignore[method-assign]
    api.patch_deployment = patching  # type: ignore[method-assign]
    await controller.poll_deployments()
    assert calls == ["DeleteReplicaSet", "patch biz1"]
    assert not [rs for rs in cluster.replica_sets.values() if "r-biz1" in str(rs["metadata"])]
    assert cluster.d["spec"]["paused"] is False
    assert recorded.reasons()[-1] == "RolloutDetached"
    await controller.stop()


async def test_a_rollout_set_back_to_its_deployment_before_its_next_look_keeps_it() -> None:
    """The poll reads the rollout again before giving a Deployment back: what the last look
    saw may be stale."""
    api = FakeApi(FakeCluster())
    api.add_rollout()
    controller, _ = controller_on(api)
    key = f"{NAMESPACE}/biz1"
    await controller.reconcile(key)
    retarget(api, "biz1-next")
    await controller.reconcile(key)
    api.rollouts["biz1"]["spec"]["workloadRef"] = {"name": "biz1"}  # no look since
    await controller.poll_deployments()
    assert api.cluster.d["spec"]["paused"] is True
    assert api.cluster.d["metadata"]["labels"][ROLLOUT_LABEL] == "biz1"
    await controller.reconcile(key)
    assert controller.known[key].target == "biz1"
    await controller.stop()
