"""Edge-case sequences against the module planner and state, found by an adversarial review
(duplicated, late and lost replies, restarts, multi-module pods; one rule each)."""

from __future__ import annotations

from module_controller.modules import reasons
from module_controller.modules.planner import plan_base
from module_controller.modules.spec import pod_modules
from module_controller.modules.state import BaseModules, ModuleState
from module_controller.modules.status import is_ready, shows_ready
from module_controller.protocol import SimpleBizInfo
from module_controller.protocol.biz import BizStateRecord
from module_controller.protocol.states import BizState
from tests.unit.modules_support import (
    NEWER,
    condition,
    container,
    context,
    install_reply,
    inventory,
    jar,
    pod,
    settle,
    simple,
)

BASE = "base-1"
ACTIVE = BizState.ACTIVATED


def fresh() -> ModuleState:
    state = ModuleState()
    state.set_inventory(BASE, ())
    return state


# --- lossless update ---------------------------------------------------------------------


def test_a_pod_is_not_superseded_by_a_newer_pod_that_cannot_go_ready() -> None:
    """Two-module pods, rollout of both: biz1:2 comes up, biz2:2 fails to download.

    The old pod keeps serving until the new pod can go Ready (every module of it
    ACTIVATED), not as soon as *one* of them is: else the base would serve nothing.
    """
    old = pod("old", [("biz1", "1"), ("biz2", "1")], ready=True)
    new = pod("new", [("biz1", "2"), ("biz2", "2")], NEWER)
    base = BaseModules(
        inventory=inventory(
            ("biz1:1", ACTIVE), ("biz2:1", ACTIVE), ("biz1:2", ACTIVE)
        )  # biz2:2 never came (failed download)
    )
    plan = plan_base([old, new], base, context())
    statuses = {p.name: s for p, s in plan.writes}
    assert not is_ready(statuses.get("new", new.status))
    assert is_ready(statuses.get("old", old.status)), (
        "no Ready pod left on the base: the old pod was superseded by one that cannot serve"
    )


def test_a_late_install_of_the_old_jar_does_not_make_the_pod_ready_on_it() -> None:
    """A slow install of jar A (longer than INSTALL_TIMEOUT_SECONDS); meanwhile the pod's
    image becomes jar B. The resend with B answers with a lock conflict; then A's install
    finishes: the base holds biz1:1 from jar A, and the pod must not be Ready on it."""
    state = fresh()
    base = state.base_modules[BASE]
    old_url, new_url = jar("biz1", "1"), "file:///opt/rebuilt/biz1-1.jar"
    first = pod("a", [("biz1", "1")])
    assert [s.url for s in plan_base([first], base, context(0)).installs] == [old_url]
    updated = pod("a", [("biz1", "1")], images={"biz1": new_url})  # same pod, new image
    resend = plan_base([updated], base, context(130))
    assert [s.url for s in resend.installs] == [new_url]
    lock = "FAILED:biz1:1 installBiz conflict, exist unfinished command(installBiz) for this biz"
    state.apply_operation(BASE, install_reply("biz1", "1", "FAILED", message=lock, data=False), 131)
    # Jar A's install ends.
    state.apply_operation(
        BASE, install_reply("biz1", "1", biz_infos=[("biz1", "1", "ACTIVATED")]), 140
    )
    state.set_inventory(BASE, simple(("biz1:1", ACTIVE)))
    plan = plan_base([updated], base, context(141))
    assert not any(is_ready(s) for _, s in plan.writes), (
        "Ready on a module that may come from the old jar A"
    )


# --- replies duplicated / late ----------------------------------------------------------


def test_a_duplicated_uninstall_reply_does_not_take_down_a_reinstalled_module() -> None:
    """MQTT QoS 1 is at-least-once: an uninstall reply may come twice. Between the two,
    the module was installed again (new jar, same version); the second copy does not drop
    it from the inventory (no NotReady flap, no install sent again)."""
    state = fresh()
    base = state.base_modules[BASE]
    new_url = "file:///opt/rebuilt/biz1-1.jar"
    state.set_inventory(BASE, simple(("biz1:1", ACTIVE)))
    base.urls["biz1:1"] = jar("biz1", "1")
    old = pod("old", [("biz1", "1")], ready=True)
    new = pod("new", [("biz1", "1")], NEWER, images={"biz1": new_url})
    plan = plan_base([old, new], base, context(0))
    assert [b.key for b in plan.uninstalls] == ["biz1:1"]
    settle(plan)
    uninstalled = install_reply("biz1", "1", command="uninstallBiz")
    state.apply_operation(BASE, uninstalled, 1)
    plan = plan_base([old, new], base, context(2))
    assert [s.url for s in plan.installs] == [new_url]
    state.apply_operation(
        BASE, install_reply("biz1", "1", biz_infos=[("biz1", "1", "ACTIVATED")]), 3
    )
    state.set_inventory(BASE, simple(("biz1:1", ACTIVE)))
    plan = plan_base([old, new], base, context(4))
    settle(plan)
    assert is_ready(new.status)
    state.apply_operation(BASE, uninstalled, 5)  # the duplicate
    plan = plan_base([old, new], base, context(6))
    assert plan.installs == [] and plan.writes == [], "a stale reply flapped the pod"


# --- truthful status --------------------------------------------------------------------


def test_an_image_changed_to_an_invalid_one_leaves_no_container_ready() -> None:
    """`kubectl set image` to a non-URL on a Ready bare pod: Ready False, and kubectl shows
    0/1 (the containers the pod showed are sent again, none of them ready)."""
    base = BaseModules(inventory=inventory(("biz1:1", ACTIVE)), urls={"biz1:1": jar("biz1", "1")})
    ready = pod("a", [("biz1", "1")], ready=True)
    ready.wants = pod_modules({"spec": {"containers": [container("biz1", "1", "nginx:latest")]}})
    plan = plan_base([ready], base, context(0))
    assert [p.name for p, _ in plan.going_down] == ["a"]
    settle(plan)
    assert not is_ready(ready.status)
    assert not shows_ready(ready.status), (
        f"Ready False but containers still ready: {ready.status.get('containerStatuses')}"
    )


# --- a base restart ---------------------------------------------------------------------


def test_a_module_broken_before_its_base_restarted_is_installed_again() -> None:
    """biz1:1 breaks after start (not retried). The base restarts, its inventory empties:
    nothing BROKEN is there any more, so the module is installed again (the pod does not
    say BROKEN forever)."""
    state = fresh()
    base = state.base_modules[BASE]
    wanting = pod("a", [("biz1", "1")], ready=True)
    state.set_inventory(BASE, simple(("biz1:1", ACTIVE)))
    settle(plan_base([wanting], base, context(0)))
    state.set_inventory(BASE, simple(("biz1:1", BizState.BROKEN)))
    settle(plan_base([wanting], base, context(1)))
    assert not is_ready(wanting.status)
    state.set_inventory(BASE, ())  # the base restarted
    installs = [
        s.key for t in range(2, 1000, 10) for s in plan_base([wanting], base, context(t)).installs
    ]
    assert installs, "a restarted base never gets the module back"


# --- an operator restart ------------------------------------------------------------------


def test_an_operator_restart_keeps_which_of_two_same_second_pods_serves() -> None:
    """Blue/green: two Deployments applied together make pods in the same second; the one
    seen later serves. After a restart every pod is `seen` at the same instant: the pod that
    shows it was superseded counts as the older, so nothing changes (not the name)."""
    created = "2026-11-28T10:00:00Z"
    base = BaseModules(inventory=inventory(("biz1:1", ACTIVE), ("biz1:2", ACTIVE)))
    blue = pod("zz-blue", [("biz1", "1")], created)
    green = pod("aa-green", [("biz1", "2")], created)
    blue.seen, green.seen = 10.0, 11.0  # green seen later: it serves
    settle(plan_base([blue, green], base, context(12)))
    assert is_ready(green.status) and not is_ready(blue.status)
    assert condition(blue.status)["reason"] == reasons.SUPERSEDED
    # Restart: state from the pods listed (same `seen`) and a fresh inventory.
    blue.seen = green.seen = 0.0
    restarted = BaseModules(inventory=inventory(("biz1:1", ACTIVE), ("biz1:2", ACTIVE)))
    plan = plan_base([blue, green], restarted, context(0))
    assert plan.writes == [], [(p.name, is_ready(s)) for p, s in plan.writes]


def test_an_operator_restart_does_not_repeat_events_for_pods_that_are_fine() -> None:
    """A pod already Ready on a shared instance was told when it joined: not again."""
    base = BaseModules(inventory=inventory(("biz1:1", ACTIVE)))
    first = pod("a", [("biz1", "1")])
    second = pod("b", [("biz1", "1")], NEWER)
    settle(plan_base([first, second], base, context(0)))
    restarted = BaseModules(inventory=inventory(("biz1:1", ACTIVE)))
    plan = plan_base([first, second], restarted, context(0))
    assert plan.writes == []
    assert plan.events == [], [e.reason for e in plan.events]


# --- deletion while an install is in flight -----------------------------------------------


def test_a_pod_deleted_while_its_install_is_in_flight_leaves_nothing_on_the_base() -> None:
    """A bare pod deleted right after its install was sent is removed at once; the install
    then lands. It is uninstalled at once like any module a pod let go, not left the orphan
    grace (or forever with UNINSTALL_ORPHANS=false). With no answer, the uninstall is sent
    again on its own backoff: the first one is what counts here."""
    state = fresh()
    base = state.base_modules[BASE]
    wanting = pod("a", [("biz1", "1")])
    assert plan_base([wanting], base, context(0)).installs
    leaving = pod("a", [("biz1", "1")], deleting=True, deletion_seen_at=1.0)
    plan = plan_base([leaving], base, context(1))
    assert plan.deletions == [leaving]  # removed at once: the base lists nothing yet
    state.apply_operation(
        BASE, install_reply("biz1", "1", biz_infos=[("biz1", "1", "ACTIVATED")]), 2
    )
    state.set_inventory(BASE, simple(("biz1:1", ACTIVE)))
    uninstalled = [
        (t, b.key) for t in range(3, 30) for b in plan_base([], base, context(t)).uninstalls
    ]
    assert uninstalled[:1] == [(3, "biz1:1")], "the module a deleted pod asked for stays"


def test_a_pod_written_ready_on_its_install_answer_is_not_written_again_by_the_inventory() -> None:
    """The answer's bizInfo and the inventory carry the same state record: the start time
    the pod shows is the same from both, so the inventory's arrival changes nothing."""
    state = fresh()
    base = state.base_modules[BASE]
    new = pod("a", [("biz1", "1")])
    assert plan_base([new], base, context(0)).installs
    answer = install_reply("biz1", "1", biz_infos=[("biz1", "1", "ACTIVATED")], changed_ms=5000)
    state.apply_operation(BASE, answer, 0.05)
    answered = plan_base([new], base, context(0.05))
    assert [is_ready(status) for _, status in answered.writes] == [True]
    settle(answered)
    listed = SimpleBizInfo(
        name="biz1", version="1", state=ACTIVE, latest_state_record=BizStateRecord(change_time=5000)
    )
    state.set_inventory(BASE, (listed,))
    assert plan_base([new], base, context(0.1)).writes == []


# --- bookkeeping ----------------------------------------------------------------------------


def test_per_base_bookkeeping_does_not_grow_over_many_rollouts() -> None:
    """Each rollout: a pod wants biz1:N, the install's answer is lost and the download
    failed (nothing listed); the pod is replaced by biz1:N+1. `installing` and `urls` do not
    keep an entry per version that no pod wants."""
    state = fresh()
    base = state.base_modules[BASE]
    now = 0.0
    for version in range(1, 51):
        wanting = pod(f"p{version}", [("biz1", str(version))])
        assert plan_base([wanting], base, context(now)).installs
        state.set_inventory(BASE, ())
        now += 10
    plan_base([], base, context(now))
    state.set_inventory(BASE, ())
    assert len(base.installing) <= 1 and len(base.urls) <= 1, (
        f"{len(base.installing)} installs and {len(base.urls)} urls kept for modules no pod wants"
    )


def test_a_stray_forgotten_by_a_restarted_base_is_not_kept_forever() -> None:
    """A mismatched jar's stray, then the base restarts before it was uninstalled: the
    stray entry goes with it, or later the same key (a baseline module the base reinstalls
    by itself) would be uninstalled at once, skipping the orphan grace meant for baselines."""
    state = fresh()
    base = state.base_modules[BASE]
    asking = pod("a", [("biz1", "0.0.3")])
    plan_base([asking], base, context(0))
    reply = install_reply("biz1", "0.0.3", biz_infos=[("biz1", "0.0.1", "ACTIVATED")])
    state.apply_operation(BASE, reply, 0.5)
    state.set_inventory(BASE, ())  # the base restarted: the stray is gone
    plan_base([], base, context(1))
    assert base.strays == {}, base.strays


def test_a_late_install_of_the_old_jar_is_replaced_by_the_pods_jar() -> None:
    """The sequence above, carried on: what landed under the key is uninstalled, then the
    pod's own jar is installed, and only then does the pod go Ready."""
    state = fresh()
    base = state.base_modules[BASE]
    new_url = "file:///opt/rebuilt/biz1-1.jar"
    plan_base([pod("a", [("biz1", "1")])], base, context(0))
    updated = pod("a", [("biz1", "1")], images={"biz1": new_url})
    plan_base([updated], base, context(130))
    state.apply_operation(
        BASE, install_reply("biz1", "1", biz_infos=[("biz1", "1", "ACTIVATED")]), 140
    )
    state.set_inventory(BASE, simple(("biz1:1", ACTIVE)))
    plan = plan_base([updated], base, context(141))
    assert [b.key for b in plan.uninstalls] == ["biz1:1"] and plan.installs == []
    settle(plan)
    state.apply_operation(BASE, install_reply("biz1", "1", command="uninstallBiz"), 142)
    plan = plan_base([updated], base, context(143))
    assert [s.url for s in plan.installs] == [new_url]
    state.apply_operation(
        BASE, install_reply("biz1", "1", biz_infos=[("biz1", "1", "ACTIVATED")]), 144
    )
    plan = plan_base([updated], base, context(145))
    settle(plan)
    assert is_ready(updated.status)


def test_an_install_in_flight_is_not_sent_again_for_a_pod_that_wants_it_next() -> None:
    """The pod that asked leaves, another wants the same module: the install in flight is
    theirs again (no second install), and is sent again only past the install timeout."""
    state = fresh()
    base = state.base_modules[BASE]
    assert plan_base([pod("a", [("biz1", "1")])], base, context(0)).installs
    assert plan_base([], base, context(1)).installs == []
    assert base.abandoned == {"biz1:1": 0}
    wanting = pod("b", [("biz1", "1")], NEWER)
    assert plan_base([wanting], base, context(2)).installs == []
    assert base.installing == {"biz1:1": 0} and base.abandoned == {}
    assert [s.key for s in plan_base([wanting], base, context(121)).installs] == ["biz1:1"]


def test_an_abandoned_install_with_no_answer_is_forgotten_after_the_install_timeout() -> None:
    state = fresh()
    base = state.base_modules[BASE]
    plan_base([pod("a", [("biz1", "1")])], base, context(0))
    plan_base([], base, context(1))
    assert "biz1:1" in base.abandoned
    plan_base([], base, context(120))
    assert base.abandoned == {}


def test_a_stale_uninstall_reply_is_not_reported() -> None:
    state = fresh()
    state.set_inventory(BASE, simple(("biz1:1", ACTIVE)))
    outcome = state.apply_operation(BASE, install_reply("biz1", "1", command="uninstallBiz"), 0)
    assert outcome is not None and not outcome.report
    assert "biz1:1" in (state.base_modules[BASE].inventory or {})
