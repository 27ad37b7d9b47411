"""A node's conditions and memory do not move without a cause (no flapping on restart)."""

from __future__ import annotations

import datetime

from module_controller.protocol import BaseMetadata, BaseStatus
from module_controller.registry import BaseRecord
from module_controller.settings import Settings
from module_controller.vnode_manifest import (
    memory_of,
    node_conditions,
    node_manifest,
    transitions_of,
)

SETTINGS = Settings()
EARLY = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
LATER = EARLY + datetime.timedelta(hours=1)


def record(**fields: object) -> BaseRecord:
    status = BaseStatus(
        base_metadata=BaseMetadata(identity="b1", name="base", version="1", cluster_name="c"),
        local_ip="127.0.0.9",
        local_host_name="host",
    )
    base = BaseRecord(identity="b1", status=status, node_name="virtual-node-b1", last_seen=0)
    for name, value in fields.items():
        setattr(base, name, value)
    return base


def ready_condition(conditions: list[dict[str, str]]) -> dict[str, str]:
    return next(c for c in conditions if c["type"] == "Ready")


def test_last_transition_time_moves_only_on_a_transition() -> None:
    first = node_conditions(record(), EARLY)
    previous = transitions_of({"status": {"conditions": first}})
    again = node_conditions(record(), LATER, previous)
    assert ready_condition(again)["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert ready_condition(again)["lastHeartbeatTime"] == "2026-01-01T01:00:00Z"
    assert all(c["lastTransitionTime"] == "2026-01-01T00:00:00Z" for c in again)
    down = node_conditions(record(not_ready_reason="silent"), LATER, previous)
    assert ready_condition(down)["lastTransitionTime"] == "2026-01-01T01:00:00Z"


def test_an_adopted_node_keeps_the_memory_its_base_reported() -> None:
    shown = node_manifest(
        record(memory_capacity_bytes=512 << 20, memory_allocatable_bytes=400 << 20), SETTINGS
    )
    assert shown["status"]["capacity"]["memory"] == "524288Ki"
    assert memory_of(shown, SETTINGS) == (512 << 20, 400 << 20)
    default = node_manifest(record(), SETTINGS)
    assert memory_of(default, SETTINGS) is None, "the default is not a base's report"
    restored = node_manifest(
        record(memory_capacity_bytes=512 << 20, memory_allocatable_bytes=400 << 20), SETTINGS
    )
    assert restored["status"]["capacity"] == shown["status"]["capacity"]
