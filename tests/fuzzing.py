"""Hypothesis strategies for what a hostile or broken base may publish, and validity checks.

Shared by the decoder/registry unit fuzz test and the end-to-end fuzz test: heartbeat and
health payloads of the right shape with hostile values (huge, unicode, control characters,
lone surrogates, numbers out of every range), and payloads that are not even JSON.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

from hypothesis import strategies as st

from module_controller.protocol import now_ms

MAX_LABEL_VALUE = 63
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

# Strings that broke, or nearly broke, something somewhere.
EDGE_STRINGS = [
    "",
    " ",
    "-",
    ".",
    "..",
    "_",
    "a" * 63,
    "a" * 64,
    "a" * 254,
    "-leading",
    "trailing.",
    "UPPER",
    "with space",
    "tab\there",
    "new\nline",
    "nul\x00byte",
    "\x7f\x1b[31mred",
    "ünïcödé",
    "名前",
    "🙂",
    "\u200b",
    "\ud800",
    "a\udfffb",
    "%s%n{}{0}",
    "$(reboot)",
    "../../etc/passwd",
    "null",
    "true",
    "0",
    "-1",
    "1e999",
    "NaN",
    "999.999.999.999",
    "1.2.3",
    "1.2.3.4.5",
    "01.02.03.04",
    " 10.0.0.1",
    "10.0.0.1\n",
    "::1",
    "0:0::1",
    "::ffff:10.0.0.1",
    "fe80::1%eth0",
    "[::1]",
    "10.0.0.1/8",
    "localhost",
    "Host_Name.Example.COM",
    "koupleless_dev/x/base/heart",
    "+",
    "#",
]

# Every Unicode character, including control characters and lone surrogates (which JSON can
# carry as \ud800 escapes, and which Python then cannot encode as UTF-8).
any_character = st.one_of(st.characters(), st.characters(categories=["Cs"]))

hostile_text: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(EDGE_STRINGS),
    st.text(any_character, max_size=80),
    st.text(st.characters(codec="ascii"), max_size=80),
    # Huge, but cheap to generate: a short piece repeated.
    st.builds(
        lambda piece, times: piece * times, st.text(min_size=1, max_size=4), st.integers(60, 70_000)
    ),
)

# (Integers past 4,300 digits cannot even be repr()ed; broken_payloads sends those as bytes.)
huge_integers = st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**400, -(10**400)])
hostile_numbers: st.SearchStrategy[Any] = st.one_of(
    st.integers(),
    huge_integers,
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1, 0.5, True, False]),
)

json_scalars: st.SearchStrategy[Any] = st.one_of(
    st.none(), st.booleans(), hostile_numbers, hostile_text
)
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=6,
)


def rare(draw: st.DrawFn, percent: int) -> bool:
    """True about `percent` times in a hundred; Hypothesis favours the ends of a range, and
    those are False."""
    return draw(st.integers(0, 101)) in range(1, percent + 1)


def mostly(usual: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """The usual kind of value, or (one time in ten) anything JSON can hold."""
    return st.one_of(*[usual] * 9, json_values)


identities: st.SearchStrategy[str] = st.one_of(
    st.uuids().map(str),
    st.uuids().map(str),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=4).map(str),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{120,140}", fullmatch=True),
    st.sampled_from(EDGE_STRINGS),
    st.text(any_character, max_size=40),
).filter(lambda text: "/" not in text)
ips: st.SearchStrategy[str] = st.one_of(
    st.ip_addresses().map(str), hostile_text, st.sampled_from(EDGE_STRINGS[-16:])
)
host_names: st.SearchStrategy[str] = st.one_of(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9.-]{0,40}[A-Za-z0-9]", fullmatch=True), hostile_text
)
states: st.SearchStrategy[str | int] = st.one_of(
    st.sampled_from(["activated", "ACTIVATED", "Activated", " activated ", "3", 3]),
    st.sampled_from(["activated", "ACTIVATED", "Activated", " activated ", "3", 3]),
    st.sampled_from(["deactivated", "BROKEN", "stopped", "resolved", "4", 4, 99]),
    hostile_text,
)


@st.composite
def timestamps(draw: st.DrawFn) -> Any:
    """Mostly fresh (filled in when the payload is built), sometimes anything."""
    if not rare(draw, 10):
        return None  # "now", at publish time
    return draw(st.one_of(hostile_numbers, json_values))


def _maybe(draw: st.DrawFn, document: dict[str, Any], key: str, value: Any) -> None:
    """Set the key, or leave it out (one time in five)."""
    if not rare(draw, 20):
        document[key] = value


@st.composite
def heartbeat_documents(draw: st.DrawFn, identity: str) -> dict[str, Any]:
    """A heartbeat envelope, valid in shape, with hostile values; timestamp None = now.

    Three in four have every value of the right JSON type (hostile strings and numbers, so
    most reach the registry); the rest may have anything anywhere.
    """
    wild = rare(draw, 25)

    def pick(usual: st.SearchStrategy[Any]) -> Any:
        return draw(mostly(usual) if wild else usual)

    metadata: dict[str, Any] = {"identity": identity}
    for key in ("name", "version", "clusterName"):
        _maybe(draw, metadata, key, pick(hostile_text))
    data: dict[str, Any] = {"baseMetadata": metadata}
    _maybe(draw, data, "localIP", pick(ips))
    _maybe(draw, data, "localHostName", pick(host_names))
    _maybe(draw, data, "port", pick(st.one_of(st.integers(), huge_integers)))
    _maybe(draw, data, "state", pick(states))
    if draw(st.booleans()):
        data[draw(st.text(max_size=12))] = draw(json_values)  # unknown fields
    return {"publishTimestamp": draw(timestamps()), "data": data}


@st.composite
def health_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A health reply with hostile metaspace numbers and master biz state (typed 3 in 4)."""
    wild = rare(draw, 25)

    def pick(usual: st.SearchStrategy[Any]) -> Any:
        return draw(mostly(usual) if wild else usual)

    sizes = st.one_of(st.integers(), st.integers(0, 2**40), huge_integers)
    jvm: dict[str, Any] = {}
    for key in ("java max metaspace", "java committed metaspace", "java used metaspace"):
        _maybe(draw, jvm, key, pick(sizes))
    _maybe(draw, jvm, "loaded class count", pick(sizes))
    health_data: dict[str, Any] = {"jvm": jvm}
    if draw(st.booleans()):
        health_data["masterBizInfo"] = {
            "bizName": pick(hostile_text),
            "bizVersion": pick(hostile_text),
            "bizState": pick(states),
        }
    reply = {
        "code": pick(st.sampled_from(["SUCCESS", "SUCCESS", "FAILED", "success"])),
        "message": pick(hostile_text),
        "data": {"healthData": health_data},
    }
    return {"publishTimestamp": draw(timestamps()), "data": reply}


def stamped(document: dict[str, Any]) -> dict[str, Any]:
    """The document with a timestamp of None replaced by now."""
    if document.get("publishTimestamp", 0) is None:
        return {**document, "publishTimestamp": now_ms()}
    return document


def to_bytes(document: Any) -> bytes:
    """JSON as a Java base might send it (lone surrogates become \\ud800 escapes)."""
    return json.dumps(document, ensure_ascii=True, allow_nan=True).encode()


@st.composite
def broken_payloads(draw: st.DrawFn, valid: bytes) -> bytes:
    """Bytes that are not a valid message: truncated, corrupted, nested to death, or random."""
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return valid[: draw(st.integers(0, max(len(valid) - 1, 0)))]
    if kind == 1:
        return draw(st.binary(max_size=200))
    if kind == 2:
        depth = draw(st.integers(100, 200_000))
        opener = draw(st.sampled_from(["[", '{"a":', '{"publishTimestamp":1,"data":[']))
        return (opener * depth).encode()
    if kind == 3:
        return to_bytes(draw(json_values))
    if kind == 4:
        position = draw(st.integers(0, max(len(valid) - 1, 0)))
        junk = draw(st.binary(min_size=1, max_size=8))
        return valid[:position] + junk + valid[position + 1 :]
    return b'{"publishTimestamp":' + b"9" * draw(st.integers(4000, 6000)) + b',"data":{}}'


def is_dns_subdomain(name: str) -> bool:
    """RFC 1123 subdomain as Kubernetes checks node names."""
    return 0 < len(name) <= 253 and all(DNS_LABEL.fullmatch(part) for part in name.split("."))


def is_label_value(value: str) -> bool:
    return len(value) <= MAX_LABEL_VALUE and bool(LABEL_VALUE.fullmatch(value))


def is_ip(value: str) -> bool:
    """A plain IPv4 or IPv6 address in canonical form (no zone, no prefix, no padding)."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return False
    return "%" not in value and str(address) == value
