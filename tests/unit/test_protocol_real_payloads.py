"""Payloads as real bases send them ("Observed on a real base" in reference/wire-protocol.md).

Older SOFAArk (before 2.2.16 / 3.1.9) has no getters on ``BizStateRecord``, so every record
arrives as ``{}``. Such replies must decode: the state and identity of each biz matter, the
records do not. Letter case is mixed across topics and transports.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from module_controller.protocol import (
    ArkletResponse,
    BatchInstallMessage,
    BizOperationMessage,
    BizState,
    BizStateRecord,
    ClientResponse,
    HealthMessage,
    HeartMessage,
    LegacyBizMessage,
    SimpleBizMessage,
    StateChangeReason,
    decode,
    encode,
)
from module_controller.protocol.biz import BizInfo, SimpleBizInfo, latest_record

EMPTY_RECORDS_INFO = {
    "bizName": "biz1",
    "bizVersion": "0.0.1",
    "bizState": "ACTIVATED",
    "mainClass": "com.example.Biz1App",
    "webContextPath": "biz1",
    "bizStateRecords": [{}, {}],
}


def _dump(value: Any) -> bytes:
    return json.dumps(value).encode()


def test_install_reply_with_empty_state_records_decodes() -> None:
    payload = {
        "publishTimestamp": 1732700020000,
        "data": {
            "command": "installBiz",
            "bizName": "biz1",
            "bizVersion": "0.0.1",
            "response": {
                "code": "SUCCESS",
                "data": {
                    "code": "SUCCESS",
                    "message": "Install Biz: biz1:0.0.1 success, cost: 1532 ms",
                    "elapsedSpace": 10485760,
                    "bizInfos": [EMPTY_RECORDS_INFO],
                },
            },
        },
    }
    message = decode(BizOperationMessage, _dump(payload))
    data = message.data.response.data
    assert isinstance(data, ClientResponse) and data.ok and data.biz_infos is not None
    (info,) = data.biz_infos
    assert (info.key, info.biz_state) == ("biz1:0.0.1", BizState.ACTIVATED)
    assert info.biz_state_records == []
    assert info.latest_state_record is None


def test_simple_biz_with_empty_latest_state_record_decodes_to_none() -> None:
    payload = {
        "publishTimestamp": 1,
        "data": [
            {"name": "biz1", "version": "0.0.1", "state": "activated", "latestStateRecord": {}},
            {"name": "biz2", "version": "1", "state": "broken", "latestStateRecord": None},
        ],
    }
    message = decode(SimpleBizMessage, _dump(payload))
    assert [(item.key, item.state) for item in message.data] == [
        ("biz1:0.0.1", BizState.ACTIVATED),
        ("biz2:1", BizState.BROKEN),
    ]
    assert [item.latest_state_record for item in message.data] == [None, None]


def test_legacy_biz_list_with_empty_state_records_decodes() -> None:
    payload = {"publishTimestamp": 1, "data": {"code": "SUCCESS", "data": [EMPTY_RECORDS_INFO]}}
    message = decode(LegacyBizMessage, _dump(payload))
    assert message.data.data is not None
    (info,) = message.data.data
    assert info.biz_state is BizState.ACTIVATED and info.biz_state_records == []


def test_batch_install_reply_with_empty_state_records_decodes() -> None:
    entry = {"code": "SUCCESS", "message": "ok", "bizInfos": [EMPTY_RECORDS_INFO]}
    payload = {
        "publishTimestamp": 1,
        "data": {
            "command": "batchInstallBiz",
            "response": {
                "code": "SUCCESS",
                "data": {
                    "code": "SUCCESS",
                    "bizUrlToResponse": {"file:///jars/biz1.jar": entry},
                },
            },
        },
    }
    message = decode(BatchInstallMessage, _dump(payload))
    data = message.data.response.data
    assert data is not None and data.biz_url_to_response is not None
    infos = data.biz_url_to_response["file:///jars/biz1.jar"].biz_infos
    assert infos is not None and infos[0].biz_state is BizState.ACTIVATED


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        # Partial records: what is there is kept, what is missing takes a harmless default.
        ({"state": "ACTIVATED"}, (0, BizState.ACTIVATED, StateChangeReason.UNDEFINE, "")),
        (
            {"changeTime": 5, "state": None, "reason": None, "message": None},
            (5, None, StateChangeReason.UNDEFINE, ""),
        ),
        ({"changeTime": 7, "state": "", "reason": "Started"}, (7, None, "STARTED", "")),
    ],
)
def test_records_with_missing_or_empty_fields_decode(
    record: dict[str, Any], expected: tuple[Any, ...]
) -> None:
    decoded = BizStateRecord.model_validate(record)
    assert (decoded.change_time, decoded.state, decoded.reason, decoded.message) == expected


def test_blank_records_are_dropped_and_the_latest_is_the_largest_change_time() -> None:
    info = BizInfo.model_validate(
        {
            "bizName": "a",
            "bizVersion": "1",
            "bizStateRecords": [
                {},
                {"changeTime": 20, "state": "ACTIVATED", "reason": "STARTED"},
                {"changeTime": 10, "state": "RESOLVED", "reason": "CREATED"},
                {"changeTime": None},
            ],
        }
    )
    assert info.biz_state is None
    assert [record.change_time for record in info.biz_state_records or []] == [20, 10]
    latest = info.latest_state_record
    assert latest is not None and latest.state is BizState.ACTIVATED
    # Without changeTime (all 0) the last record wins: SOFAArk appends in order.
    untimed = [BizStateRecord(state=BizState.RESOLVED), BizStateRecord(state=BizState.BROKEN)]
    last = latest_record(untimed)
    assert last is not None and last.state is BizState.BROKEN
    assert latest_record(None) is None


def test_letter_case_is_mixed_on_the_wire_and_decodes_the_same() -> None:
    # MQTT bizInfos and records: upper case; simpleBiz and heartbeat: lower case.
    mqtt_info = BizInfo.model_validate(
        {
            "bizName": "biz1",
            "bizVersion": "0.0.1",
            "bizState": "ACTIVATED",
            "bizStateRecords": [{"changeTime": 1, "state": "RESOLVED", "reason": "CREATED"}],
        }
    )
    simple = SimpleBizInfo.model_validate(
        {
            "name": "biz1",
            "version": "0.0.1",
            "state": "activated",
            "latestStateRecord": {"changeTime": 2, "state": "ACTIVATED", "reason": "STARTED"},
        }
    )
    # HTTP queryAllBiz: lower-case states, reasons in SOFAArk's toString form.
    http = decode(
        ArkletResponse[list[BizInfo]],
        b'{"code":"SUCCESS","data":[{"bizName":"biz1","bizVersion":"0.0.1",'
        b'"bizState":"activated","bizStateRecords":['
        b'{"changeTime":1,"state":"resolved","reason":"Created","message":""},'
        b'{"changeTime":2,"state":"activated","reason":"Started","message":""}]}]}',
    )
    assert mqtt_info.biz_state is simple.state is BizState.ACTIVATED
    assert http.data is not None and http.data[0].biz_state is BizState.ACTIVATED
    http_reasons = [record.reason for record in http.data[0].biz_state_records or []]
    assert http_reasons == [StateChangeReason.CREATED, StateChangeReason.STARTED]
    assert simple.latest_state_record is not None
    assert simple.latest_state_record.reason is StateChangeReason.STARTED
    heart = decode(
        HeartMessage,
        b'{"publishTimestamp":1,"data":{"baseMetadata":{"identity":"10.0.0.12","name":"base",'
        b'"version":"1.0.0","clusterName":"default"},"localIP":"10.0.0.12",'
        b'"localHostName":"10.0.0.12","port":0,"state":"activated"}}',
    )
    assert heart.data.is_activated and heart.data.local_host_name == "10.0.0.12"


def test_health_with_unbounded_metaspace_and_empty_fields_decodes() -> None:
    payload = {
        "publishTimestamp": 1,
        "data": {
            "code": "SUCCESS",
            "data": {
                "healthData": {
                    "jvm": {
                        "java version": "17.0.9",
                        "java used metaspace": 91234560,
                        "java committed metaspace": 93323264,
                        "java max metaspace": -1,
                        "loaded class count": 15234,
                    },
                    "cpu": {},
                    "masterBizInfo": {
                        "bizName": "base",
                        "bizVersion": "1.0.0",
                        "bizState": "ACTIVATED",
                        "webContextPath": "/",
                    },
                    "bizListInfo": [
                        {"bizName": "biz1", "bizVersion": "0.0.1", "bizState": ""},
                    ],
                    "pluginListInfo": [],
                }
            },
        },
    }
    message = decode(HealthMessage, _dump(payload))
    health = message.data.data
    assert health is not None
    data = health.health_data
    assert data.jvm is not None and data.jvm.java_max_metaspace == -1
    assert data.master_biz_info is not None
    assert data.master_biz_info.biz_state is BizState.ACTIVATED
    assert data.biz_list_info is not None and data.biz_list_info[0].biz_state is None
    # -1 stays an integer when written again (the Go controller refuses -1.0).
    written = json.loads(encode(message))["data"]["data"]["healthData"]["jvm"]
    assert written["java max metaspace"] == -1 and type(written["java max metaspace"]) is int


def test_a_record_without_a_state_is_written_without_one() -> None:
    record = BizStateRecord(change_time=3)
    assert json.loads(encode(record)) == {"changeTime": 3, "reason": "UNDEFINE", "message": ""}
