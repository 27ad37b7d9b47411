"""SOFAArk biz states and state-change reasons, parsed in any casing, written per transport.

Real bases spell the same enum differently depending on where it is written (spec §1.2):
over HTTP (runtime >= 1.3.0) SOFAArk enums go through ``toString()`` (``"activated"``,
``"Install Failed"``); over MQTT they are written by name (``"ACTIVATED"``,
``"INSTALL_FAILED"``), except ``simpleBiz.state`` and the heartbeat ``state``, which the
runtime lower-cases explicitly. Models keep enum members; the casing is chosen when encoding
(see :mod:`module_controller.protocol.codec`).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, SerializationInfo


class EnumStyle(StrEnum):
    """How SOFAArk enums are spelt on the wire."""

    NAME = "name"  # MQTT: Java enum name, e.g. ACTIVATED / INSTALL_FAILED
    TO_STRING = "toString"  # HTTP since runtime 1.3.0: activated / Install Failed


class BizState(StrEnum):
    """SOFAArk ``BizState``; the value is the enum name."""

    UNRESOLVED = "UNRESOLVED"
    RESOLVED = "RESOLVED"
    ACTIVATED = "ACTIVATED"
    DEACTIVATED = "DEACTIVATED"
    BROKEN = "BROKEN"
    STOPPED = "STOPPED"

    @property
    def to_string(self) -> str:
        return self.value.lower()


# The controller v2.1.0 array form of simpleBiz carried numeric state codes.
_LEGACY_STATE_CODES = {
    "1": BizState.UNRESOLVED,
    "2": BizState.RESOLVED,
    "3": BizState.ACTIVATED,
    "4": BizState.DEACTIVATED,
    "5": BizState.BROKEN,
}


def parse_biz_state(value: Any) -> BizState:
    """Any casing of a state name (and the legacy codes 1..5) to a :class:`BizState`."""
    if isinstance(value, BizState):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(f"biz state must be a string, got {type(value).__name__}")
    text = value.strip()
    if text in _LEGACY_STATE_CODES:
        return _LEGACY_STATE_CODES[text]
    try:
        return BizState(text.upper())
    except ValueError:
        raise ValueError(f"unknown biz state {value!r}") from None


class StateChangeReason(StrEnum):
    """SOFAArk ``StateChangeReason``; the value is the enum name."""

    CREATED = "CREATED"
    STARTED = "STARTED"
    INSTALL_FAILED = "INSTALL_FAILED"
    UN_INSTALL_FAILED = "UN_INSTALL_FAILED"
    SWITCHED = "SWITCHED"
    KILLING = "KILLING"
    STOPPED = "STOPPED"
    UNDEFINE = "UNDEFINE"

    @property
    def to_string(self) -> str:
        return _REASON_TO_STRING[self]


_REASON_TO_STRING = {
    StateChangeReason.CREATED: "Created",
    StateChangeReason.STARTED: "Started",
    StateChangeReason.INSTALL_FAILED: "Install Failed",
    StateChangeReason.UN_INSTALL_FAILED: "Uninstall Failed",
    StateChangeReason.SWITCHED: "Switched",
    StateChangeReason.KILLING: "Killing",
    StateChangeReason.STOPPED: "Stopped",
    StateChangeReason.UNDEFINE: "Undefine",
}
_REASON_LOOKUP: dict[str, StateChangeReason] = {}
for _reason, _text in _REASON_TO_STRING.items():
    _REASON_LOOKUP[_reason.value] = _reason
    _REASON_LOOKUP[_text.upper()] = _reason


def parse_reason(value: Any) -> StateChangeReason | str:
    """A known reason in any spelling becomes the enum; anything else is kept verbatim.

    Reasons are free text for the controller (they end up in a container status), and newer
    SOFAArk releases may add some, so an unknown reason must not make a message undecodable.
    """
    if isinstance(value, StateChangeReason):
        return value
    if not isinstance(value, str):
        raise ValueError(f"state change reason must be a string, got {type(value).__name__}")
    return _REASON_LOOKUP.get(value.strip().upper(), value)


def _style(info: SerializationInfo) -> EnumStyle:
    context = info.context if isinstance(info.context, dict) else {}
    return EnumStyle(context.get("enum_style", EnumStyle.NAME))


def _write_state(value: BizState, info: SerializationInfo) -> str:
    return value.to_string if _style(info) is EnumStyle.TO_STRING else value.value


def _write_reason(value: StateChangeReason | str, info: SerializationInfo) -> str:
    if isinstance(value, StateChangeReason):
        return value.to_string if _style(info) is EnumStyle.TO_STRING else value.value
    return value


def _write_lower_state(value: BizState) -> str:
    return value.to_string


# A SOFAArk enum field whose spelling follows the transport (EnumStyle in the dump context).
StyledBizState = Annotated[
    BizState,
    BeforeValidator(parse_biz_state),
    PlainSerializer(_write_state, return_type=str),
]
StyledReason = Annotated[
    StateChangeReason | str,
    BeforeValidator(parse_reason),
    PlainSerializer(_write_reason, return_type=str),
]
# A state the runtime always lower-cases itself (simpleBiz.state, heartbeat state).
LowerBizState = Annotated[
    BizState,
    BeforeValidator(parse_biz_state),
    PlainSerializer(_write_lower_state, return_type=str),
]


def blank_to_none(value: Any) -> Any:
    """``""`` (or only spaces) becomes None: an empty optional field carries no information."""
    if isinstance(value, str) and not value.strip():
        return None
    return value


# An optional state where an empty string means "not reported" rather than a bad message.
OptionalStyledBizState = Annotated[StyledBizState | None, BeforeValidator(blank_to_none)]
