"""The tunnel's decoder: what bases send becomes events; bad input is counted and dropped."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import aiomqtt
import pytest

from module_controller.protocol import BaseMetadata, BaseStatus, encode, now_ms, wrap
from module_controller.settings import Settings
from module_controller.tunnels.decoder import DropReason, MessageDecoder
from module_controller.tunnels.events import (
    BaseHealthReport,
    BaseHeartbeat,
    BaseInventory,
    BizOperationResult,
)
from module_controller.tunnels.mqtt import MqttTunnel, subscriptions

HEART = "koupleless_dev/{id}/base/heart"


def heartbeat(identity: str, timestamp: int | None = None) -> bytes:
    status = BaseStatus(
        base_metadata=BaseMetadata(identity=identity, name="base", version="1.1.1"),
        local_ip="127.0.0.2",
    )
    return encode(wrap(status, timestamp))


@pytest.fixture
def decoder() -> MessageDecoder:
    return MessageDecoder(Settings(max_message_bytes=4096))


def test_a_heartbeat_becomes_an_event(decoder: MessageDecoder) -> None:
    event = decoder.decode(HEART.format(id="b1"), heartbeat("b1"))
    assert isinstance(event, BaseHeartbeat)
    assert event.identity == "b1" and event.status.local_ip == "127.0.0.2"


def test_state_casing_is_tolerated(decoder: MessageDecoder) -> None:
    raw = json.loads(heartbeat("b1"))
    raw["data"]["state"] = "Activated"
    event = decoder.decode(HEART.format(id="b1"), json.dumps(raw).encode())
    assert isinstance(event, BaseHeartbeat) and event.status.is_activated


def test_unknown_fields_are_tolerated(decoder: MessageDecoder) -> None:
    raw = json.loads(heartbeat("b1"))
    raw["data"]["futureField"] = {"x": 1}
    raw["extra"] = True
    assert decoder.decode(HEART.format(id="b1"), json.dumps(raw).encode()) is not None


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (HEART.format(id="b1"), b"{not json", DropReason.MALFORMED),
        (HEART.format(id="b1"), b'{"publishTimestamp": 1}', DropReason.MALFORMED),
        (HEART.format(id="b1"), b"\xff\xfe", DropReason.MALFORMED),
        ("koupleless_dev/b1/base/nonsense", b"{}", DropReason.UNKNOWN_TOPIC),
        ("somewhere/else", b"{}", DropReason.UNKNOWN_TOPIC),
        (HEART.format(id="b1"), b" " * 5000, DropReason.OVERSIZED),
        # Time-stamped payloads are made when the test runs, not when it is collected.
        (HEART.format(id="b1"), lambda: heartbeat("b1", now_ms() - 11_000), DropReason.STALE),
        (HEART.format(id="b1"), lambda: heartbeat("someone-else"), DropReason.IDENTITY_MISMATCH),
        (HEART.format(id="x" * 200), lambda: heartbeat("x" * 200), DropReason.BAD_IDENTITY),
    ],
)
def test_bad_messages_are_dropped_with_a_reason(
    decoder: MessageDecoder, topic: str, payload: bytes | Callable[[], bytes], reason: str
) -> None:
    raw = payload() if callable(payload) else payload
    assert decoder.decode(topic, raw) is None
    assert decoder.dropped == {reason: 1}


def test_a_flood_of_bad_messages_logs_only_a_few_lines(
    decoder: MessageDecoder, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(500):
        decoder.decode(HEART.format(id="b1"), b"garbage")
    assert decoder.dropped[DropReason.MALFORMED] == 500
    assert len(caplog.records) <= 2


def test_inventory_and_health_replies_become_events(decoder: MessageDecoder) -> None:
    inventory = {
        "publishTimestamp": now_ms(),
        "data": [
            {"name": "biz1", "version": "0.0.1", "state": "activated", "latestStateRecord": None}
        ],
    }
    event = decoder.decode("koupleless_dev/b1/base/simpleBiz", json.dumps(inventory).encode())
    assert isinstance(event, BaseInventory) and event.modules[0].name == "biz1"
    health = {
        "publishTimestamp": now_ms(),
        "data": {"code": "SUCCESS", "data": {"healthData": {"jvm": {"java max metaspace": 10}}}},
    }
    event = decoder.decode("koupleless_dev/b1/base/health", json.dumps(health).encode())
    assert isinstance(event, BaseHealthReport) and event.health.jvm is not None
    assert event.health.jvm.java_max_metaspace == 10


def test_older_sofaark_replies_with_empty_state_records_are_not_dropped(
    decoder: MessageDecoder,
) -> None:
    # SOFAArk before 2.2.16 / 3.1.9 writes every BizStateRecord as {} (no getters).
    info = {"bizName": "biz1", "bizVersion": "0.0.1", "bizState": "ACTIVATED"}
    records: dict[str, Any] = {"bizStateRecords": [{}, {}]}
    operation = {
        "publishTimestamp": now_ms(),
        "data": {
            "command": "installBiz",
            "bizName": "biz1",
            "bizVersion": "0.0.1",
            "response": {
                "code": "SUCCESS",
                "data": {"code": "SUCCESS", "bizInfos": [info | records]},
            },
        },
    }
    simple = {
        "publishTimestamp": now_ms(),
        "data": [
            {"name": "biz1", "version": "0.0.1", "state": "activated", "latestStateRecord": {}}
        ],
    }
    legacy = {"publishTimestamp": now_ms(), "data": {"code": "SUCCESS", "data": [info | records]}}
    result = decoder.decode("koupleless_dev/b1/base/bizOperation", json.dumps(operation).encode())
    assert isinstance(result, BizOperationResult) and result.result.response.ok
    for kind, payload in (("simpleBiz", simple), ("biz", legacy)):
        event = decoder.decode(f"koupleless_dev/b1/base/{kind}", json.dumps(payload).encode())
        assert isinstance(event, BaseInventory), kind
        (module,) = event.modules
        assert module.key == "biz1:0.0.1" and module.latest_state_record is None
    assert decoder.dropped == {}


def test_a_failed_health_reply_is_dropped(decoder: MessageDecoder) -> None:
    health = {"publishTimestamp": now_ms(), "data": {"code": "FAILED", "message": "boom"}}
    assert decoder.decode("koupleless_dev/b1/base/health", json.dumps(health).encode()) is None
    assert decoder.dropped == {DropReason.FAILED_REPLY: 1}


def test_the_wildcards_hear_every_base_but_none_of_its_answers() -> None:
    topics = subscriptions("dev")
    assert topics == ["koupleless_dev/+/base/heart", "koupleless_dev/+/base/queryBaseline"]
    assert not any(topic.endswith("/baseline") for topic in topics), "our own publications"


def test_a_bug_while_decoding_costs_one_message_not_the_tunnel(
    decoder: MessageDecoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*_: object) -> None:
        raise RuntimeError("unexpected")

    monkeypatch.setattr("module_controller.tunnels.decoder.decode_base_message", explode)
    assert decoder.decode(HEART.format(id="b1"), heartbeat("b1")) is None
    assert decoder.dropped == {DropReason.MALFORMED: 1}


def test_the_log_line_of_a_huge_bad_message_stays_short(
    caplog: pytest.LogCaptureFixture,
) -> None:
    decoder = MessageDecoder(Settings())
    raw = json.loads(heartbeat("b1"))
    raw["data"]["state"] = "x" * 100_000
    assert decoder.decode(HEART.format(id="b1"), json.dumps(raw).encode()) is None
    assert len(caplog.records) == 1
    assert len(caplog.records[0].getMessage()) < 1000


class _ClientTimingOutOnExit:
    """Connects, then never delivers; on exit fails like an unacknowledged DISCONNECT."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[object] = asyncio.Queue()  # read first (mqtt_incoming.py)
        self._client = SimpleNamespace(socket=lambda: None)  # paho's, with no socket here

    async def __aenter__(self) -> _ClientTimingOutOnExit:
        return self

    async def __aexit__(self, *_: object) -> None:
        raise aiomqtt.MqttError("Operation timed out")

    async def subscribe(self, *_: object, **__: object) -> None:
        return None

    @property
    def messages(self) -> AsyncIterator[object]:
        async def never() -> AsyncIterator[object]:
            await asyncio.Event().wait()
            yield None

        return never()


async def test_a_cancelled_tunnel_stops_even_if_disconnecting_fails() -> None:
    async def deliver(_: object) -> None:
        return None

    tunnel = MqttTunnel(Settings(), deliver)
    tunnel._new_client = _ClientTimingOutOnExit  # type: ignore[assignment,method-assign]
    task = asyncio.create_task(tunnel.run())
    await asyncio.wait_for(tunnel.connected.wait(), timeout=5)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    assert task in done, "the tunnel took the failed DISCONNECT for a lost connection"
    assert task.cancelled()


async def test_the_messages_of_another_replicas_base_are_not_decoded_but_its_heartbeat_is() -> None:
    """Every replica hears every base's heartbeat; the rest of what another replica's base
    sends (its health too: a replica taking it over reads its memory from the node) is
    that replica's to decode."""
    delivered: list[object] = []

    async def deliver(event: object) -> None:
        delivered.append(event)

    tunnel = MqttTunnel(Settings(), deliver, not_ours=lambda identity: identity == "theirs")
    inventory = json.dumps({"publishTimestamp": now_ms(), "data": []}).encode()
    await tunnel._dispatch("koupleless_dev/theirs/base/simpleBiz", inventory)
    assert delivered == []
    await tunnel._dispatch("koupleless_dev/theirs/base/heart", heartbeat("theirs"))
    health = {
        "publishTimestamp": now_ms(),
        "data": {"code": "SUCCESS", "data": {"healthData": {"jvm": {"java max metaspace": 10}}}},
    }
    await tunnel._dispatch("koupleless_dev/theirs/base/health", json.dumps(health).encode())
    await tunnel._dispatch("koupleless_dev/mine/base/health", json.dumps(health).encode())
    await tunnel._dispatch("koupleless_dev/mine/base/simpleBiz", inventory)
    kinds = [type(e).__name__ for e in delivered]
    assert kinds == ["BaseHeartbeat", "BaseHealthReport", "BaseInventory"], kinds
    assert [getattr(e, "identity", None) for e in delivered] == ["theirs", "mine", "mine"]
