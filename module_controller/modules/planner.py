"""What to do on one base, now: installs, uninstalls, pod deletions, ordered status writes.

`plan_base` decides from the base's pods, its reported modules and the clock, with no I/O,
so every rule of the user contract is a unit test away. The planner decides the order and
modules/sync.py carries it out, patch by patch, each awaited before the next: first the
writes that take pods out of Ready (`going_down`), then the uninstalls and installs, then
the other writes (`status_writes`) — the NotReady-before-Ready rule: the API server sees an
old pod go NotReady before its module is uninstalled and before a new pod goes Ready.

It is not pure: it writes the base's bookkeeping (BaseModules, see `plan_base`), because
a plan is carried out once it is made. It never changes the pods it is given (ModulePod
objects and their status dicts are only read; the statuses in a plan are new dicts).

- a module is keyed by name:version per base; pods wanting the same module share one
  install (and are told so by a SharedModuleInstance Event), and it is uninstalled only
  when no live pod on the base wants it;
- a deleted pod goes NotReady first; then its modules are uninstalled, then the pod object
  is removed; past a bound it is removed anyway and the leftover is reported. A pod made
  by a controller is replaced at once, maybe onto the same base: its modules wait a few
  seconds (and while a replacement wanting them is unscheduled) before they go, so a
  replacement on the same base keeps the module installed — unless a newer version
  superseded the pod on its base (a rollout, which makes no replacement). What an install
  sent for a pod that left meanwhile puts on the base is uninstalled at once;
- lossless update: for each module name the serving version is the one of the newest pod
  that can go Ready (all its modules ACTIVATED); pods of other versions go NotReady (see
  serving.py), and every write that takes a pod out of Ready comes before every command
  and every write that puts one in (the sync carries `going_down` out first, then
  commands, then `status_writes`);
- a pod is Ready only when its own name:version, from its own jar, is ACTIVATED in the
  base's inventory (replacement.py: a new jar for the same key, uninstall-then-install);
- a version left DEACTIVATED while its pod is the newest of its name again (the newer pod
  left: a rollback) is uninstalled and installed again once the active versions have left
  (replacement.py), with the install backoff should the base start it DEACTIVATED again;
- a failed install is retried with backoff (INSTALL_RETRY_SECONDS doubling up to
  INSTALL_RETRY_MAX_SECONDS), and at once when the pods' spec changes (a new jar URL, a new
  pod); a jar declaring another name:version, or a module BROKEN on the base, is not
  retried until the spec changes (or, for BROKEN, until the base no longer lists it: a
  restarted base); an install with no answer is sent again after INSTALL_TIMEOUT_SECONDS;
- a jar that declares another name:version than its pod: what our install put on the base
  under the jar's name:version is uninstalled once, unless a pod on the base wants exactly
  that (then it stays, serving that pod); the pod that asked shows ModuleVersionMismatch.
  So the base ends clean and nothing is reinstalled in a loop.
"""

from __future__ import annotations

from module_controller.k8s_events import EventType
from module_controller.modules import reasons
from module_controller.modules.plan import Plan, PlanContext, PodEvent, StatusWrite
from module_controller.modules.replacement import Intent, intent_of
from module_controller.modules.serving import (
    Serving,
    broken_cause,
    plan_statuses,
    serving_versions,
    superseded,
)
from module_controller.modules.state import (
    BaseModules,
    InstalledModule,
    InstallFailure,
    ModulePod,
    Uninstall,
)
from module_controller.modules.status import not_ready_status, shows_ready
from module_controller.modules.text import bounded
from module_controller.protocol import BizModel
from module_controller.protocol.states import BizState
from module_controller.settings import Settings

# Re-exported: callers and tests name the plan's types here.
__all__ = ["EventType", "Plan", "PlanContext", "PodEvent", "StatusWrite", "plan_base"]

# A controller replaces a deleted pod within a second or two, maybe onto the same base.
REPLACEMENT_GRACE_SECONDS = 3.0
# ... and its replacement may wait that long for the scheduler.
REPLACEMENT_WAIT_SECONDS = 30.0


def commands_sent_at(plan: Plan, base: BaseModules, at: float) -> None:
    """The plan's commands go out at `at`, later than planned (they waited for the base's
    earlier writes): their retries, and first statuses' waits, count from then."""
    for biz in plan.uninstalls:
        entry = base.uninstalling.get(biz.key)
        if entry is not None:
            entry.last_sent = at
    for spec in plan.installs:
        if spec.key in base.installing:
            base.installing[spec.key] = at


def _uninstall_due(entry: Uninstall | None, settings: Settings) -> float:
    if entry is None:
        return 0.0
    backoff = min(settings.uninstall_retry_seconds * 2.0 ** (entry.attempts - 1), 60.0)
    return entry.last_sent + backoff


def plan_base(pods: list[ModulePod], base: BaseModules, context: PlanContext) -> Plan:
    """The plan for one base, given all its module pods (live and terminating).

    The sync carries out every plan it gets, so what is decided is recorded as done: call
    it from the base's one worker, and carry the plan out (a plan dropped loses its
    commands until they time out, and its Events for good). It writes into `base`:

    - `installing` / `uninstalling`: the commands it plans, as sent now (with `urls`, the
      jar of each install), so the next plan does not send them again before they time
      out or are answered;
    - `abandoned`: installs in flight whose module no pod wants any more (and back);
    - `failures`: forgotten when no pod wants the module or its pods' spec changed,
      recorded for a module the base lists BROKEN, and which pods wanted it;
    - `orphan_since` / `strays`: when a module no pod wants was first seen, cleared when a
      pod wants it;
    - `urls`: the jar adopted for a module found on the base (replacement.intent_of);
    - `reported`: the Events it plans, so each is planned once; pods not among `pods` are
      forgotten there;
    - `previously_wanted`: the modules wanted now, to tell next time what pods let go of.

    `base.inventory` is only read: ModuleState changes it, from what the base says.
    """
    settings = context.settings
    now = context.now
    plan = Plan()
    live = sorted((p for p in pods if not p.deleting), key=lambda p: p.age)
    terminating = [p for p in pods if p.deleting]
    served = [p for p in live if p.wants.valid]
    base.keep_reports_of({p.uid for p in pods})
    inventory = base.inventory
    intent = intent_of(served, base, inventory or {})

    for pod in live:
        if not pod.wants.valid:
            cause = bounded("; ".join(pod.wants.problems))
            if base.report(pod.uid, "invalid", cause):
                plan.events.append(PodEvent(pod, "Warning", reasons.INVALID, cause))

    contenders = [p for p in served if p.uid not in intent.displaced]
    if inventory is not None and context.base_ready:
        # Wanted modules to uninstall now and install again: BROKEN ones, DEACTIVATED ones.
        to_reinstall = _track_failures(base, intent, inventory, now)
        serving = serving_versions(contenders, base, inventory)
        held = _held_keys(plan, terminating, intent, serving, context)
        _track_abandoned(base, intent, held, inventory, context)
        to_reinstall |= _due_reinstalls(plan, base, intent, inventory, held, context)
        _plan_uninstalls(plan, base, inventory, intent, terminating, held, to_reinstall, context)
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
        # Who serves is decided on the bookkeeping as this plan leaves it (an uninstall it
        # starts takes its module away from the pods on it).
        serving = serving_versions(contenders, base, inventory)
        plan_statuses(plan, base, live, terminating, inventory, intent, serving, context)
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
            reason, message = broken_cause(installed)
            url = base.urls.get(key, spec.url)
            base.failures[key] = InstallFailure(
                reason, message, url, now, retry=False, pods=pods, broken=True
            )
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


def _held_keys(
    plan: Plan,
    terminating: list[ModulePod],
    intent: Intent,
    serving: Serving,
    context: PlanContext,
) -> set[str]:
    """Modules of deleted controller-made pods, kept a moment for their replacement.

    Not those of a pod that a newer version superseded on this base: that is a rollout
    away from its version, whose controller is scaling down and makes no replacement.
    Holding them only delays the removal (and the rollout) by the grace; should one come
    after all (its pod deleted by hand mid-rollout), its module is installed again.
    """
    held: set[str] = set()
    for pod in terminating:
        if not pod.owned or not pod.wants.valid or pod.deletion_seen_at is None:
            continue
        if superseded(pod, serving):
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


def _due_reinstalls(
    plan: Plan,
    base: BaseModules,
    intent: Intent,
    inventory: dict[str, InstalledModule],
    held: set[str],
    context: PlanContext,
) -> set[str]:
    """Versions left DEACTIVATED to uninstall now and install again (replacement.py).

    Not while a version still active is held for a replacement pod (it may serve here
    again), and with backoff on a base that keeps starting the version DEACTIVATED.
    """
    settings = context.settings
    for key in list(base.reinstalls):
        installed = inventory.get(key)
        if key not in intent.wanted or (
            installed is not None and installed.state is BizState.ACTIVATED
        ):
            del base.reinstalls[key]
    due: set[str] = set()
    for key in sorted(intent.reinstalled):
        active = intent.clear_first.get(key, set())
        if key in base.uninstalling or active & held:
            continue
        tries, last = base.reinstalls.get(key, (0, 0.0))
        if tries:
            backoff = settings.install_retry_seconds * 2.0 ** (tries - 1)
            wait_until = last + min(backoff, settings.install_retry_max_seconds)
            if context.now < wait_until:
                plan.wake(wait_until)
                continue
        base.reinstalls[key] = (tries + 1, context.now)
        due.add(key)
        # The active versions no pod wants go now too, orphans or not: this pod needs them
        # gone before its version can be installed again.
        intent.evicted |= active
        pod = intent.wanting[key][-1]
        switched_on = ", ".join(sorted(active)) or "another version"
        message = (
            f"{key} was left DEACTIVATED on the base when {switched_on} was switched on; it is "
            "uninstalled and installed again to serve this pod"
        )
        if base.report(pod.uid, f"reinstall {key}", str(tries + 1)):
            plan.events.append(PodEvent(pod, "Normal", reasons.REINSTALLING, bounded(message)))
    return due


def _track_abandoned(
    base: BaseModules,
    intent: Intent,
    held: set[str],
    inventory: dict[str, InstalledModule],
    context: PlanContext,
) -> None:
    """Installs in flight for modules no pod wants any more (their pod left meanwhile).

    What such an install puts on the base is ours, to uninstall at once like any module
    a pod let go (not an orphan left the grace, or forever with UNINSTALL_ORPHANS=false).
    Its pod is gone already, so the memory is here; it ends when the module is uninstalled,
    wanted again (it is in flight for that pod), or unlisted past the install timeout (no
    answer came: it was lost), so it does not grow with every version a pod once wanted.
    """
    for key in [k for k in base.abandoned if k in intent.wanted]:
        base.installing[key] = base.abandoned.pop(key)
    for key in [k for k in base.installing if k not in intent.wanted and k not in held]:
        base.abandoned[key] = base.installing.pop(key)
    timeout = context.settings.install_timeout_seconds
    for key, sent in list(base.abandoned.items()):
        if key not in inventory and context.now - sent >= timeout:
            del base.abandoned[key]


def _plan_uninstalls(
    plan: Plan,
    base: BaseModules,
    inventory: dict[str, InstalledModule],
    intent: Intent,
    terminating: list[ModulePod],
    held: set[str],
    to_reinstall: set[str],
    context: PlanContext,
) -> None:
    settings = context.settings
    now = context.now
    leaving = {spec.key for pod in terminating if pod.wants.valid for spec in pod.wants.modules}
    for key, installed in inventory.items():
        if key in intent.wanted and key not in intent.replaced and key not in to_reinstall:
            base.orphan_since.pop(key, None)
            base.strays.pop(key, None)  # a pod wants it after all
            continue
        if key in intent.wanted or key in intent.evicted or key in base.strays:
            urgent = True  # another jar, another version, a BROKEN retry, our own stray
        elif key in held:
            continue  # a replacement pod may want it here
        elif (
            key in leaving
            or key in base.previously_wanted
            or key in base.uninstalling
            or key in base.abandoned
        ):
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
        base.abandoned.pop(key, None)  # `uninstalling` keeps it urgent from now on
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
        if sent is None:
            base.urls[key] = spec.url
        else:
            # A resend with no answer to the first: if that was of another jar (the pod's
            # image changed meanwhile), it may still be installing and land after this
            # one's answer. `urls` keeps naming it, so whatever appears under the key is
            # replaced in the seed's order (uninstalled, then this jar installed) and no
            # pod goes Ready on the earlier jar.
            base.urls.setdefault(key, spec.url)
        plan.installs.append(spec)
