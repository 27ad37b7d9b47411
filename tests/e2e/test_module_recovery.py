"""Module pods beyond the seed's happy path, end to end: bases that crash, restart or run
another version, an operator restarted, pods recreated or broken, uninstalls that fail.

The real operator process, real Deployments / ReplicaSets / scheduler, simulated bases over
the real broker (MQTT); each test pins its workloads to its own bases (a private ENV).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller.testbed.kube_reads import is_ready, ready_condition
from tests.e2e.conftest import BaseFactory, OperatorFactory
from tests.e2e.modules_scene import (
    INVENTORY_POLL_SECONDS,
    ORPHAN_GRACE_SECONDS,
    Scene,
    all_ready,
)
from tests.e2e.modules_support import (
    bare_pod,
    deployment,
    manifest,
    modules_of,
    pod_template,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.usefixtures("env_nodes_cleanup")


@pytest.mark.bases(1)
async def test_a_module_for_a_new_base_version_waits_for_such_bases(
    scene: Scene, test_env: str, start_base: BaseFactory
) -> None:
    name = "future"
    await scene.apps.create_namespaced_deployment(
        scene.namespace,
        deployment(name, test_env, 2, [("biz1", "2.0.0")], base_version="2.0.0", spread=True),
    )

    def unschedulable(pods: list[client.V1Pod]) -> bool:
        """The scheduler tried each pod and found no node for it."""
        return len(pods) == 2 and all(
            any(
                c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable"
                for c in p.status.conditions or []
            )
            for p in pods
        )

    pods = await scene.pods(f"app={name}", unschedulable, "2 pods the scheduler cannot place")
    assert all(p.spec.node_name is None for p in pods), "no base of 2.0.0 exists yet"
    assert modules_of(scene.bases[0]) == {}
    scene.bases += [await start_base(version="2.0.0") for _ in range(2)]
    await scene.pods(f"app={name}", all_ready(2), "2 pods Ready on the new bases", timeout=90)
    for base in scene.bases[1:]:
        assert modules_of(base) == {"biz1:2.0.0": "ACTIVATED"}
    assert modules_of(scene.bases[0]) == {}


# Over MQTT only: this one waits for the dead time (~70 s); HTTP liveness has its own
# tests (tests/e2e/test_http_tunnel.py, tests/unit/test_registry_http.py).
@pytest.mark.bases(3)
async def test_a_crashed_bases_pods_move_to_the_other_bases(scene: Scene, test_env: str) -> None:
    name = "survivor"
    await scene.apps.create_namespaced_deployment(
        scene.namespace, deployment(name, test_env, 2, [("biz1", "1.0.0")], spread=True)
    )
    pods = await scene.pods(f"app={name}", all_ready(2), "2 pods Ready")
    victim = scene.base_on(pods[0].spec.node_name)
    victim_pod = pods[0].metadata.name
    await victim.crash()

    async def victim_pod_not_ready() -> bool:
        try:
            pod = await scene.core.read_namespaced_pod(victim_pod, scene.namespace)
        except ApiException:
            return True  # already gone is past NotReady
        return not is_ready(pod)

    await wait_for(
        victim_pod_not_ready, timeout=30, what=f"{victim_pod} NotReady", diagnose=scene.describe
    )
    survivors = [b for b in scene.bases if b is not victim]

    def moved(pods: list[client.V1Pod]) -> bool:
        live = [p for p in pods if p.metadata.deletion_timestamp is None]
        return (
            len(live) == 2
            and all(is_ready(p) for p in live)
            and {p.spec.node_name for p in live} <= {scene.node_of(b) for b in survivors}
        )

    await scene.pods(f"app={name}", moved, "2 pods Ready on the surviving bases", timeout=120)


@pytest.mark.bases(1)
async def test_recreating_a_pod_of_the_same_version_never_uninstalls_it(
    scene: Scene, test_env: str
) -> None:
    template = pod_template("again", test_env, [("biz1", "1.0.0")])

    def body(name: str) -> dict[str, Any]:
        return bare_pod(name, template)

    await scene.core.create_namespaced_pod(scene.namespace, manifest(body("first")))
    await scene.pods("app=again", all_ready(1), "the first pod Ready")
    await scene.core.create_namespaced_pod(scene.namespace, manifest(body("second")))
    await scene.pods("app=again", all_ready(2), "both pods Ready (one shared install)")
    base = scene.bases[0]
    assert len(base.received("installBiz")) == 1, "two pods share one install"
    deleted_at = time.time()
    await scene.core.delete_namespaced_pod("first", scene.namespace)
    await scene.pods("app=again", all_ready(1), "only the second pod left")
    # Two polls since the delete: the operator compared the base's modules with the pods
    # left at least once; a wrong uninstall would have been sent by then.
    await scene.polled(after=deleted_at, polls=2)
    assert base.received("uninstallBiz") == []
    assert modules_of(base) == {"biz1:1.0.0": "ACTIVATED"}
    await scene.core.delete_namespaced_pod("second", scene.namespace)
    await scene.pods("app=again", lambda pods: not pods, "no pod left")
    await scene.modules_everywhere({})


@pytest.mark.bases(1)
async def test_broken_module_pods_say_what_is_wrong_and_send_nothing(
    scene: Scene, test_env: str
) -> None:
    template = pod_template("broken", test_env, [("biz1", "1.0.0")])
    containers = [
        {"name": "noversion", "image": "https://repo.example/a.jar"},
        {
            "name": "notaurl",
            "image": "biz1:latest",
            "env": [{"name": "BIZ_VERSION", "value": "1.0.0"}],
        },
    ]
    template["spec"]["containers"] = containers
    pod = bare_pod("broken", template)
    await scene.core.create_namespaced_pod(scene.namespace, manifest(pod))

    def explained(pods: list[client.V1Pod]) -> bool:
        ready = ready_condition(pods[0]) if pods else None
        return ready is not None and ready.reason == "InvalidModuleSpec"

    pods = await scene.pods("app=broken", explained, "the pod's status to explain")
    ready = ready_condition(pods[0])
    assert ready is not None
    message = ready.message
    assert "BIZ_VERSION" in message and "not a URL" in message, message

    async def warned() -> bool:
        events = await scene.core.list_namespaced_event(
            scene.namespace, field_selector="involvedObject.name=broken"
        )
        return any(e.type == "Warning" and e.reason == "InvalidModuleSpec" for e in events.items)

    await wait_for(warned, timeout=20, what="a Warning Event on the pod", diagnose=scene.describe)
    assert scene.bases[0].received("installBiz") == []
    assert scene.operator.alive


@pytest.mark.bases(2)
async def test_a_restarted_operator_sends_nothing_and_changes_no_status(
    scene: Scene, test_env: str, run_operator: OperatorFactory
) -> None:
    name = "steady"
    await scene.apps.create_namespaced_deployment(
        scene.namespace, deployment(name, test_env, 2, [("biz1", "1.0.0")], spread=True)
    )
    before = await scene.pods(f"app={name}", all_ready(2), "2 pods Ready")
    versions = {p.metadata.name: p.metadata.resource_version for p in before}
    scene.operator.stop()
    commands = {b.identity: len(b.received()) for b in scene.bases}
    scene.operator = run_operator(
        ORPHAN_GRACE_SECONDS=str(ORPHAN_GRACE_SECONDS),
        INVENTORY_POLL_SECONDS=str(INVENTORY_POLL_SECONDS),
    )

    async def polled_twice() -> bool:
        return all(len(b.received("queryAllBiz")) >= 2 for b in scene.bases) and all(
            any(c.command == "queryAllBiz" for c in list(b.received())[commands[b.identity] :])
            for b in scene.bases
        )

    await wait_for(
        polled_twice,
        timeout=30,
        what="the new operator to read the inventories",
        diagnose=scene.describe,
    )
    # Two polls once an orphan grace period is over: had the new operator taken the
    # modules for orphans, it would have uninstalled them by then.
    await scene.polled(after=time.time() + ORPHAN_GRACE_SECONDS, polls=2)
    for base in scene.bases:
        since = [c.command for c in list(base.received())[commands[base.identity] :]]
        assert "installBiz" not in since and "uninstallBiz" not in since, since
    after = (
        await scene.core.list_namespaced_pod(scene.namespace, label_selector=f"app={name}")
    ).items
    assert {p.metadata.name: p.metadata.resource_version for p in after} == versions


@pytest.mark.bases(1)
async def test_a_restarted_base_gets_its_baseline(scene: Scene, test_env: str) -> None:
    name = "baseline"
    await scene.apps.create_namespaced_deployment(
        scene.namespace, deployment(name, test_env, 1, [("biz1", "1.0.0")])
    )
    await scene.pods(f"app={name}", all_ready(1), "the pod Ready")
    base = scene.bases[0]
    await base.restart()  # same identity, modules gone: it asks for its baseline

    async def reinstalled() -> bool:
        return modules_of(base) == {"biz1:1.0.0": "ACTIVATED"} and bool(base.received("baseline"))

    await wait_for(
        reinstalled,
        timeout=30,
        what="the baseline reinstalled by the base",
        diagnose=scene.describe,
    )
    baseline = base.received("baseline")[-1].payload
    assert [m["bizName"] for m in baseline] == ["biz1"]


@pytest.mark.bases(1)
@pytest.mark.operator_settings(UNINSTALL_RETRY_SECONDS="1", UNINSTALL_GIVE_UP_SECONDS="8")
async def test_an_uninstall_that_keeps_failing_cannot_keep_the_pod_forever(
    scene: Scene, test_env: str
) -> None:
    template = pod_template("sticky", test_env, [("biz1", "1.0.0")])
    pod = bare_pod("sticky", template)
    await scene.core.create_namespaced_pod(scene.namespace, manifest(pod))
    await scene.pods("app=sticky", all_ready(1), "the pod Ready")
    base = scene.bases[0]
    base.faults.fail_uninstall = {"biz1"}
    # SOFAArk's default drops a biz whose stop failed; this base keeps it, BROKEN.
    base.container.remove_biz_when_stop_failed = False
    await scene.core.delete_namespaced_pod("sticky", scene.namespace)
    await scene.pods(
        "app=sticky", lambda pods: not pods, "the pod removed after the bound", timeout=40
    )
    assert len(base.received("uninstallBiz")) >= 2, "the uninstall was retried"
    assert "biz1:1.0.0" in modules_of(base), "the leftover module is still on the base"

    async def reported() -> bool:
        events = await scene.core.list_namespaced_event(
            scene.namespace, field_selector="involvedObject.name=sticky"
        )
        reasons = {e.reason for e in events.items if e.type == "Warning"}
        return {"UninstallFailed", "UninstallGaveUp"} <= reasons

    await wait_for(
        reported,
        timeout=20,
        what="UninstallFailed and UninstallGaveUp events",
        diagnose=scene.describe,
    )
