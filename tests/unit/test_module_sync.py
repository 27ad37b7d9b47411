"""The sync carries a plan out in the seed's order, counts what it sends, marks gone bases."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio import client

from module_controller.k8s_events import EventType
from module_controller.modules import reasons
from module_controller.modules.state import ModulePod, ModuleState, Uninstall
from module_controller.modules.sync import ModuleSync
from module_controller.observability.metrics import Metrics
from module_controller.protocol import BaseMetadata, BaseStatus, BizModel
from module_controller.protocol.states import BizState
from module_controller.registry import BaseRegistry
from module_controller.settings import Settings
from tests.unit.modules_support import NEWER, condition, download_failed, pod, simple
from tests.waiting import wait_for

IDENTITY = "base-1"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Calls:
    """Everything the sync sent, in order: to the base and to the API server."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, Any]] = []

    # The tunnel.
    async def install_biz(self, identity: str, biz: BizModel) -> None:
        self.log.append(("install", biz.key, None))

    async def uninstall_biz(self, identity: str, biz: BizModel) -> None:
        self.log.append(("uninstall", biz.key, None))

    async def query_all_biz(self, identity: str) -> None:
        self.log.append(("query", identity, None))

    # The API server (CoreV1Api), answering as kubernetes-asyncio renders times: +00:00.
    async def patch_namespaced_pod_status(
        self, name: str, namespace: str, body: dict[str, Any], **_: Any
    ) -> dict[str, Any]:
        self.log.append(("patch", name, body["status"]))
        status = copy.deepcopy(body["status"])
        for entry in status.get("conditions") or []:
            entry["lastTransitionTime"] = entry["lastTransitionTime"].replace("Z", "+00:00")
        for entry in status.get("containerStatuses") or []:
            running = (entry.get("state") or {}).get("running")
            if running:
                running["startedAt"] = running["startedAt"].replace("Z", "+00:00")
        return {"metadata": {"resourceVersion": "99"}, "status": status}

    async def delete_namespaced_pod(self, name: str, namespace: str, **_: Any) -> None:
        self.log.append(("delete", name, None))

    def kinds(self) -> list[tuple[str, str]]:
        return [(kind, what) for kind, what, _ in self.log if kind != "query"]


class Events:
    def __init__(self) -> None:
        self.recorded: list[tuple[str, EventType, str, str]] = []

    def pod_event(self, pod: ModulePod, type: EventType, reason: str, message: str) -> None:
        self.recorded.append((pod.name, type, reason, message))


class Scene:
    def __init__(self, api: client.ApiClient) -> None:
        self.clock = Clock()
        settings = Settings()
        self.registry = BaseRegistry(settings, clock=self.clock)
        self.registry.broker_up()
        self.registry.heartbeat(
            IDENTITY,
            BaseStatus(
                base_metadata=BaseMetadata(
                    identity=IDENTITY, name="base", version="1.1.1", cluster_name="default"
                ),
                local_ip="127.0.0.9",
                local_host_name="host",
            ),
        )
        self.node = self.registry.bases[IDENTITY].node_name
        self.state = ModuleState(listed=True)
        self.calls = Calls()
        self.events = Events()
        self.metrics = Metrics()
        self.sync = ModuleSync(
            settings,
            self.registry,
            self.state,
            self.calls,
            api,
            self.metrics,
            self.events,
            clock=self.clock,
        )
        self.sync.core = self.calls  # type: ignore[assignment]

    async def plan(self) -> None:
        """Plan the base and carry the plan out, to the end of its lane."""
        await self.sync.sync_base(IDENTITY)
        await self.sync.lanes.landed(self.node)

    def add(self, module_pod: ModulePod) -> ModulePod:
        module_pod.node_name = self.node
        self.state.add_pod(module_pod)
        return module_pod

    def counter(self, name: str) -> float:
        text = self.metrics.exposition()[0].decode()
        line = next(line for line in text.splitlines() if line.startswith(f"{name} "))
        return float(line.split()[1])


@pytest.fixture
async def scene() -> AsyncIterator[Scene]:
    async with client.ApiClient() as api:
        made = Scene(api)
        yield made
        await made.sync.stop()


async def test_pods_leave_ready_before_commands_and_before_new_pods_enter(scene: Scene) -> None:
    scene.add(pod("old", [("biz1", "1")], deleting=True, deletion_seen_at=999, ready=True))
    scene.add(pod("new", [("biz1", "2")], NEWER))
    scene.state.set_inventory(
        IDENTITY, simple(("biz1:1", BizState.DEACTIVATED), ("biz1:2", BizState.ACTIVATED))
    )
    await scene.plan()
    assert scene.calls.kinds() == [("patch", "old"), ("uninstall", "biz1:1"), ("patch", "new")]
    assert condition(scene.calls.log[0][2])["status"] == "False"
    assert condition(scene.calls.log[2][2])["status"] == "True"


async def test_the_writes_of_one_phase_go_out_together_and_phases_stay_in_order(
    scene: Scene,
) -> None:
    """Four pods going Ready on one base are written at once, not one round trip after
    the other; still, every NotReady write ends before the uninstall, and the uninstall
    goes before any Ready write."""
    in_flight = peak = 0
    patch = scene.calls.patch_namespaced_pod_status

    async def slow_patch(name: str, namespace: str, body: dict[str, Any], **_: Any) -> Any:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return await patch(name, namespace, body)

    scene.calls.patch_namespaced_pod_status = slow_patch  # type: ignore[method-assign]
    for name in ("old1", "old2"):
        scene.add(pod(name, [(name, "1")], deleting=True, deletion_seen_at=999, ready=True))
    for name in ("a", "b", "c", "d"):
        scene.add(pod(name, [(name, "1")], NEWER))
    scene.state.set_inventory(
        IDENTITY,
        simple(
            ("old1:1", BizState.ACTIVATED),
            ("old2:1", BizState.ACTIVATED),
            *((f"{name}:1", BizState.ACTIVATED) for name in ("a", "b", "c", "d")),
        ),
    )
    await scene.plan()
    kinds = scene.calls.kinds()
    first_uninstall = kinds.index(("uninstall", "old1:1"))
    assert {what for _, what in kinds[:first_uninstall]} == {"old1", "old2"}
    assert {what for kind, what in kinds[first_uninstall:] if kind == "patch"} == {
        "a",
        "b",
        "c",
        "d",
    }
    assert peak >= 4  # the four Ready writes were in flight together


async def test_at_rest_nothing_is_patched_and_writes_and_installs_are_counted(
    scene: Scene,
) -> None:
    scene.add(pod("a", [("biz1", "1")]))
    scene.state.set_inventory(IDENTITY, ())
    await scene.plan()
    assert ("install", "biz1:1") in scene.calls.kinds()
    assert scene.counter("module_controller_module_install_commands_total") == 1
    scene.state.set_inventory(IDENTITY, simple(("biz1:1", BizState.ACTIVATED)))
    await scene.plan()
    patches = scene.counter("module_controller_pod_status_writes_total")
    assert patches == len([k for k, _ in scene.calls.kinds() if k == "patch"]) >= 1
    for _ in range(5):  # inventory polls with nothing new
        scene.clock.now += 15
        scene.state.set_inventory(IDENTITY, simple(("biz1:1", BizState.ACTIVATED)))
        await scene.plan()
    assert scene.counter("module_controller_pod_status_writes_total") == patches


async def test_a_failing_install_gives_one_stable_warning(scene: Scene) -> None:
    scene.add(pod("a", [("biz1", "1")]))
    scene.state.set_inventory(IDENTITY, ())
    for _ in range(3):
        await scene.plan()
        scene.sync.operation_answered(IDENTITY, download_failed("biz1", "1"))
        scene.clock.now += 400  # past any backoff
    warnings = {e for e in scene.events.recorded if e[1] == "Warning"}
    assert len(warnings) == 1, "identical reason and message: the recorder counts one Event"
    [(_, _, reason, message)] = warnings
    assert reason == reasons.INSTALL_FAILED and "\n" not in message
    installs = [k for k, _ in scene.calls.kinds() if k == "install"]
    assert len(installs) == 3


async def test_a_plan_that_waits_is_looked_at_again_when_the_wait_ends(scene: Scene) -> None:
    added: list[str] = []
    scene.sync.queue.add = added.append  # type: ignore[method-assign,assignment]
    scene.add(pod("a", [("biz1", "1")]))
    scene.state.set_inventory(IDENTITY, ())
    await scene.plan()
    scene.sync.operation_answered(IDENTITY, download_failed("biz1", "1"))
    added.clear()
    scene.state.base_modules[IDENTITY].failures["biz1:1"].at = scene.clock.now - 4.9  # due in 0.1 s
    await scene.plan()
    assert added == []

    async def woken() -> bool:
        return added == [IDENTITY]

    await wait_for(woken, timeout=2, what="the base planned again when its backoff ends")


async def test_a_gone_base_marks_its_ready_pods_then_deletes_them_before_its_node_goes(
    scene: Scene,
) -> None:
    """Marked first (no 1/1 on a gone base), then deleted as the pod garbage collector
    would 40-60 s after the node: their controllers replace them on live bases now."""
    serving = scene.add(pod("a", [("biz1", "1")], ready=True))
    scene.add(pod("idle", [("biz1", "1")]))
    del scene.registry.bases[IDENTITY]  # the registry forgot it: the controller retires it
    await scene.sync.base_gone(scene.node, "the base said goodbye")
    assert scene.calls.kinds() == [("patch", "a"), ("delete", "a"), ("delete", "idle")]
    status = scene.calls.log[0][2]
    ready = condition(status)
    assert (ready["status"], ready["reason"]) == ("False", reasons.BASE_GONE)
    assert scene.node in ready["message"]
    assert condition(status, "ContainersReady")["status"] == "False"
    assert not any(c["ready"] for c in status["containerStatuses"])
    await scene.plan()
    assert len(scene.calls.log) == 3, "nothing undoes it"
    assert not serving.observed_ready, "the answer is what we know of the pod now"
    assert scene.state.pods_on(scene.node) == []


async def test_a_base_heard_again_before_base_gone_runs_keeps_its_pods_ready(scene: Scene) -> None:
    scene.add(pod("a", [("biz1", "1")], ready=True))
    await scene.sync.base_gone(scene.node, "silent for 61s")
    assert scene.calls.log == [], "its base is in the registry again: the pod stays Ready"


async def test_a_pod_removed_is_deleted_once_though_late_events_come_before_its_deletion(
    scene: Scene,
) -> None:
    """The watch's events of a pod we deleted may come after our next look at the base
    (the pod's last update before the delete): it was deleted, not to be deleted again."""
    leaving = scene.add(pod("old", [("biz1", "1")], deleting=True, deletion_seen_at=0))
    scene.state.set_inventory(IDENTITY, simple())
    await scene.plan()
    assert scene.calls.kinds() == [("delete", "old")]
    late = {
        "metadata": {
            "uid": leaving.uid,
            "name": "old",
            "namespace": "ns",
            "resourceVersion": "2",
            "deletionTimestamp": "2026-11-28T10:00:05Z",
        },
        "spec": {"nodeName": scene.node, "containers": []},
    }
    assert scene.state.upsert_pod(late, now=1.0) == set()
    await scene.plan()
    assert scene.calls.kinds() == [("delete", "old")], "deleted once"
    scene.state.remove_pod(leaving.uid)  # the watch's deletion: forgotten for good
    assert scene.state.upsert_pod(late, now=2.0) == {scene.node}


async def test_base_gone_leaves_the_pods_of_a_base_heard_again_while_it_marks_them(
    scene: Scene,
) -> None:
    """Each write awaits the network: a heartbeat may bring the base back meanwhile, and
    then none of its pods is deleted."""
    scene.add(pod("a", [("biz1", "1")], ready=True))
    scene.add(pod("b", [("biz1", "1")], ready=True))
    record = scene.registry.bases.pop(IDENTITY)
    patch = scene.calls.patch_namespaced_pod_status

    async def heard_again_during_the_write(name: str, namespace: str, body: Any, **_: Any) -> Any:
        scene.registry.bases[IDENTITY] = record  # a heartbeat arrived meanwhile
        return await patch(name, namespace, body)

    scene.calls.patch_namespaced_pod_status = heard_again_during_the_write  # type: ignore[method-assign]
    await scene.sync.base_gone(scene.node, "silent for 61s")
    assert scene.registry.base_of_node(scene.node) is record, "the base is alive again"
    deleted = [what for kind, what in scene.calls.kinds() if kind == "delete"]
    assert deleted == [], f"pods of a live base deleted: {deleted}"


async def test_an_inventory_like_the_last_plans_nothing_again(scene: Scene) -> None:
    """The periodic poll mostly hears the same list: planning it again every time was a
    fifth of a steady replica's CPU. Only a list that changes something wakes the base."""
    woken: list[str] = []
    scene.sync.base_changed = woken.append  # type: ignore[method-assign,assignment]
    listed = simple(("biz1:1", BizState.ACTIVATED))
    scene.sync.inventory_reported(IDENTITY, ())  # the first answer: nothing known before
    scene.sync.inventory_reported(IDENTITY, listed)
    scene.sync.inventory_reported(IDENTITY, listed)
    scene.sync.inventory_reported(IDENTITY, simple(("biz1:1", BizState.DEACTIVATED)))
    assert woken == [IDENTITY] * 3
    scene.state.base_modules[IDENTITY].installing["biz2:1"] = scene.clock.now
    scene.sync.inventory_reported(IDENTITY, simple(("biz1:1", BizState.DEACTIVATED)))
    assert woken == [IDENTITY] * 3, "an install in flight, not answered by this list"
    scene.sync.inventory_reported(
        IDENTITY, simple(("biz1:1", BizState.DEACTIVATED), ("biz2:1", BizState.ACTIVATED))
    )
    assert woken == [IDENTITY] * 4
    assert "biz2:1" not in scene.state.base_modules[IDENTITY].installing


def test_set_inventory_says_when_only_its_bookkeeping_changed() -> None:
    """The same list can still answer something: an uninstall in flight whose module the
    base no longer lists is done, and the pods waiting on it must be planned again."""
    state = ModuleState(listed=True)
    assert state.set_inventory(IDENTITY, ()) is True
    assert state.set_inventory(IDENTITY, ()) is False
    state.base_modules[IDENTITY].uninstalling["biz1:1"] = Uninstall(first_sent=1, last_sent=1)
    assert state.set_inventory(IDENTITY, ()) is True
    assert state.set_inventory(IDENTITY, ()) is False
