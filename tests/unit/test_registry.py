"""Liveness rules of the base registry, on a clock the test controls."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from module_controller.protocol import BaseMetadata, BaseStatus, HealthData
from module_controller.protocol.health import HealthBizInfo, JvmInfo
from module_controller.protocol.states import BizState
from module_controller.registry import BaseRegistry
from module_controller.settings import Settings


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def status(
    identity: str, state: BizState = BizState.ACTIVATED, version: str = "1.1.1"
) -> BaseStatus:
    return BaseStatus(
        base_metadata=BaseMetadata(
            identity=identity, name="base", version=version, cluster_name="default"
        ),
        local_ip="127.0.0.9",
        local_host_name="host",
        state=state,
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry(clock: Clock) -> BaseRegistry:
    registry = BaseRegistry(Settings(max_bases=3), clock=clock)
    registry.broker_up()
    return registry


def test_first_heartbeat_creates_a_node(registry: BaseRegistry) -> None:
    assert registry.heartbeat("b1", status("b1")) == ["virtual-node-b1"]
    record = registry.base_of_node("virtual-node-b1")
    assert record is not None and record.ready and record.ip == "127.0.0.9"


def test_a_repeated_identical_heartbeat_changes_nothing(registry: BaseRegistry) -> None:
    registry.heartbeat("b1", status("b1"))
    assert registry.heartbeat("b1", status("b1")) == []


def test_a_changed_heartbeat_resyncs_the_node(registry: BaseRegistry) -> None:
    registry.heartbeat("b1", status("b1"))
    assert registry.heartbeat("b1", status("b1", version="1.1.2")) == ["virtual-node-b1"]


def test_silence_makes_the_node_not_ready_then_gone(registry: BaseRegistry, clock: Clock) -> None:
    registry.heartbeat("b1", status("b1"))
    clock.now += 24
    assert registry.tick() == []
    clock.now += 1
    assert registry.tick() == ["virtual-node-b1"]
    record = registry.base_of_node("virtual-node-b1")
    assert (
        record is not None and not record.ready and "no heartbeat" in str(record.not_ready_reason)
    )
    assert registry.tick() == [], "NotReady is reported once"
    clock.now += 35
    assert registry.tick() == ["virtual-node-b1"]
    assert registry.base_of_node("virtual-node-b1") is None


def test_a_heartbeat_brings_a_silent_base_back(registry: BaseRegistry, clock: Clock) -> None:
    registry.heartbeat("b1", status("b1"))
    clock.now += 30
    registry.tick()
    assert registry.heartbeat("b1", status("b1")) == ["virtual-node-b1"]
    record = registry.base_of_node("virtual-node-b1")
    assert record is not None and record.ready


def test_a_deactivated_heartbeat_removes_the_node_at_once(registry: BaseRegistry) -> None:
    registry.heartbeat("b1", status("b1"))
    assert registry.heartbeat("b1", status("b1", BizState.DEACTIVATED)) == ["virtual-node-b1"]
    assert registry.base_of_node("virtual-node-b1") is None
    assert registry.heartbeat("b2", status("b2", BizState.DEACTIVATED)) == []


def test_liveness_clocks_stop_while_the_broker_is_down(
    registry: BaseRegistry, clock: Clock
) -> None:
    registry.heartbeat("b1", status("b1"))
    registry.broker_down()
    clock.now += 600
    assert registry.tick() == [], "no base may be judged while we cannot hear it"
    registry.broker_up()
    assert registry.tick() == []
    clock.now += 24
    assert registry.tick() == [], "after reconnect every base gets a full grace period"
    clock.now += 1
    assert registry.tick() == ["virtual-node-b1"]


def test_the_cap_refuses_a_flood_of_identities(registry: BaseRegistry) -> None:
    for number in range(3):
        assert registry.heartbeat(f"b{number}", status(f"b{number}"))
    assert registry.heartbeat("intruder", status("intruder")) == []
    assert len(registry.bases) == 3
    assert registry.heartbeat("b0", status("b0")) == [], "known bases are still heard"


def test_adopted_nodes_get_a_grace_period_then_go(registry: BaseRegistry, clock: Clock) -> None:
    registry.adopt("old", status("old"), "virtual-node-old")
    clock.now += 59
    assert registry.tick() == ["virtual-node-old"]  # NotReady
    clock.now += 1
    assert registry.tick() == ["virtual-node-old"]  # gone
    assert registry.base_of_node("virtual-node-old") is None


def test_an_adopted_base_that_speaks_keeps_its_node(registry: BaseRegistry) -> None:
    registry.adopt("old", status("old"), "virtual-node-old")
    assert registry.heartbeat("old", status("old")) == ["virtual-node-old"]
    assert registry.heartbeat("old", status("old")) == []


def test_health_sets_memory_from_metaspace(registry: BaseRegistry) -> None:
    registry.heartbeat("b1", status("b1"))
    health = HealthData(
        jvm=JvmInfo(java_max_metaspace=512 << 20, java_committed_metaspace=100 << 20)
    )
    assert registry.health("b1", health) == ["virtual-node-b1"]
    record = registry.base_of_node("virtual-node-b1")
    assert record is not None
    assert record.memory_capacity_bytes == 512 << 20
    assert record.memory_allocatable_bytes == 412 << 20
    assert registry.health("b1", health) == [], "unchanged memory is not rewritten"


def test_unbounded_metaspace_is_ignored(registry: BaseRegistry) -> None:
    registry.heartbeat("b1", status("b1"))
    assert registry.health("b1", HealthData(jvm=JvmInfo(java_max_metaspace=-1))) == []


def test_a_stopped_master_biz_means_the_base_is_gone(registry: BaseRegistry) -> None:
    registry.heartbeat("b1", status("b1"))
    health = HealthData(
        master_biz_info=HealthBizInfo(
            biz_name="base", biz_version="1", biz_state=BizState.DEACTIVATED
        )
    )
    assert registry.health("b1", health) == ["virtual-node-b1"]
    assert registry.base_of_node("virtual-node-b1") is None


def _fleet(clock: Clock, count: int, **settings: float) -> BaseRegistry:
    registry = BaseRegistry(Settings(**settings), clock=clock)  # type: ignore[arg-type]
    registry.broker_up()
    for number in range(count):
        registry.heartbeat(f"b{number}", status(f"b{number}"))
    return registry


def _keep_alive(registry: BaseRegistry, identities: range) -> None:
    for number in identities:
        registry.heartbeat(f"b{number}", status(f"b{number}"))


def test_a_suspect_broker_stops_the_clocks_like_a_lost_one(clock: Clock) -> None:
    registry = _fleet(clock, 1)
    registry.broker_suspect()
    clock.now += 600
    assert registry.tick() == [], "a broker that delivers nothing says nothing about bases"
    registry.broker_delivers()
    clock.now += 24
    assert registry.tick() == [], "once it delivers again, every base gets a full grace"
    clock.now += 1
    assert registry.tick() == ["virtual-node-b0"]


def test_a_reconnect_alone_does_not_resume_a_suspect_broker(clock: Clock) -> None:
    registry = _fleet(clock, 1)
    registry.broker_suspect()
    registry.broker_down()
    registry.broker_up()
    assert registry.liveness_paused, "connected but not yet proven to deliver"
    registry.broker_delivers()
    assert not registry.liveness_paused


def test_a_mass_silence_keeps_nodes_until_the_bound(clock: Clock) -> None:
    registry = _fleet(clock, 5, mass_silence_max_seconds=300)
    clock.now += 30
    _keep_alive(registry, range(1))  # 4 of 5 (80 %) fall silent together
    changed = registry.tick()
    assert len(changed) == 4, "they may go NotReady"
    assert registry.mass_silence
    clock.now += 100
    _keep_alive(registry, range(1))
    assert registry.tick() == [], "silent for 130 s, past the dead time, yet nothing deleted"
    assert len(registry.bases) == 5
    clock.now += 200
    _keep_alive(registry, range(1))
    gone = registry.tick()
    assert len(gone) == 4, "past MASS_SILENCE_MAX_SECONDS the silent bases are taken for dead"
    assert "has been silent" in registry.departures[gone[0]]


def test_a_mass_silence_ends_when_the_bases_are_heard(clock: Clock) -> None:
    registry = _fleet(clock, 5)
    clock.now += 70
    _keep_alive(registry, range(1))
    registry.tick()
    assert registry.mass_silence and len(registry.bases) == 5
    _keep_alive(registry, range(5))
    assert sorted(registry.tick()) == []
    assert not registry.mass_silence
    assert all(record.ready for record in registry.bases.values())


def test_bases_dying_one_by_one_are_not_a_mass_silence(clock: Clock) -> None:
    registry = _fleet(clock, 4)
    for number in range(3):  # one base stops every 30 s, the rest keep beating
        clock.now += 30
        _keep_alive(registry, range(number + 1, 4))
        registry.tick()
        assert not registry.mass_silence
    clock.now += 40
    _keep_alive(registry, range(3, 4))
    registry.tick()
    assert set(registry.bases) == {"b3"}, "each silent base went at its own dead time"


def test_a_single_base_that_dies_is_deleted(clock: Clock) -> None:
    registry = _fleet(clock, 1)
    clock.now += 60
    assert registry.tick() == ["virtual-node-b0"]
    assert not registry.bases


def test_adopting_keeps_the_memory_the_node_showed(registry: BaseRegistry) -> None:
    registry.adopt("old", status("old"), "virtual-node-old", memory=(512 << 20, 400 << 20))
    record = registry.base_of_node("virtual-node-old")
    assert record is not None
    assert (record.memory_capacity_bytes, record.memory_allocatable_bytes) == (512 << 20, 400 << 20)
