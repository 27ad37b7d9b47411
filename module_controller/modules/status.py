"""The status a module pod should show, from the modules its base reports.

ACTIVATED → Running and Ready; RESOLVED / DEACTIVATED → Running, not ready; BROKEN →
container waiting with the base's reason and message; STOPPED → terminated; not yet
reported → Pending. podIP = hostIP = the base's IP. Timestamps come from the base's state
records or are kept from the pod, so the same inventory always yields the same status.

kubectl must show what is true: whenever Ready is False, ContainersReady is False and no
container is ready (READY 0/1), whatever the reason (superseded, terminating, base down).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from module_controller.modules import reasons
from module_controller.modules.spec import ModuleSpec
from module_controller.modules.text import bounded
from module_controller.protocol.states import BizState

if TYPE_CHECKING:
    # Types only: state.py reads pods' Ready condition with the helpers below.
    from module_controller.modules.state import InstalledModule, ModulePod

# Kept for callers that name them here.
SUPERSEDED_REASON = reasons.SUPERSEDED
INVALID_REASON = reasons.INVALID
BASE_DOWN_REASON = reasons.BASE_DOWN


@dataclass(frozen=True)
class ModuleView:
    """One container's module as the pod should show it."""

    spec: ModuleSpec
    # The pod's own module as its base lists it; None when it is not there for this pod
    # (not installed, or installed from another jar, or on its way out).
    installed: InstalledModule | None
    # Why it is not running, when we know better than "installing": (reason, message).
    waiting: tuple[str, str] | None = None


def _iso(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def normal_stamp(value: Any) -> Any:
    """A timestamp in one spelling: the API client renders `+00:00` where we write `Z`."""
    if not isinstance(value, str | datetime.datetime):
        return value
    try:
        moment = (
            value
            if isinstance(value, datetime.datetime)
            else datetime.datetime.fromisoformat(value)
        )
    except ValueError:
        return value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return _iso(moment.astimezone(datetime.UTC))


def _from_ms(milliseconds: int | None, fallback: str) -> str:
    if milliseconds is None or milliseconds <= 0:
        return fallback
    return _iso(datetime.datetime.fromtimestamp(milliseconds / 1000, datetime.UTC))


def _previous_start(pod: ModulePod, container: str) -> str | None:
    for status in pod.status.get("containerStatuses") or []:
        if status.get("name") == container:
            running = (status.get("state") or {}).get("running") or {}
            started = running.get("startedAt")
            return str(normal_stamp(started)) if started else None
    return None


def _container_status(view: ModuleView, ready: bool, started_fallback: str) -> dict[str, Any]:
    spec, installed = view.spec, view.installed
    status: dict[str, Any] = {
        "name": spec.container,
        "image": spec.url,
        "imageID": "",
        "restartCount": 0,
        "ready": False,
        "started": False,
    }
    if installed is None:
        reason, message = view.waiting or (reasons.INSTALLING, f"installing {spec.key}")
        status["state"] = {"waiting": {"reason": reason, "message": bounded(message)}}
        return status
    since = _from_ms(installed.change_time_ms, started_fallback)
    if installed.state is BizState.ACTIVATED:
        status.update(ready=ready, started=True, state={"running": {"startedAt": since}})
    elif installed.state in (BizState.RESOLVED, BizState.DEACTIVATED):
        status.update(started=True, state={"running": {"startedAt": since}})
    elif installed.state is BizState.STOPPED:
        status["state"] = {
            "terminated": {
                "exitCode": 0,
                "reason": "Stopped",
                "message": f"{spec.key} was stopped",
                "startedAt": since,
                "finishedAt": since,
            }
        }
    elif installed.state is BizState.BROKEN:
        reason, message = view.waiting or (
            installed.reason or "BROKEN",
            installed.message or f"{spec.key} is broken on its base",
        )
        status["state"] = {"waiting": {"reason": reason, "message": bounded(message)}}
    else:  # UNRESOLVED: listed but not resolved yet
        status["state"] = {"waiting": {"reason": "ModuleResolving", "message": spec.key}}
    return status


def _condition(
    pod: ModulePod, kind: str, ok: bool, reason: str, message: str, now: str
) -> dict[str, str]:
    wanted = "True" if ok else "False"
    previous = next((c for c in pod.status.get("conditions") or [] if c.get("type") == kind), None)
    since = (
        str(normal_stamp(previous.get("lastTransitionTime")))
        if previous is not None
        and previous.get("status") == wanted
        and previous.get("lastTransitionTime")
        else now
    )
    return {
        "type": kind,
        "status": wanted,
        "reason": reason,
        "message": bounded(message),
        "lastTransitionTime": since,
    }


def _addresses(base_ip: str) -> dict[str, Any]:
    return {
        "hostIP": base_ip,
        "hostIPs": [{"ip": base_ip}],
        "podIP": base_ip,
        "podIPs": [{"ip": base_ip}],
    }


def desired_status(
    pod: ModulePod,
    base_ip: str,
    views: list[ModuleView],
    blocker: tuple[str, str] | None,
    now: datetime.datetime,
) -> dict[str, Any]:
    """The whole status to patch onto `pod` (PodScheduled is left to the scheduler).

    `blocker` is why the pod must not be Ready although its modules may be ACTIVATED
    (a newer version serves, its jar is being replaced): (reason, message).
    """
    stamp = _iso(now)
    start_time = str(normal_stamp(pod.status.get("startTime")) or stamp)
    present = all(
        v.installed is not None and v.installed.state is not BizState.STOPPED for v in views
    )
    active = all(v.installed is not None and v.installed.state is BizState.ACTIVATED for v in views)
    ready = active and blocker is None
    if blocker is not None:
        reason, message = blocker
    elif ready:
        reason, message = reasons.ACTIVATED, "every module is ACTIVATED on the base"
    else:
        explained = next(
            (
                v.waiting
                for v in views
                if v.waiting is not None
                and (v.installed is None or v.installed.state is not BizState.ACTIVATED)
            ),
            None,
        )
        waiting = [
            f"{v.spec.key}={v.installed.state.value if v.installed else 'not installed'}"
            for v in views
            if v.installed is None or v.installed.state is not BizState.ACTIVATED
        ]
        reason, message = explained or (reasons.NOT_ACTIVATED, "; ".join(waiting))
    return {
        "phase": "Running" if present else "Pending",
        "conditions": [
            _condition(pod, "Initialized", True, "ModulePod", "", stamp),
            # Never "containers ready" while the pod is not: kubectl shows READY 0/1.
            _condition(pod, "ContainersReady", ready, reason, message, stamp),
            _condition(pod, "Ready", ready, reason, message, stamp),
        ],
        "containerStatuses": [
            # Without a state record from the base, keep the start time already shown.
            _container_status(v, ready, _previous_start(pod, v.spec.container) or start_time)
            for v in views
        ],
        **_addresses(base_ip),
        "startTime": start_time,
    }


def invalid_status(pod: ModulePod, base_ip: str, now: datetime.datetime) -> dict[str, Any]:
    """A pod whose containers cannot be modules: Pending, saying what is wrong.

    A pod that was serving (its image changed in place to something that is no jar) keeps
    the containers it shows, none of them ready: a patch leaves an absent containerStatuses
    alone, and kubectl would go on showing them ready.
    """
    stamp = _iso(now)
    message = "; ".join(pod.wants.problems)
    status: dict[str, Any] = {
        "phase": "Pending",
        "conditions": [
            _condition(pod, "Initialized", True, "ModulePod", "", stamp),
            _condition(pod, "ContainersReady", False, reasons.INVALID, message, stamp),
            _condition(pod, "Ready", False, reasons.INVALID, message, stamp),
        ],
        **_addresses(base_ip),
        "startTime": str(normal_stamp(pod.status.get("startTime")) or stamp),
    }
    containers = pod.status.get("containerStatuses")
    if containers:
        status["containerStatuses"] = [{**c, "ready": False} for c in containers]
    return status


def not_ready_status(
    pod: ModulePod, reason: str, message: str, now: datetime.datetime
) -> dict[str, Any]:
    """The pod as it is, but not ready: conditions and every container (kubectl 0/1).

    containerStatuses is replaced whole by a patch (no merge key), so all of it is sent.
    """
    stamp = _iso(now)
    status: dict[str, Any] = {
        "conditions": [
            _condition(pod, "ContainersReady", False, reason, message, stamp),
            _condition(pod, "Ready", False, reason, message, stamp),
        ]
    }
    containers = pod.status.get("containerStatuses")
    if containers:
        status["containerStatuses"] = [{**c, "ready": False} for c in containers]
    return status


def base_down_status(pod: ModulePod, message: str, now: datetime.datetime) -> dict[str, Any]:
    """A pod on a silent base: not ready, everything else left as it is."""
    return not_ready_status(pod, reasons.BASE_DOWN, message, now)


def _containers(status: dict[str, Any]) -> tuple[Any, ...]:
    containers = []
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        kind = next(iter(state), None)
        detail = state.get(kind) or {} if kind else {}
        containers.append(
            (
                container.get("name"),
                bool(container.get("ready")),
                kind,
                detail.get("reason"),
                detail.get("message"),
                normal_stamp(detail.get("startedAt")),
            )
        )
    return tuple(sorted(containers, key=lambda c: str(c[0])))


def fingerprint(status: dict[str, Any]) -> tuple[Any, ...]:
    """What a status says, without the timestamps that only record when it was said."""
    ours = ("Initialized", "ContainersReady", "Ready")
    conditions = tuple(
        sorted(
            (c.get("type"), c.get("status"), c.get("reason"), c.get("message") or "")
            for c in status.get("conditions") or []
            if c.get("type") in ours
        )
    )
    return (
        status.get("phase"),
        conditions,
        _containers(status),
        status.get("podIP"),
        status.get("hostIP"),
    )


def needs_write(observed: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether the pod does not show yet what `wanted` says (only the parts it sets).

    A status patch merges conditions by type and leaves absent fields alone, so what the
    patch does not name cannot differ because of it; timestamps are compared in one
    spelling, or the same status would be written again on every inventory.
    """
    for field in ("phase", "podIP", "hostIP"):
        if field in wanted and observed.get(field) != wanted[field]:
            return True
    shown = {c.get("type"): c for c in observed.get("conditions") or []}
    for condition in wanted.get("conditions") or []:
        current = shown.get(condition.get("type")) or {}
        if (current.get("status"), current.get("reason"), current.get("message") or "") != (
            condition.get("status"),
            condition.get("reason"),
            condition.get("message") or "",
        ):
            return True
    return "containerStatuses" in wanted and _containers(observed) != _containers(wanted)


def ready_condition(status: dict[str, Any]) -> dict[str, Any] | None:
    """The pod's Ready condition, or None while it has none.

    The one place that reads it: a status patch merges conditions by type, so a pod has
    one; the first is taken, as testbed/kube_reads.py does for what the client returns.
    """
    return next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)


def is_ready(status: dict[str, Any]) -> bool:
    """Whether the pod's Ready condition says True."""
    ready = ready_condition(status)
    return ready is not None and ready.get("status") == "True"


def shows_ready(status: dict[str, Any]) -> bool:
    """Whether kubectl would show any part of the pod as ready."""
    return (
        is_ready(status)
        or any(
            c.get("type") == "ContainersReady" and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        or any(c.get("ready") for c in status.get("containerStatuses") or [])
    )
