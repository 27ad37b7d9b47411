"""Builders for module unit tests: pods, inventories, plan contexts, base replies."""

from __future__ import annotations

import datetime
from typing import Any

from module_controller.modules.planner import Plan, PlanContext
from module_controller.modules.spec import UNINSTALL_THEN_INSTALL, pod_modules
from module_controller.modules.state import InstalledModule, ModulePod
from module_controller.modules.status import is_ready
from module_controller.protocol import BizOperationResponse, SimpleBizInfo
from module_controller.protocol.codec import decode
from module_controller.protocol.states import BizState
from module_controller.settings import Settings

WALL = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.UTC)
OLDER = "2026-11-28T10:00:00Z"
NEWER = "2026-11-28T11:00:00Z"


def jar(name: str, version: str) -> str:
    return f"https://repo/{name}-{version}.jar"


def container(name: str, version: str, image: str | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "image": image or jar(name, version),
        "env": [{"name": "BIZ_VERSION", "value": version}],
    }


def pod(
    name: str,
    modules: list[tuple[str, str]],
    created: str = OLDER,
    *,
    deleting: bool = False,
    deletion_seen_at: float = 0.0,
    ready: bool = False,
    owned: bool = False,
    upgrade: str = "",
    images: dict[str, str] | None = None,
) -> ModulePod:
    """A module pod; `ready` makes it show Ready with every container ready (kubectl 1/1)."""
    images = images or {}
    containers = [container(n, v, images.get(n)) for n, v in modules]
    status: dict[str, Any] = {}
    if ready:
        status = {
            "conditions": [
                {"type": "ContainersReady", "status": "True"},
                {"type": "Ready", "status": "True"},
            ],
            "containerStatuses": [
                {
                    "name": n,
                    "ready": True,
                    "state": {"running": {"startedAt": "2026-11-28T10:00:01Z"}},
                }
                for n, _ in modules
            ],
        }
    return ModulePod(
        namespace="ns",
        name=name,
        uid=f"uid-{name}",
        node_name="node-1",
        created=created,
        deleting=deleting,
        wants=pod_modules({"spec": {"containers": containers}}),
        status=status,
        resource_version="1",
        deletion_seen_at=deletion_seen_at if deleting else None,
        owned=owned,
        upgrade=upgrade,
    )


def annotated(name: str, modules: list[tuple[str, str]], created: str = NEWER) -> ModulePod:
    return pod(name, modules, created, upgrade=UNINSTALL_THEN_INSTALL)


def inventory(*entries: tuple[str, BizState], message: str | None = None) -> dict[str, Any]:
    """{"biz1:1": InstalledModule(...)} from ("biz1:1", state) pairs."""
    result: dict[str, InstalledModule] = {}
    for key, state in entries:
        name, version = key.split(":")
        result[key] = InstalledModule(name, version, state, message=message, change_time_ms=1000)
    return result


def simple(*entries: tuple[str, BizState]) -> tuple[SimpleBizInfo, ...]:
    """A base's simpleBiz answer (as set_inventory receives it)."""
    return tuple(
        SimpleBizInfo(name=key.split(":")[0], version=key.split(":")[1], state=state)
        for key, state in entries
    )


def context(
    now: float = 0.0,
    *,
    ready: bool = True,
    listed: bool = True,
    unscheduled: frozenset[str] = frozenset(),
    **settings: Any,
) -> PlanContext:
    return PlanContext(
        settings=Settings(**settings),
        base_ip="127.0.0.7",
        base_ready=ready,
        orphans_allowed=listed,
        now=now,
        wall=WALL,
        unscheduled_keys=unscheduled,
    )


def settle(plan: Plan) -> None:
    """What the API server answers to the plan's writes becomes what the pods show."""
    for written, status in plan.writes:
        merged = dict(written.status)
        by_type = {c["type"]: c for c in merged.get("conditions") or []}
        for condition in status.get("conditions") or []:
            by_type[condition["type"]] = condition
        merged.update({k: v for k, v in status.items() if k != "conditions"})
        merged["conditions"] = list(by_type.values())
        written.status = merged


def written(plan: Plan) -> list[tuple[str, bool]]:
    return [(p.name, is_ready(s)) for p, s in plan.writes]


def condition(status: dict[str, Any], kind: str = "Ready") -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == kind)


STACK = (
    "com.alipay.sofa.ark.exception.ArkRuntimeException: java.io.FileNotFoundException: "
    "/opt/missing.jar (No such file or directory)\n"
    "\tat com.alipay.sofa.ark.container.service.biz.BizManagerServiceImpl.start(X.java:1)\n"
    "\tat java.lang.Thread.run(Thread.java:833)"
)


def install_reply(
    name: str,
    version: str,
    code: str = "SUCCESS",
    *,
    data_code: str | None = None,
    message: str | None = None,
    data_message: str | None = None,
    biz_infos: list[tuple[str, str, str]] | None = None,
    data: bool = True,
    command: str = "installBiz",
    changed_ms: int | None = None,
) -> BizOperationResponse:
    """A bizOperation reply as a base sends it over MQTT (wire-protocol.md §2.4)."""
    response: dict[str, Any] = {"code": code}
    if message is not None:
        response["message"] = message
    if data:
        body: dict[str, Any] = {"code": data_code or code}
        if data_message is not None:
            body["message"] = data_message
        if biz_infos is not None:
            body["bizInfos"] = [
                {"bizName": n, "bizVersion": v, "bizState": s} for n, v, s in biz_infos
            ]
            if changed_ms is not None:  # each one's state record, as SOFAArk >= 2.2.9 sends
                for info in body["bizInfos"]:
                    info["bizStateRecords"] = [
                        {"changeTime": changed_ms, "state": info["bizState"]}
                    ]
        response["data"] = body
    payload = {"command": command, "bizName": name, "bizVersion": version, "response": response}
    return decode(BizOperationResponse, payload)


def download_failed(name: str, version: str) -> BizOperationResponse:
    return install_reply(
        name,
        version,
        "FAILED",
        message="java.io.FileNotFoundException: /opt/missing.jar (No such file or directory)",
        data_message=STACK,
    )
