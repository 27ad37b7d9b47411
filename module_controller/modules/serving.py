"""Which pod serves each module on a base, and the status every pod there should show.

Part of the planner, and like it free of I/O; of the base's bookkeeping it writes only
`reported` (the Events it plans). The lossless update's rule lives here: for each module
name the serving version is the one of the newest pod that can go Ready, i.e. whose every
module is its own and ACTIVATED; pods of other versions go NotReady, and every write that
takes a pod out of Ready is in `going_down`, carried out before anything else.
"""

from __future__ import annotations

from module_controller.modules import reasons
from module_controller.modules.plan import Plan, PlanContext, PodEvent, StatusWrite
from module_controller.modules.replacement import Intent
from module_controller.modules.replies import web_context_conflict, web_context_message
from module_controller.modules.spec import ModuleSpec
from module_controller.modules.state import BaseModules, InstalledModule, ModulePod
from module_controller.modules.status import (
    ModuleView,
    desired_status,
    invalid_status,
    is_ready,
    needs_write,
    not_ready_status,
    ready_condition,
    shows_ready,
)
from module_controller.modules.text import bounded, first_line
from module_controller.protocol.states import BizState

# How long a new pod's first status waits for its install's answer (see _first_status_waits).
FIRST_STATUS_WAIT_SECONDS = 1.0

# Per module name: (age, version) of the pod that serves it on the base.
Serving = dict[str, tuple[tuple[str, float, int, str], str]]


def broken_cause(installed: InstalledModule) -> tuple[str, str]:
    if web_context_conflict(installed.message):
        return reasons.WEB_CONTEXT_IN_USE, web_context_message(
            installed.key, installed.message or ""
        )
    said = first_line(installed.message) or "no message"
    return installed.reason or reasons.BROKEN, bounded(f"{installed.key} is BROKEN: {said}")


def view_of(
    spec: ModuleSpec, base: BaseModules, inventory: dict[str, InstalledModule]
) -> ModuleView:
    """The module a container wants, as far as this pod is concerned."""
    installed = inventory.get(spec.key)
    if installed is not None and base.urls.get(spec.key, spec.url) != spec.url:
        return ModuleView(
            spec,
            None,
            (
                reasons.REPLACING,
                f"{spec.key} on the base comes from another jar: it is uninstalled before "
                f"{spec.url} is installed",
            ),
        )
    if spec.key in base.uninstalling:
        return ModuleView(
            spec, None, (reasons.UNINSTALLING, f"{spec.key} is being uninstalled from the base")
        )
    failure = base.failures.get(spec.key)
    if installed is not None and installed.state is BizState.BROKEN:
        return ModuleView(spec, installed, broken_cause(installed))
    if installed is None and failure is not None and failure.url == spec.url:
        return ModuleView(spec, None, (failure.reason, failure.message))
    return ModuleView(spec, installed)


def _own_active(spec: ModuleSpec, base: BaseModules, inventory: dict[str, InstalledModule]) -> bool:
    view = view_of(spec, base, inventory)
    return view.installed is not None and view.installed.state is BizState.ACTIVATED


def serving_versions(
    pods: list[ModulePod], base: BaseModules, inventory: dict[str, InstalledModule]
) -> Serving:
    """Per module name, (age, version) of the newest pod that can go Ready.

    A pod counts only when every one of its modules is its own and ACTIVATED: an older pod
    must not go NotReady for a newer one that cannot take over (one of its modules failed
    to download), or the base would serve nothing.
    """
    serving: Serving = {}
    for pod in pods:  # oldest first: the last one found is the newest
        if all(_own_active(spec, base, inventory) for spec in pod.wants.modules):
            for spec in pod.wants.modules:
                serving[spec.name] = (pod.age, spec.version)
    return serving


def superseded(pod: ModulePod, serving: Serving) -> bool:
    """A newer pod's version serves one of this pod's modules (an older one never does:
    a newer pod whose module is not ACTIVATED yet shows its own module's state)."""
    for spec in pod.wants.modules:
        current = serving.get(spec.name)
        if current is not None and current[1] != spec.version and current[0] > pod.age:
            return True
    return False


def plan_statuses(
    plan: Plan,
    base: BaseModules,
    live: list[ModulePod],
    terminating: list[ModulePod],
    inventory: dict[str, InstalledModule],
    intent: Intent,
    serving: Serving,
    context: PlanContext,
) -> None:
    # A deleted pod stops serving before anything else happens on its base.
    going_down: list[StatusWrite] = [
        (
            pod,
            not_ready_status(pod, reasons.TERMINATING, "the pod is being deleted", context.wall),
        )
        for pod in sorted(terminating, key=lambda p: p.age)
        if shows_ready(pod.status)
    ]
    others: list[StatusWrite] = []
    for pod in live:
        views: list[ModuleView] = []
        blocker: tuple[str, str] | None = None
        if not pod.wants.valid:
            status = invalid_status(pod, context.base_ip, context.wall)
        else:
            views = [view_of(spec, base, inventory) for spec in pod.wants.modules]
            blocker = intent.displaced.get(pod.uid)
            if blocker is None and superseded(pod, serving):
                blocker = (reasons.SUPERSEDED, "a newer version of this module serves on the base")
            status = desired_status(pod, context.base_ip, views, blocker, context.wall)
            _pod_events(plan, base, pod, views, intent)
        if not needs_write(pod.status, status):
            continue
        if shows_ready(pod.status) and not is_ready(status):
            going_down.append((pod, status))
            continue
        # A displaced or superseded pod is told at once.
        waits_until = None if blocker else _first_status_waits(pod, views, base, context.now)
        if waits_until is not None:
            plan.wake(waits_until)
        else:
            others.append((pod, status))
    # Lists are already oldest first: `live` is sorted by creation time.
    plan.going_down = going_down
    plan.status_writes = others


def _first_status_waits(
    pod: ModulePod, views: list[ModuleView], base: BaseModules, now: float
) -> float | None:
    """Until when a new pod's first status waits for the answer to its install, or None.

    A module pod is written for the first time once its install is sent. An answer that
    comes within FIRST_STATUS_WAIT_SECONDS (most do) makes its first status Ready: had
    ModuleInstalling been written, the Ready write would wait for that one to finish. A
    pod showing no Ready condition is 0/1 either way; past the wait it shows
    ModuleInstalling, as it does for a slow install.
    """
    if not views or ready_condition(pod.status) is not None:
        return None
    sent_at: list[float] = []
    for view in views:
        if view.installed is not None and view.installed.state is BizState.ACTIVATED:
            continue
        sent = base.installing.get(view.spec.key)
        if view.installed is not None or view.waiting is not None or sent is None:
            return None  # something else than an install in flight: say it now
        sent_at.append(sent)
    if not sent_at:
        return None
    until = max(sent_at) + FIRST_STATUS_WAIT_SECONDS
    return until if now < until else None


def _pod_events(
    plan: Plan, base: BaseModules, pod: ModulePod, views: list[ModuleView], intent: Intent
) -> None:
    """Once per pod and cause: a BROKEN module, a module instance shared with another pod."""
    for view in views:
        installed = view.installed
        # Once per state record: the module going BROKEN again is news.
        if (
            installed is not None
            and installed.state is BizState.BROKEN
            and base.report(pod.uid, f"broken {view.spec.key}", str(installed.change_time_ms))
        ):
            reason, message = broken_cause(installed)
            plan.events.append(PodEvent(pod, "Warning", reason, message))
        if installed is None or installed.state is not BizState.ACTIVATED:
            continue
        if pod.observed_ready:
            # It was told when it joined the instance; after an operator restart
            # `reported` is empty and a pod already serving must not be told again.
            continue
        sharing = [
            p for p in intent.wanting.get(view.spec.key, []) if p.uid not in intent.displaced
        ]
        if len(sharing) < 2 or sharing[0].uid == pod.uid:
            continue  # the oldest pod is not told: the newer one joined it
        if base.report(pod.uid, f"shared {view.spec.key}", ""):
            plan.events.append(
                PodEvent(
                    pod,
                    "Normal",
                    reasons.SHARED_INSTANCE,
                    f"{view.spec.key} is one module instance on this base, shared with pod "
                    f"{sharing[0].name}: the pods are not independent replicas (spread them "
                    "over bases, e.g. with a topologySpreadConstraint on kubernetes.io/hostname)",
                )
            )
