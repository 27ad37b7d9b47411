"""What to do on one base, now: installs, uninstalls, pod deletions, ordered status writes.

A pure function of the base's pods, its reported modules and the clock, so every rule of
the user contract is a unit test away. It keeps its bookkeeping in BaseModules, and
changes only that: commands it sends (`installing`, `uninstalling`, `urls`), install
failures it starts over or forgets (`failures`), orphans and strays it times or clears
(`orphan_since`, `strays`), Events it reports once (`reported`), the jar URL it adopts for
a module found on the base (`urls`), and `previously_wanted`.

- a module is keyed by name:version per base; pods wanting the same module share one
  install (and are told so by a SharedModuleInstance Event), and it is uninstalled only
  when no live pod on the base wants it;
- a deleted pod goes NotReady first; then its modules are uninstalled, then the pod object
  is removed; past a bound it is removed anyway and the leftover is reported. A pod made
  by a controller is replaced at once, maybe onto the same base: its modules wait a few
  seconds (and while a replacement wanting them is unscheduled) before they go, so a
  replacement on the same base keeps the module installed;
- lossless update: for each module name the serving version is the one of the newest pod
  whose version is ACTIVATED; pods of other versions go NotReady, and every write that
  takes a pod out of Ready comes before every command and every write that puts one in
  (the sync carries `going_down` out first, then commands, then `status_writes`);
- a pod is Ready only when its own name:version, from its own jar, is ACTIVATED in the
  base's inventory (replacement.py: a new jar for the same key, uninstall-then-install);
- a failed install is retried with backoff (INSTALL_RETRY_SECONDS doubling up to
  INSTALL_RETRY_MAX_SECONDS), and at once when the pods' spec changes (a new jar URL, a new
  pod); a jar declaring another name:version, or a module BROKEN on the base, is not
  retried until the spec changes; an install with no answer is sent again after
  INSTALL_TIMEOUT_SECONDS;
- a jar that declares another name:version than its pod: what our install put on the base
  under the jar's name:version is uninstalled once, unless a pod on the base wants exactly
  that (then it stays, serving that pod); the pod that asked shows ModuleVersionMismatch.
  So the base ends clean and nothing is reinstalled in a loop.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any, Literal

from module_controller.modules import reasons
from module_controller.modules.replacement import Intent, intent_of
from module_controller.modules.replies import web_context_conflict, web_context_message
from module_controller.modules.spec import ModuleSpec
from module_controller.modules.state import (
    BaseModules,
    InstalledModule,
    InstallFailure,
    ModulePod,
    Uninstall,
)
from module_controller.modules.status import (
    ModuleView,
    desired_status,
    invalid_status,
    is_ready,
    needs_write,
    not_ready_status,
    shows_ready,
)
from module_controller.modules.text import bounded, first_line
from module_controller.protocol import BizModel
from module_controller.protocol.states import BizState
from module_controller.settings import Settings

EventType = Literal["Normal", "Warning"]

# A controller replaces a deleted pod within a second or two, maybe onto the same base.
REPLACEMENT_GRACE_SECONDS = 3.0
# ... and its replacement may wait that long for the scheduler.
REPLACEMENT_WAIT_SECONDS = 30.0

StatusWrite = tuple[ModulePod, dict[str, Any]]


@dataclass(frozen=True)
class PodEvent:
    pod: ModulePod
    type: EventType
    reason: str
    message: str


@dataclass
class Plan:
    installs: list[ModuleSpec] = field(default_factory=list)
    uninstalls: list[BizModel] = field(default_factory=list)
    # Writes that take pods out of Ready: carried out before any command or other write.
    going_down: list[StatusWrite] = field(default_factory=list)
    status_writes: list[StatusWrite] = field(default_factory=list)
    deletions: list[ModulePod] = field(default_factory=list)
    events: list[PodEvent] = field(default_factory=list)
    wake_at: float | None = None  # plan again then: a backoff or a grace period ends

    @property
    def writes(self) -> list[StatusWrite]:
        """Every status write, in the order they are made."""
        return self.going_down + self.status_writes

    @property
    def empty(self) -> bool:
        return not (
            self.installs
            or self.uninstalls
            or self.going_down
            or self.status_writes
            or self.deletions
            or self.events
        )

    def wake(self, at: float) -> None:
        self.wake_at = at if self.wake_at is None else min(self.wake_at, at)


@dataclass(frozen=True)
class PlanContext:
    settings: Settings
    base_ip: str
    base_ready: bool
    orphans_allowed: bool
    now: float  # monotonic seconds
    wall: datetime.datetime
    # Modules wanted by live pods the scheduler has not placed yet (anywhere).
    unscheduled_keys: frozenset[str] = frozenset()


def _uninstall_due(entry: Uninstall | None, settings: Settings) -> float:
    if entry is None:
        return 0.0
    backoff = min(settings.uninstall_retry_seconds * 2.0 ** (entry.attempts - 1), 60.0)
    return entry.last_sent + backoff


def plan_base(pods: list[ModulePod], base: BaseModules, context: PlanContext) -> Plan:
    settings = context.settings
    now = context.now
    plan = Plan()
    live = sorted((p for p in pods if not p.deleting), key=lambda p: p.age)
    terminating = [p for p in pods if p.deleting]
    served = [p for p in live if p.wants.valid]
    uids = {p.uid for p in pods}
    base.reported = {entry for entry in base.reported if entry[0] in uids}
    inventory = base.inventory
    intent = intent_of(served, base, inventory or {})

    for pod in live:
        if not pod.wants.valid:
            cause = bounded("; ".join(pod.wants.problems))
            if (pod.uid, cause) not in base.reported:
                base.reported.add((pod.uid, cause))
                plan.events.append(PodEvent(pod, "Warning", reasons.INVALID, cause))

    if inventory is not None and context.base_ready:
        retry_broken = _track_failures(base, intent, inventory, now)
        held = _held_keys(plan, terminating, intent, context)
        _plan_uninstalls(plan, base, inventory, intent, terminating, held, retry_broken, context)
        _plan_installs(plan, base, inventory, intent, context)
    if not context.base_ready:
        # We are its kubelet: nobody else says promptly that its pods cannot serve.
        message = "the base stopped sending heartbeats"
        plan.going_down = [
            (pod, not_ready_status(pod, reasons.BASE_DOWN, message, context.wall))
            for pod in live
            if shows_ready(pod.status)
        ]
    elif inventory is not None:
        _plan_statuses(plan, base, live, terminating, inventory, intent, context)
    base.previously_wanted = set(intent.wanted)

    for pod in terminating:
        if not context.base_ready:
            # Nobody can uninstall on a silent base: let the pod go now; if the base comes
            # back, what it still holds is an orphan and is cleaned up then.
            plan.deletions.append(pod)
            continue
        keys = {spec.key for spec in pod.wants.modules} if pod.wants.valid else set()
        leftover = sorted(
            k for k in keys if k not in intent.wanted and (inventory is None or k in inventory)
        )
        if not leftover:
            plan.deletions.append(pod)
            continue
        seen = pod.deletion_seen_at if pod.deletion_seen_at is not None else now
        waited = now - seen
        if waited >= settings.uninstall_give_up_seconds:
            plan.deletions.append(pod)
            plan.events.append(
                PodEvent(
                    pod,
                    "Warning",
                    "UninstallGaveUp",
                    f"removed after {waited:.0f}s although {', '.join(leftover)} could not be "
                    "uninstalled; the module is left on the base",
                )
            )
        else:
            plan.wake(seen + settings.uninstall_give_up_seconds)
    return plan


def _track_failures(
    base: BaseModules, intent: Intent, inventory: dict[str, InstalledModule], now: float
) -> set[str]:
    """Keep install failures current; returns the BROKEN modules to uninstall and retry.

    A failure is forgotten when no pod wants its module any more, and starts over when the
    pods' spec changes (another jar, or a pod that did not want it when it failed).
    """
    for key in list(base.failures):
        if key not in intent.wanted:
            del base.failures[key]
    retry_broken: set[str] = set()
    for key, spec in intent.wanted.items():
        pods = frozenset(p.uid for p in intent.wanting[key] if p.uid not in intent.displaced)
        installed = inventory.get(key)
        broken = installed is not None and installed.state is BizState.BROKEN
        if broken and key in base.uninstalling:
            retry_broken.add(key)  # on its way out for a retry: keep at it
            continue
        failure = base.failures.get(key)
        if failure is None and broken and installed is not None:
            reason, message = _broken_cause(installed)
            url = base.urls.get(key, spec.url)
            base.failures[key] = InstallFailure(reason, message, url, now, retry=False, pods=pods)
            continue
        if failure is None:
            continue
        if failure.pods is None:
            failure.pods = pods
        elif failure.url != spec.url or not pods <= failure.pods:
            del base.failures[key]
            if broken:
                retry_broken.add(key)
    return retry_broken


def _broken_cause(installed: InstalledModule) -> tuple[str, str]:
    if web_context_conflict(installed.message):
        return reasons.WEB_CONTEXT_IN_USE, web_context_message(
            installed.key, installed.message or ""
        )
    said = first_line(installed.message) or "no message"
    return installed.reason or reasons.BROKEN, bounded(f"{installed.key} is BROKEN: {said}")


def _held_keys(
    plan: Plan, terminating: list[ModulePod], intent: Intent, context: PlanContext
) -> set[str]:
    """Modules of deleted controller-made pods, kept a moment for their replacement."""
    held: set[str] = set()
    for pod in terminating:
        if not pod.owned or not pod.wants.valid or pod.deletion_seen_at is None:
            continue
        waited = context.now - pod.deletion_seen_at
        for spec in pod.wants.modules:
            if spec.key in intent.wanted:
                continue
            if waited < REPLACEMENT_GRACE_SECONDS:
                held.add(spec.key)
                plan.wake(pod.deletion_seen_at + REPLACEMENT_GRACE_SECONDS)
            elif spec.key in context.unscheduled_keys and waited < REPLACEMENT_WAIT_SECONDS:
                held.add(spec.key)
                # Placed elsewhere, the replacement does not wake this base: look again soon.
                plan.wake(min(context.now + 1.0, pod.deletion_seen_at + REPLACEMENT_WAIT_SECONDS))
    return held


def _plan_uninstalls(
    plan: Plan,
    base: BaseModules,
    inventory: dict[str, InstalledModule],
    intent: Intent,
    terminating: list[ModulePod],
    held: set[str],
    retry_broken: set[str],
    context: PlanContext,
) -> None:
    settings = context.settings
    now = context.now
    leaving = {spec.key for pod in terminating if pod.wants.valid for spec in pod.wants.modules}
    for key, installed in inventory.items():
        if key in intent.wanted and key not in intent.replaced and key not in retry_broken:
            base.orphan_since.pop(key, None)
            base.strays.pop(key, None)  # a pod wants it after all
            continue
        if key in intent.wanted or key in intent.evicted or key in base.strays:
            urgent = True  # another jar, another version, a BROKEN retry, our own stray
        elif key in held:
            continue  # a replacement pod may want it here
        elif key in leaving or key in base.previously_wanted or key in base.uninstalling:
            urgent = True  # a pod let go of it: uninstall now
        else:
            since = base.orphan_since.setdefault(key, now)
            urgent = (
                settings.uninstall_orphans
                and context.orphans_allowed
                and now - since >= settings.orphan_grace_seconds
            )
            if not urgent and settings.uninstall_orphans and context.orphans_allowed:
                plan.wake(since + settings.orphan_grace_seconds)
        if not urgent:
            continue
        due = _uninstall_due(base.uninstalling.get(key), settings)
        if now < due:
            plan.wake(due)
            continue
        base.installing.pop(key, None)
        entry = base.uninstalling.get(key)
        if entry is None:
            base.uninstalling[key] = Uninstall(first_sent=now, last_sent=now)
        else:
            entry.last_sent = now
            entry.attempts += 1
        plan.uninstalls.append(BizModel(biz_name=installed.name, biz_version=installed.version))


def _plan_installs(
    plan: Plan,
    base: BaseModules,
    inventory: dict[str, InstalledModule],
    intent: Intent,
    context: PlanContext,
) -> None:
    settings = context.settings
    now = context.now
    for key, spec in intent.wanted.items():
        if key in inventory or key in base.uninstalling:
            continue  # present in some state (a BROKEN one is not retried), or on its way out
        if any(k in inventory or k in base.uninstalling for k in intent.clear_first.get(key, ())):
            continue  # uninstall-then-install: the other versions go first
        sent = base.installing.get(key)
        if sent is not None and now - sent < settings.install_timeout_seconds:
            plan.wake(sent + settings.install_timeout_seconds)
            continue  # in flight; with no answer by then it is sent again
        failure = base.failures.get(key)
        if failure is not None:
            if not failure.retry:
                continue
            due = failure.due(settings.install_retry_seconds, settings.install_retry_max_seconds)
            if now < due:
                plan.wake(due)
                continue
        base.installing[key] = now
        base.urls[key] = spec.url
        plan.installs.append(spec)


def _view(spec: ModuleSpec, base: BaseModules, inventory: dict[str, InstalledModule]) -> ModuleView:
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
        return ModuleView(spec, installed, _broken_cause(installed))
    if installed is None and failure is not None and failure.url == spec.url:
        return ModuleView(spec, None, (failure.reason, failure.message))
    return ModuleView(spec, installed)


def _own_active(spec: ModuleSpec, base: BaseModules, inventory: dict[str, InstalledModule]) -> bool:
    view = _view(spec, base, inventory)
    return view.installed is not None and view.installed.state is BizState.ACTIVATED


Serving = dict[str, tuple[tuple[str, float, str], str]]


def _serving_versions(
    pods: list[ModulePod], base: BaseModules, inventory: dict[str, InstalledModule]
) -> Serving:
    """Per module name, (age, version) of the newest pod whose own module is ACTIVATED."""
    serving: Serving = {}
    for pod in pods:  # oldest first: the last one found is the newest
        for spec in pod.wants.modules:
            if _own_active(spec, base, inventory):
                serving[spec.name] = (pod.age, spec.version)
    return serving


def _superseded(pod: ModulePod, serving: Serving) -> bool:
    """A newer pod's version serves one of this pod's modules (an older one never does:
    a newer pod whose module is not ACTIVATED yet shows its own module's state)."""
    for spec in pod.wants.modules:
        current = serving.get(spec.name)
        if current is not None and current[1] != spec.version and current[0] > pod.age:
            return True
    return False


def _plan_statuses(
    plan: Plan,
    base: BaseModules,
    live: list[ModulePod],
    terminating: list[ModulePod],
    inventory: dict[str, InstalledModule],
    intent: Intent,
    context: PlanContext,
) -> None:
    serving = _serving_versions(
        [p for p in live if p.wants.valid and p.uid not in intent.displaced], base, inventory
    )
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
        if not pod.wants.valid:
            status = invalid_status(pod, context.base_ip, context.wall)
        else:
            views = [_view(spec, base, inventory) for spec in pod.wants.modules]
            blocker = intent.displaced.get(pod.uid)
            if blocker is None and _superseded(pod, serving):
                blocker = (reasons.SUPERSEDED, "a newer version of this module serves on the base")
            status = desired_status(pod, context.base_ip, views, blocker, context.wall)
            _pod_events(plan, base, pod, views, intent)
        if not needs_write(pod.status, status):
            continue
        if shows_ready(pod.status) and not is_ready(status):
            going_down.append((pod, status))
        else:
            others.append((pod, status))
    # Lists are already oldest first: `live` is sorted by creation time.
    plan.going_down = going_down
    plan.status_writes = others


def _pod_events(
    plan: Plan, base: BaseModules, pod: ModulePod, views: list[ModuleView], intent: Intent
) -> None:
    """Once per pod and cause: a BROKEN module, a module instance shared with another pod."""
    for view in views:
        installed = view.installed
        if installed is not None and installed.state is BizState.BROKEN:
            cause = f"broken {view.spec.key} {installed.change_time_ms}"
            if (pod.uid, cause) not in base.reported:
                base.reported.add((pod.uid, cause))
                reason, message = _broken_cause(installed)
                plan.events.append(PodEvent(pod, "Warning", reason, message))
        if installed is None or installed.state is not BizState.ACTIVATED:
            continue
        sharing = [
            p for p in intent.wanting.get(view.spec.key, []) if p.uid not in intent.displaced
        ]
        if len(sharing) < 2 or sharing[0].uid == pod.uid:
            continue  # the oldest pod is not told: the newer one joined it
        cause = f"shared {view.spec.key}"
        if (pod.uid, cause) not in base.reported:
            base.reported.add((pod.uid, cause))
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
