"""Failed installs back off; a jar of another version is not a Ready pod; what pods say."""

from __future__ import annotations

from module_controller.modules import reasons
from module_controller.modules.planner import plan_base
from module_controller.modules.state import BaseModules, InstallFailure, ModuleState
from module_controller.modules.status import is_ready
from module_controller.protocol.states import BizState
from tests.unit.modules_support import (
    NEWER,
    condition,
    context,
    download_failed,
    install_reply,
    inventory,
    jar,
    pod,
    settle,
    simple,
)

BASE = "base-1"


def fresh(*pods_wanting: str) -> ModuleState:
    state = ModuleState()
    state.set_inventory(BASE, ())
    return state


def test_a_failed_download_is_retried_with_backoff_not_in_a_storm() -> None:
    """Real base: FAILED, nothing left on the base; today's loop resent every 180 ms."""
    state = fresh()
    wanting = [pod("a", [("biz1", "1")])]
    sent = []
    now = 0.0
    while now < 60:
        state.set_inventory(BASE, ())  # the base never lists it: a failed download
        plan = plan_base(wanting, state.base_modules[BASE], context(now))
        if plan.installs:
            sent.append(now)
            state.apply_operation(BASE, download_failed("biz1", "1"), now + 0.1)
        now = round(now + 0.2, 1)
    assert sent == [0.0, 5.2, 15.4, 35.6], "5 s, doubling, counted from each failure"
    assert len(sent) <= 5, "a handful a minute"


def test_the_backoff_stops_growing_at_the_maximum() -> None:
    failure = InstallFailure("InstallFailed", "boom", "u", at=100.0, attempts=30)
    assert failure.due(5, 300) == 400.0


def test_the_pod_says_the_bases_first_line_once_not_per_retry() -> None:
    state = fresh()
    wanting = pod("a", [("biz1", "1")])
    plan_base([wanting], state.base_modules[BASE], context(0))
    outcome = state.apply_operation(BASE, download_failed("biz1", "1"), 0.1)
    assert outcome is not None and not outcome.ok
    assert outcome.reason == reasons.INSTALL_FAILED
    assert "java.io.FileNotFoundException: /opt/missing.jar" in outcome.message
    assert "\n" not in outcome.message and "\tat" not in outcome.message
    plan = plan_base([wanting], state.base_modules[BASE], context(1))
    [(_, status)] = plan.writes
    ready = condition(status)
    assert (ready["status"], ready["reason"]) == ("False", reasons.INSTALL_FAILED)
    assert "FileNotFoundException" in ready["message"] and "\tat" not in ready["message"]
    waiting = status["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == reasons.INSTALL_FAILED
    settle(plan)
    retry = plan_base([wanting], state.base_modules[BASE], context(6))
    assert [s.key for s in retry.installs] == ["biz1:1"]
    assert retry.writes == [], "a retry in flight does not change what the pod says"
    again = state.apply_operation(BASE, download_failed("biz1", "1"), 6.1)
    assert again is not None and again.message == outcome.message, "one aggregated Event"
    assert plan_base([wanting], state.base_modules[BASE], context(7)).writes == []


def test_a_new_jar_or_a_new_pod_is_tried_at_once() -> None:
    state = fresh()
    first = pod("a", [("biz1", "1")])
    plan_base([first], state.base_modules[BASE], context(0))
    state.apply_operation(BASE, download_failed("biz1", "1"), 0.1)
    assert plan_base([first], state.base_modules[BASE], context(1)).installs == []
    fixed = pod("a", [("biz1", "1")], images={"biz1": "file:///opt/fixed.jar"})
    plan = plan_base([fixed], state.base_modules[BASE], context(2))
    assert [s.url for s in plan.installs] == ["file:///opt/fixed.jar"], "new URL, no wait"
    state.apply_operation(BASE, download_failed("biz1", "1"), 2.1)
    assert plan_base([fixed], state.base_modules[BASE], context(3)).installs == []
    other = pod("b", [("biz1", "1")], NEWER, images={"biz1": "file:///opt/fixed.jar"})
    plan = plan_base([fixed, other], state.base_modules[BASE], context(4))
    assert [s.key for s in plan.installs] == ["biz1:1"], "a new pod starts over"


def test_an_install_without_an_answer_is_sent_again_after_the_timeout() -> None:
    state = fresh()
    wanting = [pod("a", [("biz1", "1")])]
    sent = []
    for now in range(0, 250, 5):
        state.set_inventory(BASE, ())  # the reply was lost; the base lists nothing
        if plan_base(
            wanting, state.base_modules[BASE], context(now, install_timeout_seconds=120)
        ).installs:
            sent.append(now)
    assert sent == [0, 120, 240]


def test_a_module_seen_while_being_set_up_that_vanishes_is_not_resent_at_once() -> None:
    state = fresh()
    wanting = [pod("a", [("biz1", "1")])]
    assert plan_base(wanting, state.base_modules[BASE], context(0)).installs
    state.set_inventory(BASE, simple(("biz1:1", BizState.RESOLVED)))
    plan_base(wanting, state.base_modules[BASE], context(1))
    state.set_inventory(BASE, ())  # its start failed and the base dropped it
    assert plan_base(wanting, state.base_modules[BASE], context(2)).installs == [], (
        "the install's answer is still to come"
    )


def test_success_of_another_version_is_not_ready_and_says_which_version_the_jar_is() -> None:
    """Real base: asked for biz1:0.0.3, the jar says 0.0.1: SUCCESS, bizInfos biz1 0.0.1."""
    state = fresh()
    url = jar("biz1", "0.0.3")
    wanting = pod("a", [("biz1", "0.0.3")])
    plan_base([wanting], state.base_modules[BASE], context(0))
    reply = install_reply("biz1", "0.0.3", biz_infos=[("biz1", "0.0.1", "ACTIVATED")])
    outcome = state.apply_operation(BASE, reply, 0.5)
    assert outcome is not None and not outcome.ok
    assert outcome.reason == reasons.VERSION_MISMATCH
    assert outcome.message == f"the jar at {url} declares biz1:0.0.1, the pod asks for biz1:0.0.3"
    base = state.base_modules[BASE]
    assert base.inventory is not None and "biz1:0.0.3" not in base.inventory, (
        "a top-level SUCCESS is not an ACTIVATED module"
    )
    state.set_inventory(BASE, simple(("biz1:0.0.1", BizState.ACTIVATED)))
    plan = plan_base([wanting], base, context(1))
    [(_, status)] = plan.writes
    assert not is_ready(status)
    assert condition(status)["reason"] == reasons.VERSION_MISMATCH
    assert [b.key for b in plan.uninstalls] == ["biz1:0.0.1"], "our stray is removed once"
    assert plan.installs == []
    state.set_inventory(BASE, ())
    later = [plan_base([wanting], base, context(t)) for t in range(2, 1000, 7)]
    assert all(p.installs == [] and p.uninstalls == [] for p in later), "no churn, no storm"


def test_repeat_biz_naming_another_version_is_a_mismatch_too() -> None:
    state = fresh()
    wanting = pod("a", [("biz1", "0.0.3")])
    plan_base([wanting], state.base_modules[BASE], context(0))
    reply = install_reply(
        "biz1",
        "0.0.3",
        "FAILED",
        data_code="REPEAT_BIZ",
        message="install biz not success!",
        data_message="Biz: biz1:0.0.1 has been installed or registered.",
    )
    outcome = state.apply_operation(BASE, reply, 0.5)
    assert outcome is not None and outcome.reason == reasons.VERSION_MISMATCH
    state.set_inventory(BASE, simple(("biz1:0.0.1", BizState.ACTIVATED)))
    assert plan_base([wanting], state.base_modules[BASE], context(500)).installs == []


def test_a_stray_that_another_pod_wants_is_kept() -> None:
    state = fresh()
    asking = pod("a", [("biz1", "0.0.3")], NEWER)
    keeping = pod("b", [("biz1", "0.0.1")], images={"biz1": jar("biz1", "0.0.3")})
    plan_base([keeping, asking], state.base_modules[BASE], context(0))
    reply = install_reply("biz1", "0.0.3", biz_infos=[("biz1", "0.0.1", "ACTIVATED")])
    state.apply_operation(BASE, reply, 0.5)
    state.set_inventory(BASE, simple(("biz1:0.0.1", BizState.ACTIVATED)))
    plan = plan_base([keeping, asking], state.base_modules[BASE], context(1))
    assert plan.uninstalls == []


def test_repeat_biz_of_the_asked_module_waits_for_the_inventory() -> None:
    state = fresh()
    wanting = [pod("a", [("biz1", "1")])]
    plan_base(wanting, state.base_modules[BASE], context(0))
    reply = install_reply(
        "biz1",
        "1",
        "FAILED",
        data_code="REPEAT_BIZ",
        data_message="Biz: biz1:1 has been installed or registered.",
    )
    outcome = state.apply_operation(BASE, reply, 0.5)
    assert outcome is not None and not outcome.report
    assert plan_base(wanting, state.base_modules[BASE], context(1)).installs == []


def test_a_lock_conflict_is_an_install_still_running_not_a_failure() -> None:
    state = fresh()
    wanting = [pod("a", [("biz1", "1")])]
    plan_base(wanting, state.base_modules[BASE], context(0))
    text = "FAILED:biz1:1 installBiz conflict, exist unfinished command(installBiz) for this biz"
    outcome = state.apply_operation(
        BASE, install_reply("biz1", "1", "FAILED", message=text, data=False), 130
    )
    assert outcome is not None and not outcome.report
    assert state.base_modules[BASE].failures == {}
    assert plan_base(wanting, state.base_modules[BASE], context(131)).installs == []


def test_a_web_context_conflict_tells_the_user_to_set_the_annotation() -> None:
    old = pod("old", [("biz1", "1")], ready=True)
    new = pod("new", [("biz1", "2")], NEWER)
    trace = (
        "java.lang.RuntimeException: Failed to start web server\n\tat x.y(Z.java:1)\n"
        "Caused by: java.lang.IllegalArgumentException: Child name [/biz1] is not unique"
    )
    base = BaseModules(
        inventory={
            **inventory(("biz1:1", BizState.ACTIVATED)),
            **inventory(("biz1:2", BizState.BROKEN), message=trace),
        }
    )
    plan = plan_base([old, new], base, context(0))
    statuses = {p.name: s for p, s in plan.writes}
    ready = condition(statuses["new"])
    assert ready["reason"] == reasons.WEB_CONTEXT_IN_USE
    assert "Child name [/biz1] is not unique" in ready["message"]
    assert "module-controller.koupleless.io/upgrade: uninstall-then-install" in ready["message"]
    assert [e.reason for e in plan.events] == [reasons.WEB_CONTEXT_IN_USE]
    assert is_ready(statuses.get("old", old.status)), "the old version keeps serving"


def test_a_broken_module_is_retried_only_when_a_new_pod_wants_it() -> None:
    state = fresh()
    first = pod("a", [("biz1", "1")])
    base = state.base_modules[BASE]
    state.set_inventory(BASE, simple(("biz1:1", BizState.BROKEN)))
    assert plan_base([first], base, context(0)).uninstalls == []
    assert plan_base([first], base, context(900)).installs == [], "BROKEN is not retried"
    second = pod("b", [("biz1", "1")], NEWER)
    plan = plan_base([first, second], base, context(901))
    assert [b.key for b in plan.uninstalls] == ["biz1:1"], "a new spec: out, then in again"
    state.set_inventory(BASE, ())
    assert [s.key for s in plan_base([first, second], base, context(902)).installs] == ["biz1:1"]


def test_base_text_in_messages_is_one_bounded_line() -> None:
    state = fresh()
    wanting = pod("a", [("biz1", "1")])
    plan_base([wanting], state.base_modules[BASE], context(0))
    huge = "java.lang.IllegalStateException: " + "x" * 100_000 + "\n\tat a.b(C.java:1)"
    reply = install_reply("biz1", "1", "FAILED", message=huge, data_message=huge)
    outcome = state.apply_operation(BASE, reply, 0.1)
    assert outcome is not None and len(outcome.message) <= 1000
    [(_, status)] = plan_base([wanting], state.base_modules[BASE], context(1)).writes
    assert all(len(c["message"]) <= 1000 for c in status["conditions"])


def test_an_empty_state_record_from_older_sofaark_is_read() -> None:
    state = fresh()
    info = simple(("biz1:1", BizState.ACTIVATED))[0].model_copy(
        update={"latest_state_record": None}
    )
    state.set_inventory(BASE, (info,))
    [(_, status)] = plan_base(
        [pod("a", [("biz1", "1")])], state.base_modules[BASE], context(0)
    ).writes
    assert is_ready(status)


def test_a_failure_of_a_module_nobody_wants_any_more_is_forgotten() -> None:
    state = fresh()
    wanting = pod("a", [("biz1", "1")])
    plan_base([wanting], state.base_modules[BASE], context(0))
    state.apply_operation(BASE, download_failed("biz1", "1"), 0.1)
    base: BaseModules = state.base_modules[BASE]
    assert "biz1:1" in base.failures
    plan_base([], base, context(1))
    assert base.failures == {}


def test_a_success_without_biz_infos_waits_for_the_inventory_to_go_ready() -> None:
    state = fresh()
    wanting = pod("a", [("biz1", "1")])
    plan_base([wanting], state.base_modules[BASE], context(0))
    outcome = state.apply_operation(BASE, install_reply("biz1", "1"), 0.5)
    assert outcome is not None and outcome.ok
    plan = plan_base([wanting], state.base_modules[BASE], context(1))
    assert not any(is_ready(s) for _, s in plan.writes), "a top-level SUCCESS proves nothing"
    assert plan.installs == [], "and it is not sent again meanwhile"
    state.set_inventory(BASE, simple(("biz1:1", BizState.ACTIVATED)))
    [(_, status)] = plan_base([wanting], state.base_modules[BASE], context(2)).writes
    assert is_ready(status)
