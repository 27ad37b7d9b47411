"""Node names and label values are valid whatever a base sends."""

from __future__ import annotations

import re

import pytest

from module_controller import naming

LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?)?$")


def test_a_plain_uuid_keeps_the_seeds_node_name() -> None:
    identity = "5422018d-3722-4b10-b954-01a3bcbef381"
    assert naming.node_name("virtual-node-{identity}", identity, "dev") == (
        f"virtual-node-{identity}"
    )


def test_the_go_controllers_template_keeps_ip_identities() -> None:
    assert naming.node_name("vnode.{identity}.{env}", "10.0.0.12", "dev") == "vnode.10.0.0.12.dev"


@pytest.mark.parametrize(
    "identity",
    ["ABC_def", "base:1", "UPPER", "a..b", "x" * 300, "trailing-", "dot.", "ünïcode"],
)
def test_sanitised_names_are_dns_subdomains_with_a_hash(identity: str) -> None:
    name = naming.node_name("virtual-node-{identity}", identity, "dev")
    assert naming.is_dns_subdomain(name), name
    assert re.search(r"-[0-9a-f]{8}$", name), f"{name} should end in a hash of the original"


def test_identities_that_sanitise_alike_get_different_nodes() -> None:
    first = naming.node_name("virtual-node-{identity}", "Base_A", "dev")
    second = naming.node_name("virtual-node-{identity}", "base-a", "dev")
    third = naming.node_name("virtual-node-{identity}", "BASE_A", "dev")
    assert len({first, second, third}) == 3


@pytest.mark.parametrize("value", ["1.1.1", "base", "", "a" * 63, "a b", "x" * 64, "-v-", "版本"])
def test_label_values_are_always_valid(value: str) -> None:
    cleaned = naming.label_value(value)
    assert len(cleaned) <= 63
    assert LABEL_VALUE.match(cleaned), cleaned


def test_valid_label_values_are_kept_as_they_are() -> None:
    assert naming.label_value("0.0.1-SNAPSHOT") == "0.0.1-SNAPSHOT"


@pytest.mark.parametrize(
    ("identity", "reason"),
    [
        ("", "empty"),
        ("a" * 129, "129 characters"),
        ("a/b", "may only"),
        ("+", "may only"),
        ("a b", "may only"),
    ],
)
def test_bad_identities_are_refused_with_a_reason(identity: str, reason: str) -> None:
    explanation = naming.invalid_identity_reason(identity)
    assert explanation is not None and reason in explanation


@pytest.mark.parametrize(
    "identity", ["10.0.0.12", "5422018d-3722-4b10-b954-01a3bcbef381", "base-web_1:8080"]
)
def test_ordinary_identities_are_accepted(identity: str) -> None:
    assert naming.invalid_identity_reason(identity) is None
