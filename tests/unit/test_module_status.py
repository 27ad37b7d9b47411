"""kubectl shows what is true: 0/1 whenever not Ready, old pods out first, no no-op writes."""

from __future__ import annotations

import copy
from typing import Any

from module_controller.modules import reasons
from module_controller.modules.planner import plan_base
from module_controller.modules.serving import FIRST_STATUS_WAIT_SECONDS
from module_controller.modules.spec import pod_modules
from module_controller.modules.state import BaseModules
from module_controller.modules.status import is_ready, needs_write, not_ready_status
from module_controller.protocol.states import BizState
from tests.unit.modules_support import (
    NEWER,
    WALL,
    condition,
    context,
    inventory,
    pod,
    settle,
    written,
)


def shows_zero_of_one(status: dict[str, Any]) -> bool:
    return (
        condition(status)["status"] == "False"
        and condition(status, "ContainersReady")["status"] == "False"
        and not any(c["ready"] for c in status["containerStatuses"])
    )


def test_a_superseded_pod_shows_no_ready_container() -> None:
    old = pod("old", [("biz1", "1")], ready=True)
    new = pod("new", [("biz1", "2")], NEWER)
    base = BaseModules(
        inventory=inventory(("biz1:1", BizState.ACTIVATED), ("biz1:2", BizState.ACTIVATED))
    )
    statuses = {p.name: s for p, s in plan_base([new, old], base, context()).writes}
    assert condition(statuses["old"])["reason"] == reasons.SUPERSEDED
    assert shows_zero_of_one(statuses["old"]), "its module is still ACTIVATED, yet 0/1"


def test_pods_on_a_silent_base_show_0_of_1() -> None:
    base = BaseModules(inventory=inventory(("biz1:1", BizState.ACTIVATED)))
    serving = pod("a", [("biz1", "1")], ready=True)
    [(_, status)] = plan_base([serving], base, context(ready=False)).writes
    assert condition(status)["reason"] == reasons.BASE_DOWN
    assert shows_zero_of_one(status)


def test_a_deleted_ready_pod_goes_not_ready_before_the_new_pod_goes_ready() -> None:
    leaving = pod("old", [("biz1", "1")], deleting=True, ready=True, owned=True)
    arriving = pod("new", [("biz1", "2")], NEWER)
    base = BaseModules(
        inventory=inventory(("biz1:1", BizState.DEACTIVATED), ("biz1:2", BizState.ACTIVATED))
    )
    plan = plan_base([arriving, leaving], base, context(now=10))
    assert written(plan) == [("old", False), ("new", True)]
    assert plan.going_down[0][0] is leaving, "carried out before any command"
    assert condition(plan.going_down[0][1])["reason"] == reasons.TERMINATING
    assert shows_zero_of_one(plan.going_down[0][1])
    assert [b.key for b in plan.uninstalls] == ["biz1:1"]


def test_a_deleted_pod_is_marked_not_ready_once() -> None:
    leaving = pod("old", [("biz1", "1")], deleting=True, ready=True)
    base = BaseModules(inventory=inventory(("biz1:1", BizState.ACTIVATED)))
    plan = plan_base([leaving], base, context(now=10))
    settle(plan)
    assert plan_base([leaving], base, context(now=11)).writes == []


def test_a_status_read_back_with_offset_timestamps_is_not_written_again() -> None:
    """The API client renders times as +00:00 where we write Z: same status, no patch."""
    base = BaseModules(inventory=inventory(("biz1:1", BizState.ACTIVATED)))
    serving = pod("a", [("biz1", "1")])
    first = plan_base([serving], base, context())
    [(_, status)] = first.writes
    read_back = copy.deepcopy(status)
    for entry in read_back["containerStatuses"]:
        running = entry["state"]["running"]
        running["startedAt"] = running["startedAt"].replace("Z", "+00:00")
    for entry in read_back["conditions"]:
        entry["lastTransitionTime"] = entry["lastTransitionTime"].replace("Z", "+00:00")
        if not entry["message"]:
            del entry["message"]  # the API server omits empty strings
    serving.status = read_back
    assert plan_base([serving], base, context(now=15)).writes == []


def test_a_partial_status_compares_only_what_it_sets() -> None:
    serving = pod("a", [("biz1", "1")], ready=True)
    down = not_ready_status(serving, reasons.BASE_DOWN, "silent", WALL)
    assert needs_write(serving.status, down)
    shown = {**serving.status, **down}
    assert not needs_write(shown, down)


def test_an_invalid_pod_once_valid_is_not_written_again_forever() -> None:
    """Initialized stays on the pod from before: comparing it must not re-patch."""
    base = BaseModules(inventory={})
    bad = pod("a", [("biz1", "1")], images={"biz1": "biz1:latest"})
    bad.status = {"conditions": [{"type": "Initialized", "status": "True", "reason": "ModulePod"}]}
    plan = plan_base([bad], base, context())
    settle(plan)
    assert plan_base([bad], base, context(now=1)).writes == []


def test_a_huge_biz_version_is_cut_in_conditions_and_events() -> None:
    huge = "1" + "x" * 100_000
    spec = {
        "containers": [
            {
                "name": "biz1",
                "image": "https://r/b.jar",
                "env": [{"name": "BIZ_VERSION", "value": huge}],
            }
        ]
    }
    bad = pod("a", [("biz1", "1")])
    bad.wants = pod_modules({"spec": spec})
    plan = plan_base([bad], BaseModules(inventory={}), context())
    [(_, status)] = plan.writes
    assert all(len(c.get("message", "")) <= 1000 for c in status["conditions"])
    assert "100001 characters" in condition(status)["message"]
    assert all(len(e.message) <= 1000 for e in plan.events)


def test_ready_needs_the_pods_own_version_activated() -> None:
    base = BaseModules(inventory=inventory(("biz1:1", BizState.ACTIVATED)))
    other = pod("a", [("biz1", "2")])
    plan_base([other], base, context())  # sends the install of biz1:2
    [(_, status)] = plan_base([other], base, context(now=FIRST_STATUS_WAIT_SECONDS)).writes
    assert not is_ready(status)
