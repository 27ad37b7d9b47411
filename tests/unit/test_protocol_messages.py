"""Message shapes and decoding (spec §1.2-§1.6, §2.3-§2.4): the examples of the spec decode,
and what we encode has exactly the spec's keys."""

from __future__ import annotations

import json
from typing import Any

import pytest

from module_controller.protocol import (
    ArkletResponse,
    BaseMetadata,
    BaseStatus,
    BatchInstallMessage,
    BizOperationMessage,
    BizState,
    ClientResponse,
    EnumStyle,
    HealthMessage,
    HeartMessage,
    LegacyBizMessage,
    ProtocolError,
    QueryBaselineMessage,
    SimpleBizMessage,
    StateChangeReason,
    decode,
    decode_base_message,
    decode_command,
    encode,
    wrap,
)
from module_controller.protocol.biz import Baseline, BizInfo, BizModel
from module_controller.protocol.envelopes import MAX_MESSAGE_AGE_MS, Envelope
from module_controller.protocol.health import Health, HealthRequest
from module_controller.protocol.messages import EmptyCommand

HEART = {
    "publishTimestamp": 1732700000000,
    "data": {
        "baseMetadata": {
            "identity": "10.0.0.12",
            "name": "base-web",
            "version": "1.0.0",
            "clusterName": "default",
        },
        "localIP": "10.0.0.12",
        "localHostName": "base-web-5c9d7",
        "port": 0,
        "state": "activated",
    },
}


def _dump(value: Any) -> bytes:
    return json.dumps(value).encode()


def test_heartbeat_round_trips_byte_for_byte_in_key_set() -> None:
    parsed, message = decode_base_message("koupleless_dev/10.0.0.12/base/heart", _dump(HEART))
    assert isinstance(message, HeartMessage)
    assert parsed.identity == "10.0.0.12"
    status = message.data
    assert status.base_metadata.cluster_name == "default"
    assert status.local_ip == "10.0.0.12"
    assert status.is_activated
    assert json.loads(encode(message)) == HEART


def test_heartbeat_state_is_compared_case_insensitively() -> None:
    shouting = json.loads(json.dumps(HEART))
    shouting["data"]["state"] = "DEACTIVATED"
    message = decode(HeartMessage, _dump(shouting))
    assert not message.data.is_activated
    assert message.data.state is BizState.DEACTIVATED


def test_query_baseline_and_baseline() -> None:
    query = decode(
        QueryBaselineMessage,
        b'{"publishTimestamp":1,"data":{"identity":"i","name":"n","version":"v",'
        b'"clusterName":"c"}}',
    )
    assert query.data == BaseMetadata(identity="i", name="n", version="v", cluster_name="c")
    parsed, baseline = decode_command(
        "koupleless_dev/i/base/baseline",
        b'[{"bizName":"biz1","bizVersion":"0.0.1","bizUrl":"https://h/biz1.jar"}]',
    )
    assert parsed.is_base
    assert isinstance(baseline, Baseline)
    assert baseline.root[0].biz_url == "https://h/biz1.jar"
    assert json.loads(encode(Baseline([]))) == []


def test_simple_biz_example_and_legacy_array_form() -> None:
    first_entry = {
        "name": "biz1",
        "version": "0.0.1-SNAPSHOT",
        "state": "activated",
        "latestStateRecord": {
            "changeTime": 1732700001092,
            "state": "ACTIVATED",
            "reason": "STARTED",
            "message": "",
        },
    }
    payload = {
        "publishTimestamp": 1732700015000,
        "data": [
            first_entry,
            {"name": "biz2", "version": "1", "state": "broken", "latestStateRecord": None},
            ["biz3", "2", "4"],
        ],
    }
    message = decode(SimpleBizMessage, _dump(payload))
    assert [item.key for item in message.data] == ["biz1:0.0.1-SNAPSHOT", "biz2:1", "biz3:2"]
    assert [item.state for item in message.data] == [
        BizState.ACTIVATED,
        BizState.BROKEN,
        BizState.DEACTIVATED,
    ]
    record = message.data[0].latest_state_record
    assert record is not None and record.reason is StateChangeReason.STARTED
    # Nulls are written explicitly in simpleBiz.
    again = json.loads(encode(message, keep_nulls=True))
    assert again["data"][1]["latestStateRecord"] is None
    assert again["data"][0] == first_entry


def test_biz_operation_example_decodes() -> None:
    payload = {
        "publishTimestamp": 1732700020000,
        "data": {
            "command": "installBiz",
            "bizName": "biz1",
            "bizVersion": "0.0.1-SNAPSHOT",
            "response": {
                "code": "SUCCESS",
                "data": {
                    "code": "SUCCESS",
                    "elapsedSpace": 10485760,
                    "message": "Install Biz: biz1:0.0.1-SNAPSHOT success",
                    "bizInfos": [
                        {
                            "bizName": "biz1",
                            "bizVersion": "0.0.1-SNAPSHOT",
                            "bizState": "ACTIVATED",
                            "urls": ["x"],
                            "denyImportPackages": [],
                        }
                    ],
                },
            },
        },
    }
    _, message = decode_base_message("koupleless_dev/x/base/bizOperation", _dump(payload))
    assert isinstance(message, BizOperationMessage)
    operation = message.data
    assert operation.response.ok
    data = operation.response.data
    assert isinstance(data, ClientResponse) and data.ok
    assert data.biz_infos is not None
    assert data.biz_infos[0].biz_state is BizState.ACTIVATED


def test_failed_operation_shapes_decode() -> None:
    lock = decode(
        BizOperationMessage,
        b'{"publishTimestamp":1,"data":{"command":"installBiz","bizName":"a","bizVersion":"1",'
        b'"response":{"code":"FAILED","message":"FAILED:a:1 installBiz conflict"}}}',
    )
    assert not lock.data.response.ok and lock.data.response.data is None
    repeat = decode(
        BizOperationMessage,
        b'{"publishTimestamp":1,"data":{"command":"installBiz","response":{"code":"FAILED",'
        b'"message":"install biz not success!","data":{"code":"REPEAT_BIZ","elapsedSpace":0}}}}',
    )
    assert repeat.data.response.data is not None
    assert repeat.data.response.data.code == "REPEAT_BIZ"


def test_batch_response_example_decodes() -> None:
    payload = {
        "publishTimestamp": 1,
        "data": {
            "command": "batchInstallBiz",
            "response": {
                "code": "SUCCESS",
                "data": {
                    "code": "SUCCESS",
                    "message": "batch install success",
                    "elapsedSpace": 123,
                    "bizUrlToResponse": {
                        "https://h/biz1.jar": {
                            "code": "SUCCESS",
                            "message": "ok",
                            "bizInfos": [
                                {"bizName": "biz1", "bizVersion": "1", "bizState": "ACTIVATED"}
                            ],
                        },
                        "https://h/biz2.jar": {"code": "REPEAT_BIZ", "message": "dup"},
                    },
                },
            },
        },
    }
    message = decode(BatchInstallMessage, _dump(payload))
    data = message.data.response.data
    assert data is not None and data.biz_url_to_response is not None
    assert data.biz_url_to_response["https://h/biz2.jar"].biz_infos is None


def test_health_keeps_literal_keys_and_integer_types() -> None:
    payload = {
        "code": "SUCCESS",
        "data": {
            "healthData": {
                "jvm": {
                    "java version": "1.8.0_392",
                    "max heap memory(M)": 3641.0,
                    "loaded class count": 15234,
                    "java committed metaspace": 93323264,
                    "java max metaspace": -1,
                },
                "cpu": {"count": 8, "total used (%)": 1234.0},
                "masterBizInfo": {
                    "bizName": "base-web",
                    "bizVersion": "1.0.0",
                    "bizState": "activated",
                    "webContextPath": "/",
                },
            }
        },
    }
    message = decode(HealthMessage, _dump({"publishTimestamp": 1, "data": payload}))
    health = message.data.data
    assert isinstance(health, Health)
    jvm = health.health_data.jvm
    assert jvm is not None and jvm.java_max_metaspace == -1
    assert jvm.java_committed_metaspace == 93323264
    master = health.health_data.master_biz_info
    assert master is not None and master.biz_state is BizState.ACTIVATED
    out = json.loads(encode(message.data))
    assert out["data"]["healthData"]["jvm"]["loaded class count"] == 15234
    assert isinstance(out["data"]["healthData"]["jvm"]["loaded class count"], int)
    assert out["data"]["healthData"]["masterBizInfo"]["bizState"] == "ACTIVATED"


def test_legacy_biz_topic_decodes() -> None:
    payload = {
        "publishTimestamp": 1,
        "data": {
            "code": "SUCCESS",
            "message": "",
            "data": [{"bizName": "a", "bizVersion": "1", "bizState": "ACTIVATED"}],
        },
    }
    _, message = decode_base_message("koupleless_dev/x/base/biz", _dump(payload))
    assert isinstance(message, LegacyBizMessage)
    assert message.data.data is not None and message.data.data[0].key == "a:1"


def test_http_envelope_omits_nulls_and_reads_legacy_base_id() -> None:
    output = ArkletResponse[list[BizInfo]](code="SUCCESS", data=[], base_identity="10.0.0.1")
    assert json.loads(encode(output, style=EnumStyle.TO_STRING)) == {
        "code": "SUCCESS",
        "data": [],
        "baseIdentity": "10.0.0.1",
    }
    old = decode(ArkletResponse[list[BizInfo]], b'{"code":"SUCCESS","baseID":"u-1"}')
    assert old.base_identity == "u-1"


def test_commands_decode_with_optional_inputs() -> None:
    _, install = decode_command(
        "koupleless_dev/x/installBiz",
        b'{"bizName":"a","bizVersion":"1","bizUrl":"file:///a.jar","async":true,'
        b'"bizModelVersion":"ns/pod"}',
    )
    assert isinstance(install, BizModel)
    assert install.async_ is True and install.key == "a:1"
    assert json.loads(encode(install)) == {
        "bizName": "a",
        "bizVersion": "1",
        "bizUrl": "file:///a.jar",
        "async": True,
    }
    _, health = decode_command("koupleless_dev/x/health", b"{}")
    assert health == HealthRequest()
    _, query = decode_command("koupleless_dev/x/queryAllBiz", b'{"anything":1}')
    assert isinstance(query, EmptyCommand)


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        ("koupleless_dev/x/installBiz", b"{not json"),
        ("koupleless_dev/x/installBiz", b"\xff\xfe"),
        ("koupleless_dev/x/installBiz", b"[1, 2]"),
        ("koupleless_dev/x/base/baseline", b'{"bizName":"a"}'),
        ("koupleless_dev/x/nonsense", b"{}"),
        ("koupleless_dev/x/base/heart", b"{}"),
    ],
)
def test_bad_commands_raise_only_protocol_error(topic: str, payload: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_command(topic, payload)
    assert str(caught.value)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"null",
        b'{"publishTimestamp":"soon","data":{}}',
        b'{"data":{"baseMetadata":{"identity":"x"}}}',
        b'{"publishTimestamp":1,"data":{"baseMetadata":{"identity":""}}}',
    ],
)
def test_bad_heartbeats_raise_protocol_error_with_a_reason(payload: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_base_message("koupleless_dev/x/base/heart", payload)
    assert caught.value.what == "HeartMessage"
    assert caught.value.reason


def test_unknown_fields_are_tolerated() -> None:
    noisy = json.loads(json.dumps(HEART))
    noisy["data"]["somethingNew"] = {"deep": [1]}
    noisy["extra"] = True
    assert decode(HeartMessage, _dump(noisy)).data.base_metadata.identity == "10.0.0.12"


def test_envelope_freshness_uses_the_go_cut_off() -> None:
    message = wrap(BaseMetadata(identity="x"), timestamp=1_000_000)
    assert message.is_fresh(now=1_000_000 + MAX_MESSAGE_AGE_MS - 1)
    assert not message.is_fresh(now=1_000_000 + MAX_MESSAGE_AGE_MS)
    assert isinstance(message, Envelope)


def test_status_defaults_are_the_mqtt_heartbeat() -> None:
    status = BaseStatus(base_metadata=BaseMetadata(identity="i"))
    assert json.loads(encode(status)) == {
        "baseMetadata": {"identity": "i", "name": "", "version": "", "clusterName": ""},
        "localIP": "",
        "localHostName": "",
        "port": 0,
        "state": "activated",
    }
