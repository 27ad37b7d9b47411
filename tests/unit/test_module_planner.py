"""The module planner's rules, one by one, without a cluster or a broker."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from module_controller.modules import reasons
from module_controller.modules.planner import PlanContext, plan_base
from module_controller.modules.serving import FIRST_STATUS_WAIT_SECONDS
from module_controller.modules.spec import pod_modules
from module_controller.modules.state import BaseModules, InstalledModule, ModulePod
from module_controller.modules.status import fingerprint, is_ready
from module_controller.protocol.states import BizState
from module_controller.settings import Settings

WALL = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.UTC)


def container(name: str, version: str | None, image: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "image": image or f"https://repo/{name}-{version}.jar"}
    if version is not None:
        body["env"] = [{"name": "BIZ_VERSION", "value": version}]
    return body


def pod(
    name: str,
    modules: list[tuple[str, str]],
    created: str = "2026-11-28T10:00:00Z",
    deleting: bool = False,
    ready: bool = False,
    containers: list[dict[str, Any]] | None = None,
) -> ModulePod:
    spec = {"containers": containers or [container(n, v) for n, v in modules]}
    status: dict[str, Any] = {}
    if ready:
        status = {"conditions": [{"type": "Ready", "status": "True"}]}
    return ModulePod(
        namespace="ns",
        name=name,
        uid=f"uid-{name}",
        node_name="node-1",
        created=created,
        deleting=deleting,
        wants=pod_modules({"spec": spec}),
        status=status,
        resource_version="1",
        deletion_seen_at=0.0 if deleting else None,
    )


def inventory(**states: BizState) -> dict[str, InstalledModule]:
    result = {}
    for key, state in states.items():
        name, version = key.split("__")
        result[f"{name}:{version}"] = InstalledModule(name, version, state, change_time_ms=1000)
    return result


def context(
    now: float = 0.0, ready: bool = True, listed: bool = True, **settings: Any
) -> PlanContext:
    return PlanContext(
        settings=Settings(**settings),
        base_ip="127.0.0.7",
        base_ready=ready,
        orphans_allowed=listed,
        now=now,
        wall=WALL,
    )


def test_nothing_is_sent_before_the_base_reports_its_modules() -> None:
    plan = plan_base([pod("a", [("biz1", "1")])], BaseModules(), context())
    assert plan.installs == [] and plan.uninstalls == [] and plan.writes == []


def test_a_scheduled_pod_installs_each_container_once() -> None:
    base = BaseModules(inventory={})
    pods = [pod("a", [("biz1", "1"), ("biz2", "1")]), pod("b", [("biz1", "1")])]
    plan = plan_base(pods, base, context())
    assert sorted(spec.key for spec in plan.installs) == ["biz1:1", "biz2:1"]
    again = plan_base(pods, base, context(now=5))
    assert again.installs == [], "an install in flight is not sent twice"
    late = plan_base(pods, base, context(now=500))
    assert sorted(spec.key for spec in late.installs) == ["biz1:1", "biz2:1"], "timed out"


def test_activated_modules_make_the_pod_running_and_ready() -> None:
    base = BaseModules(inventory=inventory(biz1__1=BizState.ACTIVATED))
    plan = plan_base([pod("a", [("biz1", "1")])], base, context())
    [(written, status)] = plan.writes
    assert written.name == "a" and is_ready(status)
    assert status["phase"] == "Running"
    assert status["podIP"] == status["hostIP"] == "127.0.0.7"
    [container_status] = status["containerStatuses"]
    assert container_status["state"]["running"]["startedAt"] == "1970-01-01T00:00:01Z"


@pytest.mark.parametrize(
    ("state", "phase", "kind"),
    [
        (BizState.RESOLVED, "Running", "running"),
        # Alone on the base, nothing would switch it on: it is installed again (see
        # test_module_replacement.py, which also checks a waiting DEACTIVATED one is Running).
        (BizState.DEACTIVATED, "Pending", "waiting"),
        (BizState.BROKEN, "Running", "waiting"),
        (BizState.STOPPED, "Pending", "terminated"),
    ],
)
def test_other_states_are_not_ready(state: BizState, phase: str, kind: str) -> None:
    base = BaseModules(inventory=inventory(biz1__1=state))
    plan = plan_base([pod("a", [("biz1", "1")])], base, context())
    [(_, status)] = plan.writes
    assert not is_ready(status)
    assert status["phase"] == phase
    assert kind in status["containerStatuses"][0]["state"]


def test_a_broken_module_is_reported_once_with_the_bases_message() -> None:
    base = BaseModules(
        inventory={
            "biz1:1": InstalledModule(
                "biz1",
                "1",
                BizState.BROKEN,
                reason="INSTALL_FAILED",
                message="boom",
                change_time_ms=5,
            )
        }
    )
    plan = plan_base([pod("a", [("biz1", "1")])], base, context())
    [event] = plan.events
    assert (event.type, event.reason) == ("Warning", "INSTALL_FAILED")
    assert "boom" in event.message
    waiting = plan.writes[0][1]["containerStatuses"][0]["state"]["waiting"]
    assert waiting == {"reason": "INSTALL_FAILED", "message": "biz1:1 is BROKEN: boom"}
    assert plan_base([pod("a", [("biz1", "1")])], base, context()).events == []
    assert plan.installs == [], "a broken module is not reinstalled by itself"


def test_an_unchanged_status_is_not_written_again() -> None:
    base = BaseModules(inventory=inventory(biz1__1=BizState.ACTIVATED))
    first = plan_base([pod("a", [("biz1", "1")])], base, context())
    written = first.writes[0][1]
    settled = pod("a", [("biz1", "1")])
    settled.status = written
    assert plan_base([settled], base, context(now=9)).writes == []
    assert fingerprint(written) == fingerprint(settled.status)


def test_lossless_update_old_pod_not_ready_before_new_pod_ready() -> None:
    old = pod("old", [("biz1", "1")], created="2026-11-28T10:00:00Z", ready=True)
    new = pod("new", [("biz1", "2")], created="2026-11-28T11:00:00Z")
    base = BaseModules(
        inventory=inventory(biz1__1=BizState.DEACTIVATED, biz1__2=BizState.ACTIVATED)
    )
    plan = plan_base([new, old], base, context())
    order = [(p.name, is_ready(s)) for p, s in plan.writes]
    assert order == [("old", False), ("new", True)]


def test_a_superseded_version_goes_not_ready_even_if_still_activated() -> None:
    old = pod("old", [("biz1", "1")], created="2026-11-28T10:00:00Z", ready=True)
    new = pod("new", [("biz1", "2")], created="2026-11-28T11:00:00Z")
    base = BaseModules(inventory=inventory(biz1__1=BizState.ACTIVATED, biz1__2=BizState.ACTIVATED))
    plan = plan_base([new, old], base, context())
    statuses = {p.name: s for p, s in plan.writes}
    assert not is_ready(statuses["old"])
    assert statuses["old"]["conditions"][2]["reason"] == "SupersededByNewerVersion"
    assert is_ready(statuses["new"])
    assert [p.name for p, _ in plan.writes] == ["old", "new"]


def test_rollback_makes_the_newest_pod_serve_the_older_version() -> None:
    current = pod("v2", [("biz1", "2")], created="2026-11-28T10:00:00Z", ready=True)
    rollback = pod("v1-again", [("biz1", "1")], created="2026-11-28T11:00:00Z")
    base = BaseModules(
        inventory=inventory(biz1__1=BizState.ACTIVATED, biz1__2=BizState.DEACTIVATED)
    )
    statuses = {p.name: s for p, s in plan_base([current, rollback], base, context()).writes}
    assert is_ready(statuses["v1-again"]) and not is_ready(statuses["v2"])


def test_a_deleted_pod_is_uninstalled_then_removed() -> None:
    base = BaseModules(inventory=inventory(biz1__1=BizState.ACTIVATED))
    leaving = pod("a", [("biz1", "1")], deleting=True)
    plan = plan_base([leaving], base, context())
    assert [biz.key for biz in plan.uninstalls] == ["biz1:1"]
    assert plan.deletions == [], "removed only once the module is gone"
    base.inventory = {}
    assert plan_base([leaving], base, context(now=1)).deletions == [leaving]


def test_a_module_shared_with_a_live_pod_is_not_uninstalled() -> None:
    base = BaseModules(inventory=inventory(biz1__1=BizState.ACTIVATED))
    leaving = pod("old", [("biz1", "1")], deleting=True)
    staying = pod("new", [("biz1", "1")], created="2026-11-28T11:00:00Z")
    plan = plan_base([leaving, staying], base, context())
    assert plan.uninstalls == []
    assert plan.deletions == [leaving], "its module lives on for the other pod"


def test_a_failing_uninstall_backs_off_and_gives_up_after_the_bound() -> None:
    base = BaseModules(inventory=inventory(biz1__1=BizState.ACTIVATED))
    leaving = pod("a", [("biz1", "1")], deleting=True)

    def at(now: float) -> PlanContext:
        return context(now=now, uninstall_retry_seconds=5, uninstall_give_up_seconds=100)

    sent = [t for t in range(0, 99) if plan_base([leaving], base, at(t)).uninstalls]
    assert sent == [0, 5, 15, 35, 75], "retries double"
    final = plan_base([leaving], base, at(100))
    assert final.deletions == [leaving]
    assert [e.reason for e in final.events] == ["UninstallGaveUp"]
    assert "biz1:1" in final.events[0].message


def test_orphans_wait_for_the_listing_and_the_grace_period() -> None:
    base = BaseModules(inventory=inventory(stray__1=BizState.ACTIVATED))
    assert plan_base([], base, context(now=0, listed=False)).uninstalls == []
    assert plan_base([], base, context(now=100, listed=False)).uninstalls == [], (
        "never before every module pod has been listed"
    )
    fresh = BaseModules(inventory=inventory(stray__1=BizState.ACTIVATED))
    assert plan_base([], fresh, context(now=0, orphan_grace_seconds=60)).uninstalls == []
    assert plan_base([], fresh, context(now=59, orphan_grace_seconds=60)).uninstalls == []
    later = plan_base([], fresh, context(now=60, orphan_grace_seconds=60))
    assert [biz.key for biz in later.uninstalls] == ["stray:1"]


def test_orphans_stay_when_the_setting_says_so() -> None:
    base = BaseModules(inventory=inventory(stray__1=BizState.ACTIVATED))
    plan_base([], base, context(now=0, uninstall_orphans=False))
    assert plan_base([], base, context(now=1000, uninstall_orphans=False)).uninstalls == []


def test_a_changed_image_replaces_the_module_uninstall_first() -> None:
    base = BaseModules(inventory={})
    first = pod("a", [("biz1", "1")])
    plan_base([first], base, context())
    base.inventory = inventory(biz1__1=BizState.ACTIVATED)
    changed = pod("a", [], containers=[container("biz1", "1", "https://repo/other.jar")])
    plan = plan_base([changed], base, context(now=1))
    assert [biz.key for biz in plan.uninstalls] == ["biz1:1"]
    assert plan.installs == [], "the new jar waits until the old one is gone"
    base.inventory = {}
    base.uninstalling.clear()
    plan = plan_base([changed], base, context(now=2))
    assert [spec.url for spec in plan.installs] == ["https://repo/other.jar"]


def test_an_invalid_pod_gets_an_explaining_status_an_event_and_no_command() -> None:
    broken = pod(
        "bad",
        [],
        containers=[
            container("biz1", None),
            container("Bad Name", "1"),
            container("biz3", "1", "biz3:latest"),
        ],
    )
    base = BaseModules(inventory={})
    plan = plan_base([broken], base, context())
    assert plan.installs == []
    [(_, status)] = plan.writes
    message = status["conditions"][-1]["message"]
    assert "BIZ_VERSION" in message and "Bad Name" in message and "not a URL" in message
    assert [e.reason for e in plan.events] == ["InvalidModuleSpec"]


def test_pods_on_a_silent_base_go_not_ready() -> None:
    base = BaseModules(inventory=inventory(biz1__1=BizState.ACTIVATED))
    serving = pod("a", [("biz1", "1")], ready=True)
    plan = plan_base([serving], base, context(ready=False))
    [(_, status)] = plan.writes
    assert not is_ready(status)
    assert status["conditions"][-1]["reason"] == "BaseNotReady"
    assert plan.installs == [] and plan.uninstalls == []


def test_a_deleted_pod_on_a_silent_base_is_removed_at_once() -> None:
    base = BaseModules(inventory=inventory(biz1__1=BizState.ACTIVATED))
    leaving = pod("a", [("biz1", "1")], deleting=True)
    plan = plan_base([leaving], base, context(ready=False))
    assert plan.deletions == [leaving]
    assert plan.uninstalls == [], "nothing is sent to a base that does not answer"


def test_a_new_pods_first_status_waits_a_moment_for_its_install_answer() -> None:
    """An answer within the wait makes Ready the pod's first write: had ModuleInstalling
    been written with the install, the Ready write would queue behind it."""
    base = BaseModules(inventory={})
    new = pod("a", [("biz1", "1")])
    sent = plan_base([new], base, context(now=10))
    assert [spec.key for spec in sent.installs] == ["biz1:1"]
    assert sent.writes == [], "nothing to say yet that the answer will not say soon"
    assert sent.wake_at == 10 + FIRST_STATUS_WAIT_SECONDS
    base.inventory = inventory(biz1__1=BizState.ACTIVATED)
    base.installing.clear()
    answered = plan_base([new], base, context(now=10.05))
    assert [(p.name, is_ready(s)) for p, s in answered.writes] == [("a", True)]


def test_a_slow_install_shows_module_installing_once_the_wait_is_over() -> None:
    base = BaseModules(inventory={})
    new = pod("a", [("biz1", "1")])
    plan_base([new], base, context(now=10))
    assert plan_base([new], base, context(now=10.5)).writes == []
    [(_, status)] = plan_base([new], base, context(now=10 + FIRST_STATUS_WAIT_SECONDS)).writes
    assert not is_ready(status)
    assert status["containerStatuses"][0]["state"]["waiting"]["reason"] == reasons.INSTALLING


def test_a_pod_that_was_told_before_is_told_with_the_install() -> None:
    base = BaseModules(inventory={})
    told = pod("a", [("biz1", "1")])
    told.status = {"conditions": [{"type": "Ready", "status": "False", "reason": "BaseDown"}]}
    plan = plan_base([told], base, context(now=10))
    assert [spec.key for spec in plan.installs] == ["biz1:1"]
    [(_, status)] = plan.writes
    assert status["containerStatuses"][0]["state"]["waiting"]["reason"] == reasons.INSTALLING
