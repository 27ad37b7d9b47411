"""The status a module pod should show, from the modules its base reports.

ACTIVATED → Running and Ready; RESOLVED / DEACTIVATED → Running, not ready; BROKEN →
container waiting with the base's reason and message; STOPPED → terminated; not yet
reported → Pending. podIP = hostIP = the base's IP. Timestamps come from the base's state
records or are kept from the pod, so the same inventory always yields the same status.
"""

from __future__ import annotations

import datetime
from typing import Any

from module_controller.modules.spec import ModuleSpec
from module_controller.modules.state import InstalledModule, ModulePod
from module_controller.protocol.states import BizState

SUPERSEDED_REASON = "SupersededByNewerVersion"
INVALID_REASON = "InvalidModuleSpec"
BASE_DOWN_REASON = "BaseNotReady"


def _iso(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _from_ms(milliseconds: int | None, fallback: str) -> str:
    if milliseconds is None or milliseconds <= 0:
        return fallback
    return _iso(datetime.datetime.fromtimestamp(milliseconds / 1000, datetime.UTC))


def _previous_start(pod: ModulePod, container: str) -> str | None:
    for status in pod.status.get("containerStatuses") or []:
        if status.get("name") == container:
            running = (status.get("state") or {}).get("running") or {}
            started = running.get("startedAt")
            return str(started) if started else None
    return None


def _container_status(
    spec: ModuleSpec, installed: InstalledModule | None, started_fallback: str
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "name": spec.container,
        "image": spec.url,
        "imageID": "",
        "restartCount": 0,
        "ready": False,
        "started": False,
    }
    if installed is None:
        status["state"] = {
            "waiting": {"reason": "ModuleInstalling", "message": f"installing {spec.key}"}
        }
        return status
    since = _from_ms(installed.change_time_ms, started_fallback)
    if installed.state is BizState.ACTIVATED:
        status.update(ready=True, started=True, state={"running": {"startedAt": since}})
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
        status["state"] = {
            "waiting": {
                "reason": installed.reason or "BROKEN",
                "message": installed.message or f"{spec.key} is broken on its base",
            }
        }
    else:  # UNRESOLVED: listed but not resolved yet
        status["state"] = {"waiting": {"reason": "ModuleResolving", "message": spec.key}}
    return status


def _condition(
    pod: ModulePod, kind: str, ok: bool, reason: str, message: str, now: str
) -> dict[str, str]:
    wanted = "True" if ok else "False"
    previous = next((c for c in pod.status.get("conditions") or [] if c.get("type") == kind), None)
    since = (
        str(previous.get("lastTransitionTime"))
        if previous is not None
        and previous.get("status") == wanted
        and previous.get("lastTransitionTime")
        else now
    )
    return {
        "type": kind,
        "status": wanted,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    }


def desired_status(
    pod: ModulePod,
    base_ip: str,
    inventory: dict[str, InstalledModule],
    superseded: bool,
    now: datetime.datetime,
) -> dict[str, Any]:
    """The whole status to patch onto `pod` (PodScheduled is left to the scheduler)."""
    stamp = _iso(now)
    start_time = str(pod.status.get("startTime") or stamp)
    modules = pod.wants.modules
    found = [inventory.get(spec.key) for spec in modules]
    present = all(m is not None and m.state is not BizState.STOPPED for m in found)
    active = all(m is not None and m.state is BizState.ACTIVATED for m in found)
    ready = active and not superseded
    if superseded:
        reason, message = SUPERSEDED_REASON, "a newer version of this module serves on the base"
    elif ready:
        reason, message = "ModulesActivated", "every module is ACTIVATED on the base"
    else:
        waiting = [
            f"{spec.key}={m.state.value if m else 'not installed'}"
            for spec, m in zip(modules, found, strict=True)
            if m is None or m.state is not BizState.ACTIVATED
        ]
        reason, message = "ModulesNotActivated", "; ".join(waiting)
    return {
        "phase": "Running" if present else "Pending",
        "conditions": [
            _condition(pod, "Initialized", True, "ModulePod", "", stamp),
            _condition(pod, "ContainersReady", active, reason, message, stamp),
            _condition(pod, "Ready", ready, reason, message, stamp),
        ],
        "containerStatuses": [
            # Without a state record from the base, keep the start time already shown.
            _container_status(spec, installed, _previous_start(pod, spec.container) or start_time)
            for spec, installed in zip(modules, found, strict=True)
        ],
        "hostIP": base_ip,
        "hostIPs": [{"ip": base_ip}],
        "podIP": base_ip,
        "podIPs": [{"ip": base_ip}],
        "startTime": start_time,
    }


def invalid_status(pod: ModulePod, base_ip: str, now: datetime.datetime) -> dict[str, Any]:
    """A pod whose containers cannot be modules: Pending, saying what is wrong."""
    stamp = _iso(now)
    message = "; ".join(pod.wants.problems)
    return {
        "phase": "Pending",
        "conditions": [
            _condition(pod, "ContainersReady", False, INVALID_REASON, message, stamp),
            _condition(pod, "Ready", False, INVALID_REASON, message, stamp),
        ],
        "hostIP": base_ip,
        "hostIPs": [{"ip": base_ip}],
        "podIP": base_ip,
        "podIPs": [{"ip": base_ip}],
        "startTime": str(pod.status.get("startTime") or stamp),
    }


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
                detail.get("startedAt"),
            )
        )
    return (
        status.get("phase"),
        conditions,
        tuple(sorted(containers, key=lambda c: str(c[0]))),
        status.get("podIP"),
        status.get("hostIP"),
    )


def is_ready(status: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def base_down_status(pod: ModulePod, message: str, now: datetime.datetime) -> dict[str, Any]:
    """A pod on a silent base: not ready, everything else left as it is."""
    stamp = _iso(now)
    return {
        "conditions": [
            _condition(pod, "ContainersReady", False, BASE_DOWN_REASON, message, stamp),
            _condition(pod, "Ready", False, BASE_DOWN_REASON, message, stamp),
        ]
    }
