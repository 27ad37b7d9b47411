"""Modules ("biz"): the install/uninstall request, biz info, state records, SOFAArk replies.

Shapes from spec §1.3, §1.4, §2.4 and §4. Field names are the JSON keys real bases send.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import Field, RootModel, field_validator, model_validator

from module_controller.protocol.codec import WireModel, wire_key
from module_controller.protocol.states import (
    BizState,
    LowerBizState,
    OptionalStyledBizState,
    StateChangeReason,
    StyledReason,
)


def biz_key(name: str, version: str) -> str:
    """The ``bizName:bizVersion`` identity both sides key modules by."""
    return f"{name}:{version}"


class ClientResponseCode(StrEnum):
    """SOFAArk ``ClientResponse.code``."""

    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    REPEAT_BIZ = "REPEAT_BIZ"
    NOT_FOUND_BIZ = "NOT_FOUND_BIZ"
    ILLEGAL_STATE_BIZ = "ILLEGAL_STATE_BIZ"


class InstallStrategy(StrEnum):
    INSTALL_ONLY = "installOnly"
    UNINSTALL_THEN_INSTALL = "uninstallThenInstall"


class BizModel(WireModel):
    """The body of installBiz / uninstallBiz (MQTT payload, HTTP POST body, baseline entry).

    Only what the controller sends plus arklet's optional inputs; name and version are
    optional because arklet accepts "both absent" (then reads them from the jar).
    """

    biz_name: str | None = None
    biz_version: str | None = None
    biz_url: str | None = None
    install_strategy: str | None = None
    args: list[str] | None = None
    envs: dict[str, str] | None = None
    async_: bool | None = wire_key("async")
    request_id: str | None = None

    @property
    def key(self) -> str:
        return biz_key(self.biz_name or "", self.biz_version or "")


class Baseline(RootModel[list[BizModel]]):
    """``base/baseline`` (controller -> base) and the HTTP /queryBaseline reply: a bare array."""


class BatchInstallRequest(WireModel):
    """Arklet ``batchInstallBiz`` input."""

    biz_list: list[BizModel] = Field(default_factory=list)


class BizStateRecord(WireModel):
    """One SOFAArk state change; the controller uses the record with the largest changeTime.

    Every field may be missing: SOFAArk before 2.2.16 / 3.1.9 has no getters on
    ``BizStateRecord``, so fastjson writes ``{}`` for each record. A missing ``changeTime``
    is 0 (older than any real record, so ``max(..., key=change_time)`` still works and the
    controller falls back to its own clock); a JSON ``null`` counts as missing. Records that
    carry nothing at all are dropped by the models holding them (see ``_without_blank``).
    """

    change_time: int = 0
    state: OptionalStyledBizState = None
    reason: StyledReason = StateChangeReason.UNDEFINE
    message: str | None = ""

    @model_validator(mode="before")
    @classmethod
    def _null_is_missing(cls, value: Any) -> Any:
        # fastjson's WriteMapNullValue (used for simpleBiz) writes absent getters as null.
        if isinstance(value, dict):
            return {key: item for key, item in value.items() if item is not None}
        return value


def _is_blank_record(value: Any) -> bool:
    """A record JSON object without a single known field (``{}`` from older SOFAArk)."""
    if not isinstance(value, dict):
        return False
    for name, field in BizStateRecord.model_fields.items():
        if value.get(name) is not None or value.get(field.alias or name) is not None:
            return False
    return True


def latest_record(records: list[BizStateRecord] | None) -> BizStateRecord | None:
    """The record with the largest changeTime; on a tie the later one (SOFAArk appends)."""
    latest: BizStateRecord | None = None
    for record in records or []:
        if latest is None or record.change_time >= latest.change_time:
            latest = record
    return latest


class BizInfo(WireModel):
    """A SOFAArk ``BizModel`` bean as arklet serialises it (queryAllBiz, install bizInfos).

    Real bases send many more fields; they are ignored. ``bizState`` is optional because the
    batch reply's shortened entries and some legacy shapes omit it.
    """

    biz_name: str
    biz_version: str
    biz_state: OptionalStyledBizState = None
    main_class: str | None = None
    web_context_path: str | None = None
    identity: str | None = None
    priority: int | None = None
    biz_state_records: list[BizStateRecord] | None = None

    @field_validator("biz_state_records", mode="before")
    @classmethod
    def _without_blank(cls, value: Any) -> Any:
        # "bizStateRecords":[{},{}] from older SOFAArk: nothing to keep, nothing to refuse.
        if isinstance(value, list):
            return [record for record in value if not _is_blank_record(record)]
        return value

    @property
    def key(self) -> str:
        return biz_key(self.biz_name, self.biz_version)

    @property
    def latest_state_record(self) -> BizStateRecord | None:
        return latest_record(self.biz_state_records)


class SimpleBizInfo(WireModel):
    """One entry of ``base/simpleBiz`` (runtime >= 1.3.3): state always lower case.

    Also accepts the controller v2.1.0 array form ``["name", "version", "<1..5>"]``.
    """

    name: str
    version: str
    state: LowerBizState
    latest_state_record: BizStateRecord | None = None

    @model_validator(mode="before")
    @classmethod
    def _accept_array_form(cls, value: Any) -> Any:
        if isinstance(value, list):
            if len(value) != 3:
                raise ValueError("array-form simpleBiz needs [name, version, state]")
            return {"name": value[0], "version": value[1], "state": value[2]}
        return value

    @field_validator("latest_state_record", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        # "latestStateRecord":{} from older SOFAArk says nothing: same as no record.
        return None if _is_blank_record(value) else value

    @property
    def key(self) -> str:
        return biz_key(self.name, self.version)


class ClientResponse(WireModel):
    """SOFAArk ``ClientResponse`` (+ arklet's ``elapsedSpace``): ``data`` of install/uninstall."""

    code: str
    message: str | None = None
    biz_infos: list[BizInfo] | None = None
    elapsed_space: int | None = None

    @property
    def ok(self) -> bool:
        return self.code == ClientResponseCode.SUCCESS


class BatchInstallData(WireModel):
    """``data`` of ``batchInstallBiz``: one ClientResponse per jar URL."""

    code: str
    message: str | None = None
    elapsed_space: int | None = None
    biz_url_to_response: dict[str, ClientResponse] | None = None


# Texts SOFAArk puts in ClientResponse.message (spec §1.3); the simulator writes them and
# tests compare against them.
def install_success_text(name: str, version: str, cost_ms: int, started_at: str) -> str:
    return (
        f"Install Biz: {biz_key(name, version)} success, cost: {cost_ms} ms, "
        f"started at: {started_at}"
    )


def repeat_biz_text(name: str, version: str) -> str:
    return f"Biz: {biz_key(name, version)} has been installed or registered."


def uninstall_success_text(name: str, version: str) -> str:
    return f"Uninstall biz: {biz_key(name, version)} success."


def uninstall_not_found_text(name: str, version: str) -> str:
    return f"Uninstall biz: {biz_key(name, version)} not found."


MASTER_BIZ_UNINSTALL_TEXT = "Master biz must not be uninstalled."
# SOFAArk BizModel.stop() asserts this: an uninstall that meets a biz still being installed
# (RESOLVED) fails with it (observed on runtime 2.1.11); a later retry succeeds.
BIZ_STOP_ILLEGAL_STATE_TEXT = "BizState must be ACTIVATED, DEACTIVATED or BROKEN."


__all__ = [
    "BIZ_STOP_ILLEGAL_STATE_TEXT",
    "MASTER_BIZ_UNINSTALL_TEXT",
    "Baseline",
    "BatchInstallData",
    "BatchInstallRequest",
    "BizInfo",
    "BizModel",
    "BizState",
    "BizStateRecord",
    "ClientResponse",
    "ClientResponseCode",
    "InstallStrategy",
    "SimpleBizInfo",
    "biz_key",
    "install_success_text",
    "latest_record",
    "repeat_biz_text",
    "uninstall_not_found_text",
    "uninstall_success_text",
]
