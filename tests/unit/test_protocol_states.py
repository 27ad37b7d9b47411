"""BizState / StateChangeReason: tolerant parsing and per-transport spelling (spec §1.2)."""

from __future__ import annotations

import pytest

from module_controller.protocol import BizStateRecord, EnumStyle, SimpleBizInfo, to_jsonable
from module_controller.protocol.states import (
    BizState,
    StateChangeReason,
    parse_biz_state,
    parse_reason,
)


@pytest.mark.parametrize("text", ["ACTIVATED", "activated", "Activated", " activated ", "3", 3])
def test_states_parse_in_any_casing_and_legacy_codes(text: str | int) -> None:
    assert parse_biz_state(text) is BizState.ACTIVATED


@pytest.mark.parametrize("bad", ["running", "", None, 9])
def test_unknown_states_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_biz_state(bad)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("INSTALL_FAILED", StateChangeReason.INSTALL_FAILED),
        ("Install Failed", StateChangeReason.INSTALL_FAILED),
        ("Uninstall Failed", StateChangeReason.UN_INSTALL_FAILED),
        ("started", StateChangeReason.STARTED),
    ],
)
def test_reasons_parse_in_both_spellings(text: str, reason: StateChangeReason) -> None:
    assert parse_reason(text) is reason


def test_unknown_reasons_are_kept_verbatim() -> None:
    assert parse_reason("SUCCESS") == "SUCCESS"
    record = BizStateRecord.model_validate(
        {"changeTime": 1, "state": "broken", "reason": "Something New"}
    )
    assert record.reason == "Something New"
    assert to_jsonable(record)["reason"] == "Something New"


def test_record_spelling_follows_the_transport() -> None:
    record = BizStateRecord(
        change_time=5, state=BizState.BROKEN, reason=StateChangeReason.INSTALL_FAILED
    )
    assert to_jsonable(record) == {
        "changeTime": 5,
        "state": "BROKEN",
        "reason": "INSTALL_FAILED",
        "message": "",
    }
    assert to_jsonable(record, style=EnumStyle.TO_STRING) == {
        "changeTime": 5,
        "state": "broken",
        "reason": "Install Failed",
        "message": "",
    }


def test_simple_biz_state_is_always_lower_case_but_its_record_is_not() -> None:
    item = SimpleBizInfo(
        name="biz1",
        version="1",
        state=BizState.ACTIVATED,
        latest_state_record=BizStateRecord(
            change_time=1, state=BizState.ACTIVATED, reason=StateChangeReason.STARTED
        ),
    )
    assert to_jsonable(item) == {
        "name": "biz1",
        "version": "1",
        "state": "activated",
        "latestStateRecord": {
            "changeTime": 1,
            "state": "ACTIVATED",
            "reason": "STARTED",
            "message": "",
        },
    }
