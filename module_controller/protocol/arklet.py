"""The Arklet command surface (spec §1): command names, the response envelope, error forms.

``ArkletResponse`` is arklet's ``Output``: the HTTP response body, and the ``response`` object
inside MQTT ``bizOperation`` / ``batchInstallBizResponse`` and the MQTT ``base/health`` data.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Generic, TypeVar

from pydantic import AliasChoices, Field

from module_controller.protocol.codec import WireModel

T = TypeVar("T")

ARKLET_DEFAULT_PORT = 1238
ARKLET_PORT_SCAN = 100  # arklet tries 1238..1337 when the port is not configured

# Plain-text body of the HTTP 500 a real base returns for any non-POST request.
POST_ONLY_TEXT = "POST http request only supported by arklet"
CMD_NOT_FOUND_TEXT = "please follow the doc"
INTERNAL_ERROR_PREFIX = "Internal Error: "
INSTALL_NOT_SUCCESS_TEXT = "install biz not success!"
UNINSTALL_NOT_SUCCESS_TEXT = "uninstall biz not success!"
SWITCH_NOT_SUCCESS_TEXT = "switch biz not success!"


class ArkletCommand(StrEnum):
    """Arklet command ids: the HTTP path without '/', the last MQTT command-topic segment."""

    HELP = "help"
    INSTALL_BIZ = "installBiz"
    BATCH_INSTALL_BIZ = "batchInstallBiz"
    UNINSTALL_BIZ = "uninstallBiz"
    SWITCH_BIZ = "switchBiz"
    QUERY_ALL_BIZ = "queryAllBiz"
    HEALTH = "health"
    QUERY_BIZ_OPS = "queryBizOps"


# What a real base executes when it arrives on its MQTT command topic; others are dropped.
MQTT_COMMANDS = frozenset(
    {
        ArkletCommand.HEALTH,
        ArkletCommand.QUERY_ALL_BIZ,
        ArkletCommand.INSTALL_BIZ,
        ArkletCommand.UNINSTALL_BIZ,
    }
)


class ResponseCode(StrEnum):
    """Arklet ``ResponseCode``; always upper case, compared exactly by the Go controller."""

    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    CMD_NOT_FOUND = "CMD_NOT_FOUND"
    CMD_PROCESS_INTERNAL_ERROR = "CMD_PROCESS_INTERNAL_ERROR"


class ArkletResponse(WireModel, Generic[T]):
    """Arklet ``Output``. Null fields are omitted on the wire.

    ``baseIdentity`` is runtime >= 1.3.3; 1.3.2 sent ``baseID`` (accepted when decoding).
    """

    code: str
    data: T | None = None
    message: str | None = None
    error_stack_trace: str | None = None
    base_identity: str | None = Field(
        default=None, validation_alias=AliasChoices("baseIdentity", "baseID")
    )

    @property
    def ok(self) -> bool:
        return self.code == ResponseCode.SUCCESS


class CommandHelp(WireModel):
    """One entry of the ``help`` command's data."""

    id: str
    desc: str


def lock_conflict_text(name: str, version: str, command: str, running: str) -> str:
    """The message of the per ``name:version`` lock conflict (``BizOpsCommandCoordinator``)."""
    return (
        f"FAILED:{name}:{version} {command} conflict, "
        f"exist unfinished command({running}) for this biz"
    )


def internal_error_text(exception_message: str) -> str:
    return INTERNAL_ERROR_PREFIX + exception_message
