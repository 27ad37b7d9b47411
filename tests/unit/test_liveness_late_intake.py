"""An operator that reads its messages late (its probe comes back late) is deaf, and its
bases are not silent: liveness pauses while it is behind, then resumes where it stopped."""

from __future__ import annotations

import logging

import pytest

from module_controller.registry import BaseRegistry
from module_controller.settings import Settings
from tests.unit.test_liveness_under_broker_faults import (
    Clock,
    FakeTunnel,
    Judge,
    deleted,
    fleet,
    judging_controller,
    status,
)


def judged_fleet(size: int) -> tuple[Clock, BaseRegistry, FakeTunnel, Judge]:
    clock = Clock()
    settings = Settings()
    registry = fleet(settings, clock, size)
    tunnel = FakeTunnel(clock, last_delivery=clock.now, probe_returned=True)
    return clock, registry, tunnel, judging_controller(settings, registry, tunnel)


def second(clock: Clock, tunnel: FakeTunnel, controller: Judge, lag: float) -> None:
    """A second in which messages keep coming, `lag` seconds late."""
    clock.now += 1
    tunnel.last_delivery = clock.now
    tunnel.intake_lag = lag
    controller._judge_broker()


def test_heartbeats_only_late_turn_no_node_not_ready(caplog: pytest.LogCaptureFixture) -> None:
    """The operator falls 40 s behind and catches up again (a box short of CPU): every
    heartbeat meanwhile is dropped as stale, or read late. Without the pause all four nodes
    went NotReady at 25 s, though their bases never stopped."""
    clock, registry, tunnel, controller = judged_fleet(4)
    lags = [float(lag) for lag in range(41)] + [float(lag) for lag in range(40, -1, -2)]
    with caplog.at_level(logging.INFO):
        for lag in lags:
            second(clock, tunnel, controller, lag)
            assert registry.tick() == [], f"a node turned NotReady at a lag of {lag:.0f}s"
    assert not registry.liveness_paused, "liveness never resumed"
    assert controller.health.ready, "a late intake is no broker fault: /readyz stays ready"
    behind = [r.message for r in caplog.records if "reads MQTT messages 10s late" in r.message]
    assert len(behind) == 1, "the log must say once that messages come late"
    assert "in time again" in caplog.text
    sample = controller.dispatcher.metrics.registry.get_sample_value
    assert sample("module_controller_mqtt_intake_lag_seconds") == 0.0


def test_after_a_late_intake_a_dead_base_keeps_its_stopped_clock() -> None:
    """b1 died at the start, b0 lives (its heartbeats arrive, late). The operator falls
    behind from 8 s on for two minutes. Its clock only stopped: b1 goes NotReady once it
    has been silent 25 s in all while the intake was current, not a fresh 25 s later."""
    clock, registry, tunnel, controller = judged_fleet(2)
    not_ready_at = None
    for at in range(1, 200):
        behind = 8 <= at < 128
        second(clock, tunnel, controller, 12.0 if behind else 0.0)
        if at % 10 == 0:
            registry.heartbeat("b0", status("b0"))
        changed = registry.tick()
        if "virtual-node-b1" in changed and not_ready_at is None:
            not_ready_at = at
        assert "virtual-node-b0" not in changed, f"the live base changed at {at} s"
    # Silent 8 s before the pause (liveness judged at the end of second 8), 17 s after.
    assert not_ready_at == 128 + 17, f"b1 NotReady at {not_ready_at} s"


def test_an_intake_that_keeps_falling_behind_still_lets_a_dead_base_go() -> None:
    """Behind 6 s out of every 20 (an overloaded box): with a fresh grace at each catch-up,
    as after a broker outage, the dead b1 kept its node forever (never 25 s in a row)."""
    clock, registry, tunnel, controller = judged_fleet(2)
    gone: list[str] = []
    for at in range(1, 601):
        second(clock, tunnel, controller, 12.0 if at % 20 < 6 else 0.0)
        if at % 10 == 0:
            registry.heartbeat("b0", status("b0"))
        gone += deleted(registry, registry.tick())
    assert gone == ["virtual-node-b1"], f"deleted: {gone}"
