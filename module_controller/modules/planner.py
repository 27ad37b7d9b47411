"""What to do on one base, now: installs, uninstalls, pod deletions, ordered status writes.

A pure function of the base's pods, its reported modules and the clock, so every rule of
the user contract is a unit test away:

- a module is keyed by name:version per base; pods wanting the same module share one
  install, and it is uninstalled only when no live pod on the base wants it;
- a deleted pod's modules are uninstalled, then the pod object is removed; past a bound
  it is removed anyway and the leftover is reported;
- lossless update: for each module name the serving version is the one of the newest pod
  whose version is ACTIVATED; pods of other versions go NotReady, and every write that
  takes a pod out of Ready comes before every write that puts one in (oldest pods first).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any, Literal

from module_controller.modules.spec import ModuleSpec
from module_controller.modules.state import BaseModules, InstalledModule, ModulePod, Uninstall
from module_controller.modules.status import (
    base_down_status,
    desired_status,
    fingerprint,
    invalid_status,
    is_ready,
)
from module_controller.protocol import BizModel
from module_controller.protocol.states import BizState
from module_controller.settings import Settings

EventType = Literal["Normal", "Warning"]


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
    status_writes: list[tuple[ModulePod, dict[str, Any]]] = field(default_factory=list)
    deletions: list[ModulePod] = field(default_factory=list)
    events: list[PodEvent] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (
            self.installs or self.uninstalls or self.status_writes or self.deletions or self.events
        )


@dataclass(frozen=True)
class PlanContext:
    settings: Settings
    base_ip: str
    base_ready: bool
    orphans_allowed: bool
    now: float  # monotonic seconds
    wall: datetime.datetime


def _serving_versions(
    pods: list[ModulePod], inventory: dict[str, InstalledModule]
) -> dict[str, str]:
    """Per module name, the version of the newest pod whose module is ACTIVATED."""
    serving: dict[str, tuple[str, str]] = {}
    for pod in pods:
        for spec in pod.wants.modules:
            installed = inventory.get(spec.key)
            if installed is None or installed.state is not BizState.ACTIVATED:
                continue
            current = serving.get(spec.name)
            if current is None or (pod.created, spec.version) > current:
                serving[spec.name] = (pod.created, spec.version)
    return {name: version for name, (_, version) in serving.items()}


def _uninstall_due(entry: Uninstall | None, now: float, settings: Settings) -> bool:
    if entry is None:
        return True
    backoff = min(settings.uninstall_retry_seconds * 2.0 ** (entry.attempts - 1), 60.0)
    return bool(now - entry.last_sent >= backoff)


def plan_base(pods: list[ModulePod], base: BaseModules, context: PlanContext) -> Plan:
    settings = context.settings
    now = context.now
    plan = Plan()
    live = sorted((p for p in pods if not p.deleting), key=lambda p: (p.created, p.name))
    terminating = [p for p in pods if p.deleting]
    served = [p for p in live if p.wants.valid]
    wanted: dict[str, ModuleSpec] = {}
    for pod in served:
        for spec in pod.wants.modules:
            wanted.setdefault(spec.key, spec)
    inventory = base.inventory

    for pod in live:
        if not pod.wants.valid:
            cause = ("invalid", "; ".join(pod.wants.problems))
            if (pod.uid, cause[1]) not in base.reported:
                base.reported.add((pod.uid, cause[1]))
                plan.events.append(PodEvent(pod, "Warning", "InvalidModuleSpec", cause[1]))

    if inventory is not None and context.base_ready:
        _plan_modules(plan, base, inventory, wanted, terminating, context)
    if not context.base_ready:
        # We are its kubelet: nobody else says promptly that its pods cannot serve.
        message = "the base stopped sending heartbeats"
        plan.status_writes = [
            (pod, base_down_status(pod, message, context.wall))
            for pod in live
            if is_ready(pod.status)
        ]
    elif inventory is not None:
        _plan_statuses(plan, base, live, inventory, context)
    base.previously_wanted = set(wanted)

    for pod in terminating:
        if not context.base_ready:
            # Nobody can uninstall on a silent base: let the pod go now; if the base comes
            # back, what it still holds is an orphan and is cleaned up then.
            plan.deletions.append(pod)
            continue
        keys = {spec.key for spec in pod.wants.modules} if pod.wants.valid else set()
        leftover = sorted(
            k for k in keys if k not in wanted and (inventory is None or k in inventory)
        )
        if not leftover:
            plan.deletions.append(pod)
            continue
        waited = now - (pod.deletion_seen_at if pod.deletion_seen_at is not None else now)
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
    return plan


def _plan_modules(
    plan: Plan,
    base: BaseModules,
    inventory: dict[str, InstalledModule],
    wanted: dict[str, ModuleSpec],
    terminating: list[ModulePod],
    context: PlanContext,
) -> None:
    settings = context.settings
    now = context.now
    leaving = {spec.key for pod in terminating if pod.wants.valid for spec in pod.wants.modules}
    for key, installed in inventory.items():
        replaced = key in wanted and base.urls.get(key, wanted[key].url) != wanted[key].url
        if key in wanted and not replaced:
            base.orphan_since.pop(key, None)
            continue
        if replaced or key in leaving or key in base.previously_wanted or key in base.uninstalling:
            urgent = True  # a pod let go of it: uninstall now
        else:
            since = base.orphan_since.setdefault(key, now)
            urgent = (
                settings.uninstall_orphans
                and context.orphans_allowed
                and now - since >= settings.orphan_grace_seconds
            )
        if not urgent or not _uninstall_due(base.uninstalling.get(key), now, settings):
            continue
        base.installing.pop(key, None)
        entry = base.uninstalling.get(key)
        if entry is None:
            base.uninstalling[key] = Uninstall(first_sent=now, last_sent=now)
        else:
            entry.last_sent = now
            entry.attempts += 1
        plan.uninstalls.append(BizModel(biz_name=installed.name, biz_version=installed.version))
    for key, spec in wanted.items():
        if key in inventory or key in base.uninstalling:
            continue  # present in some state (a BROKEN one is not retried), or on its way out
        sent = base.installing.get(key)
        if sent is not None and now - sent < settings.install_timeout_seconds:
            continue
        base.installing[key] = now
        base.urls[key] = spec.url
        plan.installs.append(spec)


def _plan_statuses(
    plan: Plan,
    base: BaseModules,
    live: list[ModulePod],
    inventory: dict[str, InstalledModule],
    context: PlanContext,
) -> None:
    served = [p for p in live if p.wants.valid]
    serving = _serving_versions(served, inventory)
    going_down: list[tuple[ModulePod, dict[str, Any]]] = []
    others: list[tuple[ModulePod, dict[str, Any]]] = []
    for pod in live:
        if not pod.wants.valid:
            status = invalid_status(pod, context.base_ip, context.wall)
        else:
            superseded = any(
                spec.name in serving and serving[spec.name] != spec.version
                for spec in pod.wants.modules
            )
            status = desired_status(pod, context.base_ip, inventory, superseded, context.wall)
            for spec in pod.wants.modules:
                installed = inventory.get(spec.key)
                if installed is None or installed.state is not BizState.BROKEN:
                    continue
                cause = f"broken {spec.key} {installed.change_time_ms}"
                if (pod.uid, cause) not in base.reported:
                    base.reported.add((pod.uid, cause))
                    plan.events.append(
                        PodEvent(
                            pod,
                            "Warning",
                            installed.reason or "ModuleBroken",
                            f"module {spec.key} is BROKEN on the base: "
                            f"{installed.message or 'no message'}",
                        )
                    )
        if fingerprint(status) == fingerprint(pod.status):
            continue
        if is_ready(pod.status) and not is_ready(status):
            going_down.append((pod, status))
        else:
            others.append((pod, status))
    # Lists are already oldest first: `live` is sorted by creation time.
    plan.status_writes = going_down + others
