"""Heartbeats that repeat a base's last one but for their timestamp are not decoded again
(module_controller/tunnels/repeats.py): the decoder must answer exactly as a full decode
would, age check included, and decode in full anything that differs in any other byte."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from module_controller.protocol import (
    BaseMetadata,
    BaseStatus,
    decode_base_message,
    encode,
    now_ms,
    wrap,
)
from module_controller.settings import Settings
from module_controller.tunnels import decoder as decoder_module
from module_controller.tunnels.decoder import DropReason, MessageDecoder
from module_controller.tunnels.events import BaseHeartbeat
from module_controller.tunnels.repeats import Cut, RepeatedHeartbeats, cut_timestamp

HEART = "koupleless_dev/b1/base/heart"


def beat(timestamp: int, version: str = "1.1.1", identity: str = "b1") -> bytes:
    status = BaseStatus(
        base_metadata=BaseMetadata(identity=identity, name="base", version=version),
        local_ip="127.0.0.2",
    )
    return encode(wrap(status, timestamp))


@pytest.fixture
def full_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = decode_base_message

    def counted(topic: str, payload: bytes | str) -> Any:
        calls.append(topic)
        return real(topic, payload)

    monkeypatch.setattr(decoder_module, "decode_base_message", counted)
    return calls


def test_a_repeat_is_known_without_decoding_and_is_the_same_event(
    full_decodes: list[str],
) -> None:
    decoder = MessageDecoder(Settings())
    start = now_ms() - 5_000
    events = [decoder.decode(HEART, beat(start + n * 1_000)) for n in range(5)]
    assert len(full_decodes) == 1
    assert all(isinstance(event, BaseHeartbeat) for event in events)
    assert {event.identity for event in events if isinstance(event, BaseHeartbeat)} == {"b1"}
    assert events[1:] == [events[0]] * 4


def test_a_stale_repeat_is_dropped_as_a_full_decode_drops_it(full_decodes: list[str]) -> None:
    decoder = MessageDecoder(Settings())
    assert decoder.decode(HEART, beat(now_ms())) is not None
    assert decoder.decode(HEART, beat(now_ms() - 11_000)) is None
    assert decoder.dropped[DropReason.STALE] == 1
    assert len(full_decodes) == 1  # dropped from the bytes, as a repeat


def test_a_heartbeat_that_changed_is_decoded_again_and_says_what_changed(
    full_decodes: list[str],
) -> None:
    decoder = MessageDecoder(Settings())
    decoder.decode(HEART, beat(now_ms()))
    event = decoder.decode(HEART, beat(now_ms(), version="1.1.2"))
    assert isinstance(event, BaseHeartbeat) and event.status.base_metadata.version == "1.1.2"
    again = decoder.decode(HEART, beat(now_ms(), version="1.1.2"))
    assert again == event
    assert len(full_decodes) == 2


def test_the_same_bytes_on_another_topic_are_decoded_there(full_decodes: list[str]) -> None:
    decoder = MessageDecoder(Settings())
    decoder.decode(HEART, beat(now_ms()))
    # Another base publishing b1's heartbeat: refused, as a full decode refuses it.
    assert decoder.decode("koupleless_dev/b2/base/heart", beat(now_ms())) is None
    assert decoder.dropped[DropReason.IDENTITY_MISMATCH] == 1
    assert len(full_decodes) == 2


def _variants() -> list[Callable[[int], bytes]]:
    """Payloads a base (or an impostor) may send, in shapes the byte matching must not
    misread: spacing, member order, a nested or escaped key, a timestamp not a number."""

    def shaped(timestamp: int, **changes: Any) -> bytes:
        raw = json.loads(beat(timestamp))
        raw.update(changes)
        return json.dumps(raw).encode()

    def data_first(timestamp: int) -> bytes:
        raw = json.loads(beat(timestamp))
        return json.dumps({"data": raw["data"], "publishTimestamp": timestamp}).encode()

    def nested_key(timestamp: int) -> bytes:
        raw = json.loads(beat(timestamp))
        raw["data"]["publishTimestamp"] = now_ms() - 60_000
        return json.dumps(raw).encode()

    def escaped_key(timestamp: int) -> bytes:
        raw = json.loads(beat(timestamp))
        raw["data"]["baseMetadata"]["name"] = '"publishTimestamp": 1,'
        return json.dumps(raw).encode()

    def escaped_duplicate(timestamp: int) -> bytes:
        # The same key again, spelled with an escape: JSON keeps the last one, the stale one.
        head = beat(timestamp)[:-1]
        return head + b',"\\u0070ublishTimestamp":' + str(now_ms() - 60_000).encode() + b"}"

    def plain_duplicate(timestamp: int) -> bytes:
        head = beat(timestamp)[:-1]
        return head + b',"publishTimestamp":' + str(now_ms() - 60_000).encode() + b"}"

    return [
        escaped_duplicate,
        plain_duplicate,
        lambda timestamp: beat(timestamp),
        lambda timestamp: shaped(timestamp),  # json.dumps spacing
        data_first,
        nested_key,
        escaped_key,
        lambda timestamp: shaped(timestamp, publishTimestamp=str(timestamp)),
        lambda timestamp: shaped(timestamp, publishTimestamp=timestamp + 0.5),
        lambda timestamp: beat(timestamp, identity="b2"),
    ]


@pytest.mark.parametrize("ages", [(3_000, 2_000, 1_000), (3_000, 11_000, 0), (0, 0, 0)])
@pytest.mark.parametrize("variant", range(len(_variants())))
def test_every_answer_is_the_one_a_full_decode_gives(variant: int, ages: tuple[int, ...]) -> None:
    make = _variants()[variant]
    remembering = MessageDecoder(Settings())
    for age in ages:
        payload = make(now_ms() - age)
        fresh = MessageDecoder(Settings())  # remembers nothing: decodes in full
        dropped_before = remembering.dropped.copy()
        assert remembering.decode(HEART, payload) == fresh.decode(HEART, payload)
        assert remembering.dropped - dropped_before == fresh.dropped


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"publishTimestamp":12,"data":{}}', Cut(12, b'{"publishTimestamp":', b',"data":{}}')),
        (
            b'{"data": {}, "publishTimestamp" : -5 }',
            Cut(-5, b'{"data": {}, "publishTimestamp" : ', b" }"),
        ),
        (b'{"publishTimestamp":"12","data":{}}', None),
        (b'{"publishTimestamp":1.5,"data":{}}', None),
        (b'{"publishTimestamp":1e3,"data":{}}', None),
        (b'{"publishTimestamp":012,"data":{}}', None),  # not JSON: a full decode says so
        (b'{"publishTimestamp":9223372036854775808,"data":{}}', None),  # past a Java long
        (b'{"data":{}}', None),
    ],
)
def test_the_timestamp_is_cut_only_where_it_is_a_plain_integer(
    payload: bytes, expected: Cut | None
) -> None:
    assert cut_timestamp(payload) == expected


def test_what_is_remembered_is_bounded() -> None:
    repeats = RepeatedHeartbeats(limit=3)
    for n in range(10):
        topic = f"koupleless_dev/b{n}/base/heart"
        event = BaseHeartbeat(f"b{n}", BaseStatus(base_metadata=BaseMetadata(identity=f"b{n}")))
        repeats.remember(topic, b'{"publishTimestamp":1,"data":{}}', 1, event)
    assert len(repeats._last) <= 3
    assert repeats.known("koupleless_dev/b9/base/heart", b'{"publishTimestamp":2,"data":{}}')


@pytest.mark.parametrize("spelled", [b'"publishTimestamp"', b'"\\u0070ublishTimestamp"'])
def test_a_duplicate_key_that_decoding_keeps_is_the_one_the_age_is_checked_on(
    spelled: bytes,
) -> None:
    # Both keys agree at first; later only the first one moves: JSON keeps the last (now
    # stale), so the message must be dropped, as a full decode drops it.
    clock = [1_000_000]
    decoder = MessageDecoder(Settings(), clock=lambda: clock[0])

    def payload(first: int, last: int) -> bytes:
        return beat(first)[:-1] + b"," + spelled + b":" + str(last).encode() + b"}"

    assert decoder.decode(HEART, payload(995_000, 995_000)) is not None
    clock[0] += 6_000
    assert decoder.decode(HEART, payload(clock[0], 995_000)) is None
    assert decoder.dropped[DropReason.STALE] == 1


def test_digits_a_full_decode_refuses_are_not_taken_for_a_repeat() -> None:
    decoder = MessageDecoder(Settings())
    timestamp = now_ms()
    assert decoder.decode(HEART, beat(timestamp)) is not None
    padded = beat(timestamp).replace(str(timestamp).encode(), b"0" + str(timestamp).encode())
    huge = beat(timestamp).replace(str(timestamp).encode(), b"9" * 19)
    assert decoder.decode(HEART, padded) is None
    assert decoder.decode(HEART, huge) is None
    assert decoder.dropped[DropReason.MALFORMED] == 2


def test_what_is_remembered_of_a_padded_heartbeat_is_small() -> None:
    repeats = RepeatedHeartbeats(limit=10)
    raw = json.loads(beat(now_ms()))
    raw["padding"] = "x" * 500_000
    payload = json.dumps(raw).encode()
    event = BaseHeartbeat("b1", BaseStatus(base_metadata=BaseMetadata(identity="b1")))
    repeats.remember(HEART, payload, raw["publishTimestamp"], event)
    remembered, _ = repeats._last[HEART]
    assert len(remembered) <= 64
    later = raw["publishTimestamp"] + 1
    again = payload.replace(str(raw["publishTimestamp"]).encode(), str(later).encode())
    assert repeats.known(HEART, again) == (later, event)
