"""What ModuleState keeps stays bounded: pods come and go, modules come and go, bases go.

Also the index of pods by node that `pods_on` answers from: it must say what a scan of
every pod says, in the same order, whatever pods do (move, go, come back, arrive late).
"""

from __future__ import annotations

import random
from typing import Any

from module_controller.modules import reasons
from module_controller.modules.planner import plan_base
from module_controller.modules.state import BaseModules, InstalledModule, ModuleState
from module_controller.modules.status import is_ready, ready_condition
from module_controller.protocol.states import BizState
from tests.unit.modules_support import context, jar, pod, simple

BASE = "base-1"
NODE = "node-1"


def body(
    name: str,
    node: str | None,
    version: int = 1,
    *,
    deleting: bool = False,
    module: tuple[str, str] = ("biz1", "1"),
) -> dict[str, Any]:
    """A module pod as a watch event carries it."""
    metadata: dict[str, Any] = {
        "namespace": "ns",
        "name": name,
        "uid": f"uid-{name}",
        "resourceVersion": str(version),
        "creationTimestamp": "2026-11-28T10:00:00Z",
    }
    if deleting:
        metadata["deletionTimestamp"] = "2026-11-28T10:05:00Z"
    container = {
        "name": module[0],
        "image": jar(*module),
        "env": [{"name": "BIZ_VERSION", "value": module[1]}],
    }
    return {"metadata": metadata, "spec": {"nodeName": node, "containers": [container]}}


def scan(state: ModuleState, node: str) -> list[str]:
    """What pods_on answered before the index: every pod, looked at one by one."""
    return [p.uid for p in state.pods.values() if p.node_name == node]


def on(state: ModuleState, node: str) -> list[str]:
    return [p.uid for p in state.pods_on(node)]


# --- the index by node ---------------------------------------------------------------------


def test_the_index_follows_a_pod_that_is_scheduled_and_then_moves() -> None:
    state = ModuleState()
    assert state.upsert_pod(body("a", None, 1), now=0) == set()
    assert state.upsert_pod(body("b", "node-2", 1), now=0) == {"node-2"}
    assert state._on_node == {"node-2": {"uid-b"}}, "an unscheduled pod is on no node"
    assert state.upsert_pod(body("a", "node-2", 2), now=1) == {"node-2"}
    assert on(state, "node-2") == ["uid-a", "uid-b"] == scan(state, "node-2"), (
        "the order of `pods` (a first seen first), not the order pods reached the node"
    )
    assert state.upsert_pod(body("a", "node-3", 3), now=2) == {"node-2", "node-3"}
    assert on(state, "node-2") == ["uid-b"] and on(state, "node-3") == ["uid-a"]
    assert state._on_node == {"node-2": {"uid-b"}, "node-3": {"uid-a"}}


def test_a_stale_event_does_not_move_a_pod_in_the_index() -> None:
    state = ModuleState()
    state.upsert_pod(body("a", "node-2", 5), now=0)
    assert state.upsert_pod(body("a", "node-3", 4), now=1) == set()
    assert on(state, "node-2") == ["uid-a"] and on(state, "node-3") == []


def test_pods_on_answers_what_a_scan_of_every_pod_answers() -> None:
    """Random pods coming, moving, going and coming back, on a few nodes."""
    randomly = random.Random(7)
    state = ModuleState()
    nodes = [None, "n1", "n2", "n3"]
    versions: dict[str, int] = {}
    for _ in range(3000):
        name = f"p{randomly.randrange(40)}"
        if randomly.random() < 0.3:
            state.remove_pod(f"uid-{name}")
        else:
            versions[name] = versions.get(name, 0) + 1
            state.upsert_pod(body(name, randomly.choice(nodes), versions[name]), now=0)
        for node in nodes[1:]:
            assert node is not None
            assert on(state, node) == scan(state, node)
    assert set(state._order) == set(state.pods)


def test_after_pods_come_and_go_nothing_is_left_of_them() -> None:
    state = ModuleState()
    for round_ in range(50):
        names = [f"r{round_}-{n}" for n in range(5)]
        for number, name in enumerate(names):
            state.upsert_pod(body(name, f"node-{number % 3}"), now=round_)
        for name in names:
            state.upsert_pod(body(name, f"node-{round_ % 3}", 2, deleting=True), now=round_)
        for name in names:
            state.remove_pod(f"uid-{name}")
    assert state.pods == {}
    assert state._on_node == {} and state._order == {}, "no empty set per node ever used"


def test_a_pod_added_as_it_is_is_indexed() -> None:
    state = ModuleState()
    built = pod("a", [("biz1", "1")])
    assert state.add_pod(built) == {NODE}
    assert state.pods_on(NODE) == [built]


# --- what a base's bookkeeping keeps ---------------------------------------------------------


def test_reports_of_pods_that_left_the_base_are_forgotten() -> None:
    """Every pod told once (an invalid spec, a shared module instance), then gone."""
    base = BaseModules(inventory={"biz1:1": InstalledModule("biz1", "1", BizState.ACTIVATED)})
    kept = pod("kept", [("biz1", "1")])
    for round_ in range(20):
        passing = pod(f"shared-{round_}", [("biz1", "1")], "2026-11-28T11:00:00Z")
        invalid = pod(f"invalid-{round_}", [("biz1", "1")], images={"biz1": "not a url"})
        plan = plan_base([kept, passing, invalid], base, context(round_))
        reasons_told = sorted(event.reason for event in plan.events)
        assert reasons_told == [reasons.INVALID, reasons.SHARED_INSTANCE]
    assert len(base.reported) == 2, "the pods of the last round"
    plan_base([kept], base, context(99))
    assert base.reported == {}


def test_a_module_broken_again_and_again_is_reported_each_time_and_kept_once() -> None:
    """A crash loop (the base restarts, the module is installed again and goes BROKEN with
    a new state record) must not grow what is kept about the pod."""
    base = BaseModules()
    wanting = pod("a", [("biz1", "1")])
    for record in range(1, 30):
        broken = InstalledModule(
            "biz1", "1", BizState.BROKEN, message="boom", change_time_ms=record * 1000
        )
        base.inventory = {"biz1:1": broken}
        plan = plan_base([wanting], base, context(record))
        assert [event.type for event in plan.events] == ["Warning"], "news each time"
        assert plan_base([wanting], base, context(record + 0.5)).events == [], "once"
    assert base.reported == {("uid-a", "broken biz1:1"): "29000"}


def test_jar_urls_of_modules_that_came_and_went_are_forgotten() -> None:
    state = ModuleState()
    state.set_inventory(BASE, ())
    base = state.base_modules[BASE]
    for version in range(1, 20):
        key = f"biz1:{version}"
        wanting = pod(f"v{version}", [("biz1", str(version))])
        assert [spec.key for spec in plan_base([wanting], base, context(version)).installs] == [key]
        assert base.urls == {key: jar("biz1", str(version))}
        state.set_inventory(BASE, simple((key, BizState.ACTIVATED)))
        plan = plan_base([], base, context(version + 0.5))
        assert [biz.key for biz in plan.uninstalls] == [key], "its pod let go of it"
        state.set_inventory(BASE, ())
    assert base.urls == {} and base.installing == {} and base.uninstalling == {}
    assert base.failures == {} and base.orphan_since == {} and base.strays == {}
    assert base.abandoned == {} and base.reported == {}


def test_a_gone_base_leaves_nothing_behind() -> None:
    state = ModuleState()
    state.set_inventory(BASE, simple(("biz1:1", BizState.ACTIVATED)))
    plan_base([pod("a", [("biz1", "1")])], state.base_modules[BASE], context(0))
    state.forget_base(BASE)
    assert BASE not in state.base_modules


# --- the one home of "is this pod Ready" -----------------------------------------------------


def test_ready_is_read_from_the_ready_condition_alone() -> None:
    shown = pod("a", [("biz1", "1")], ready=True)
    assert ready_condition(shown.status) == {"type": "Ready", "status": "True"}
    assert is_ready(shown.status) and shown.observed_ready and not shown.shows_outdone
    assert ready_condition({}) is None and not is_ready({"conditions": None})
    only_containers = {"conditions": [{"type": "ContainersReady", "status": "True"}]}
    assert not is_ready(only_containers)
    outdone = pod("b", [("biz1", "1")])
    outdone.status = {
        "conditions": [{"type": "Ready", "status": "False", "reason": reasons.SUPERSEDED}]
    }
    assert outdone.shows_outdone and not outdone.observed_ready
