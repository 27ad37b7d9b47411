"""Replacing a pod on its own base, a jar under the same version, and the upgrade annotation."""

from __future__ import annotations

from module_controller.modules import reasons
from module_controller.modules.planner import REPLACEMENT_GRACE_SECONDS, plan_base
from module_controller.modules.state import BaseModules, ModuleState
from module_controller.modules.status import is_ready
from module_controller.protocol.states import BizState
from tests.unit.modules_support import (
    NEWER,
    annotated,
    condition,
    context,
    inventory,
    jar,
    pod,
    settle,
    written,
)

ACTIVE = BizState.ACTIVATED


def test_a_deleted_pod_replaced_on_the_same_base_keeps_its_module() -> None:
    base = BaseModules(inventory=inventory(("biz1:1", ACTIVE)), urls={"biz1:1": jar("biz1", "1")})
    leaving = pod(
        "old", [("biz1", "1")], deleting=True, deletion_seen_at=0.0, ready=True, owned=True
    )
    first = plan_base([leaving], base, context(now=0.5))
    assert first.uninstalls == [], "its replacement may come to this base"
    assert written(first) == [("old", False)]
    assert first.wake_at == REPLACEMENT_GRACE_SECONDS
    settle(first)
    arriving = pod("new", [("biz1", "1")], NEWER, owned=True)
    plan = plan_base([leaving, arriving], base, context(now=1.5))
    assert plan.uninstalls == [] and plan.installs == []
    assert written(plan) == [("new", True)]
    assert plan.deletions == [leaving]


def test_a_deleted_pod_not_replaced_here_is_uninstalled_after_the_grace() -> None:
    base = BaseModules(inventory=inventory(("biz1:1", ACTIVE)))
    leaving = pod("old", [("biz1", "1")], deleting=True, deletion_seen_at=0.0, owned=True)
    assert plan_base([leaving], base, context(now=1)).uninstalls == []
    later = plan_base([leaving], base, context(now=REPLACEMENT_GRACE_SECONDS))
    assert [b.key for b in later.uninstalls] == ["biz1:1"]


def test_a_replacement_waiting_for_the_scheduler_holds_the_module() -> None:
    base = BaseModules(inventory=inventory(("biz1:1", ACTIVE)))
    leaving = pod("old", [("biz1", "1")], deleting=True, deletion_seen_at=0.0, owned=True)
    pending = frozenset({"biz1:1"})
    assert plan_base([leaving], base, context(now=10, unscheduled=pending)).uninstalls == []
    late = plan_base([leaving], base, context(now=31, unscheduled=pending))
    assert [b.key for b in late.uninstalls] == ["biz1:1"], "bounded"


def test_a_bare_pod_is_not_held() -> None:
    base = BaseModules(inventory=inventory(("biz1:1", ACTIVE)))
    leaving = pod("old", [("biz1", "1")], deleting=True, deletion_seen_at=0.0)
    assert [b.key for b in plan_base([leaving], base, context(now=0)).uninstalls] == ["biz1:1"]


def test_a_pod_is_never_ready_while_its_module_is_being_uninstalled() -> None:
    base = BaseModules(inventory=inventory(("biz1:1", ACTIVE)))
    leaving = pod("old", [("biz1", "1")], deleting=True, deletion_seen_at=0.0)
    plan_base([leaving], base, context(now=0))
    assert "biz1:1" in base.uninstalling
    arriving = pod("new", [("biz1", "1")], NEWER)
    plan = plan_base([arriving], base, context(now=0.2))
    [(_, status)] = plan.writes
    assert not is_ready(status)
    assert condition(status)["reason"] == reasons.UNINSTALLING
    base.inventory = {}
    base.uninstalling.clear()
    assert [s.key for s in plan_base([arriving], base, context(now=1)).installs] == ["biz1:1"]


def test_a_new_jar_under_the_same_version_replaces_the_module_in_the_seeds_order() -> None:
    old_url, new_url = jar("biz1", "1"), "file:///opt/rebuilt/biz1-1.jar"
    base = BaseModules(inventory=inventory(("biz1:1", ACTIVE)), urls={"biz1:1": old_url})
    old = pod("old", [("biz1", "1")], ready=True)
    new = pod("new", [("biz1", "1")], NEWER, images={"biz1": new_url})

    plan = plan_base([old, new], base, context(now=0))
    assert plan.going_down and plan.going_down[0][0] is old, "old pod out before the uninstall"
    assert ("new", True) not in written(plan), "never Ready on the old jar"
    assert condition(plan.going_down[0][1])["reason"] == reasons.REPLACED
    assert [b.key for b in plan.uninstalls] == ["biz1:1"]
    assert plan.installs == [], "a base holds one biz1:1: the old jar goes first"
    settle(plan)

    base.inventory = {}
    base.uninstalling.clear()
    plan = plan_base([old, new], base, context(now=1))
    assert [s.url for s in plan.installs] == [new_url]

    base.inventory = inventory(("biz1:1", ACTIVE))
    plan = plan_base([old, new], base, context(now=2))
    statuses = {p.name: s for p, s in plan.writes}
    assert is_ready(statuses["new"])
    assert not is_ready(statuses.get("old", old.status)), "the old pod stays out"
    assert plan.uninstalls == [] and plan.installs == []


def test_a_bare_pod_updated_in_place_goes_not_ready_before_its_jar_is_uninstalled() -> None:
    base = BaseModules(inventory=inventory(("biz1:1", ACTIVE)), urls={"biz1:1": jar("biz1", "1")})
    updated = pod("a", [("biz1", "1")], ready=True, images={"biz1": "file:///opt/new.jar"})
    plan = plan_base([updated], base, context())
    assert written(plan) == [("a", False)] and plan.going_down
    assert [b.key for b in plan.uninstalls] == ["biz1:1"]


def test_after_a_restart_the_jar_of_a_module_is_the_one_its_ready_pod_shows() -> None:
    base = BaseModules(inventory=inventory(("biz1:1", ACTIVE)))  # urls unknown
    old = pod("old", [("biz1", "1")], ready=True)
    new = pod("new", [("biz1", "1")], NEWER, images={"biz1": "file:///opt/new.jar"})
    plan = plan_base([old, new], base, context())
    assert base.urls["biz1:1"] == jar("biz1", "1")
    assert [b.key for b in plan.uninstalls] == ["biz1:1"]


def test_uninstall_then_install_upgrades_in_the_seeds_order() -> None:
    base = BaseModules(inventory=inventory(("biz1:1", ACTIVE)))
    old = pod("old", [("biz1", "1")], ready=True, owned=True)
    new = annotated("new", [("biz1", "2")])

    plan = plan_base([old, new], base, context(now=0))
    assert [p.name for p, _ in plan.going_down] == ["old"]
    assert [b.key for b in plan.uninstalls] == ["biz1:1"]
    assert plan.installs == [], "the old version goes first"
    settle(plan)

    base.inventory = {}
    base.uninstalling.clear()
    plan = plan_base([old, new], base, context(now=1))
    assert [s.key for s in plan.installs] == ["biz1:2"], "and the old one is not reinstalled"

    base.inventory = inventory(("biz1:2", ACTIVE))
    plan = plan_base([old, new], base, context(now=2))
    statuses = {p.name: s for p, s in plan.writes}
    assert is_ready(statuses["new"])
    assert plan.installs == [] and plan.uninstalls == []


def test_without_the_annotation_versions_run_side_by_side() -> None:
    base = BaseModules(inventory=inventory(("biz1:1", ACTIVE)))
    old = pod("old", [("biz1", "1")], ready=True)
    new = pod("new", [("biz1", "2")], NEWER)
    plan = plan_base([old, new], base, context())
    assert plan.uninstalls == [] and [s.key for s in plan.installs] == ["biz1:2"]


def test_two_pods_sharing_one_module_instance_are_told_once() -> None:
    base = BaseModules(inventory=inventory(("biz1:1", ACTIVE)))
    first = pod("a", [("biz1", "1")])
    second = pod("b", [("biz1", "1")], NEWER)
    plan = plan_base([first, second], base, context())
    shared = [e for e in plan.events if e.reason == reasons.SHARED_INSTANCE]
    assert [(e.pod.name, e.type) for e in shared] == [("b", "Normal")]
    assert "pod a" in shared[0].message
    assert plan_base([first, second], base, context(now=1)).events == []


def test_a_pod_made_in_the_same_second_is_newer_when_seen_later() -> None:
    """A Deployment makes the new pod in the second it replaces the old one."""
    base = BaseModules(inventory=inventory(("biz1:1", ACTIVE)))
    old = pod("swap-7", [("biz1", "1")], ready=True)
    new = annotated("swap-5", [("biz1", "2")], created=old.created)
    old.seen, new.seen = 10.0, 11.0
    plan = plan_base([old, new], base, context())
    assert [b.key for b in plan.uninstalls] == ["biz1:1"], "the newer pod's annotation rules"
    assert plan.installs == []


def test_a_pod_keeps_the_time_it_was_first_seen() -> None:
    state = ModuleState()
    body = {"metadata": {"uid": "u", "name": "a", "namespace": "ns", "resourceVersion": "1"}}
    state.upsert_pod(body, now=5.0)
    state.upsert_pod({**body, "metadata": {**body["metadata"], "resourceVersion": "2"}}, now=9.0)
    assert state.pods["u"].seen == 5.0


def test_a_deleted_pod_superseded_on_its_base_is_not_held_for_a_replacement() -> None:
    """A rollout to a new version: the old version's pod, superseded here, is scaled away
    by its controller, which makes no replacement; holding its module would only delay the
    pod's removal (and the rollout) by the grace."""
    base = BaseModules(inventory=inventory(("biz1:1", ACTIVE), ("biz1:2", ACTIVE)))
    serving = pod("new", [("biz1", "2")], NEWER, ready=True, owned=True)
    leaving = pod("old", [("biz1", "1")], deleting=True, deletion_seen_at=0.0, owned=True)
    plan = plan_base([leaving, serving], base, context(now=0.5))
    assert [b.key for b in plan.uninstalls] == ["biz1:1"]
    assert plan.wake_at is None or plan.wake_at > REPLACEMENT_GRACE_SECONDS


def test_a_deleted_pod_next_to_a_newer_version_that_cannot_serve_is_held() -> None:
    """Superseded means a newer version serves here; one still installing does not count."""
    base = BaseModules(inventory=inventory(("biz1:1", ACTIVE)))
    coming = pod("new", [("biz1", "2")], NEWER, owned=True)
    leaving = pod("old", [("biz1", "1")], deleting=True, deletion_seen_at=0.0, owned=True)
    plan = plan_base([leaving, coming], base, context(now=0.5))
    assert plan.uninstalls == []


DEACTIVATED = BizState.DEACTIVATED


def test_a_version_left_deactivated_is_installed_again_when_the_newer_pod_leaves() -> None:
    """A rollback after a Ready canary: the old version stays DEACTIVATED on the base and
    nothing switches it back on (MQTT has no switchBiz); installed again, it serves."""
    base = BaseModules(inventory=inventory(("biz1:1", DEACTIVATED), ("biz1:2", ACTIVE)))
    old = pod("old", [("biz1", "1")], owned=True)
    canary = pod("canary", [("biz1", "2")], NEWER, deleting=True, deletion_seen_at=0.0, ready=True)
    canary.owned = True

    held = plan_base([old, canary], base, context(now=0.5))
    assert held.uninstalls == [], "a replacement of the canary may still come here"
    settle(held)

    plan = plan_base([old, canary], base, context(now=REPLACEMENT_GRACE_SECONDS))
    assert sorted(b.key for b in plan.uninstalls) == ["biz1:1", "biz1:2"]
    assert plan.installs == []
    events = [(e.pod.name, e.reason) for e in plan.events]
    assert ("old", reasons.REINSTALLING) in events
    settle(plan)

    # biz1:1 has left; biz1:2 is still on its way out: not yet, or it may start DEACTIVATED.
    base.inventory = inventory(("biz1:2", DEACTIVATED))
    del base.uninstalling["biz1:1"]
    waiting = plan_base([old], base, context(now=REPLACEMENT_GRACE_SECONDS + 1))
    assert waiting.installs == []

    base.inventory = {}
    base.uninstalling.clear()
    plan = plan_base([old], base, context(now=REPLACEMENT_GRACE_SECONDS + 2))
    assert [s.key for s in plan.installs] == ["biz1:1"]
    settle(plan)

    base.inventory = inventory(("biz1:1", ACTIVE))
    plan = plan_base([old], base, context(now=REPLACEMENT_GRACE_SECONDS + 3))
    assert written(plan) == [("old", True)]
    assert base.reinstalls == {}, "served again: a later rollback starts afresh"


def test_an_older_pod_whose_version_still_serves_keeps_the_newer_one_waiting() -> None:
    """Mid-update on a base that starts a second version DEACTIVATED: the old pod serves;
    nothing is uninstalled for the newer one while a live pod wants the active version."""
    base = BaseModules(inventory=inventory(("biz1:1", ACTIVE), ("biz1:2", DEACTIVATED)))
    old = pod("old", [("biz1", "1")], ready=True)
    new = pod("new", [("biz1", "2")], NEWER)
    plan = plan_base([old, new], base, context())
    assert plan.uninstalls == [] and plan.installs == []
    assert base.reinstalls == {}
    statuses = {p.name: s for p, s in plan.writes}
    assert statuses["new"]["phase"] == "Running" and not is_ready(statuses["new"])


def test_a_base_that_keeps_starting_it_deactivated_is_not_sent_it_in_a_loop() -> None:
    base = BaseModules(inventory=inventory(("biz1:1", DEACTIVATED)))
    alone = pod("alone", [("biz1", "1")])
    first = plan_base([alone], base, context(now=0))
    assert [b.key for b in first.uninstalls] == ["biz1:1"]
    base.uninstalling.clear()  # uninstalled, installed again: DEACTIVATED once more
    again = plan_base([alone], base, context(now=1))
    assert again.uninstalls == [], "backoff"
    assert again.wake_at == 5.0  # INSTALL_RETRY_SECONDS after the first try
    later = plan_base([alone], base, context(now=5))
    assert [b.key for b in later.uninstalls] == ["biz1:1"]
