"""An operator that reads its messages late (its probe comes back late) is deaf, and its
bases are not silent: liveness pauses while it is behind, then resumes where it stopped."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest

from module_controller.registry import BaseRegistry
from module_controller.settings import Settings
from module_controller.tunnels.events import BrokerConnected, BrokerDisconnected
from module_controller.tunnels.mqtt import PROBES_REMEMBERED, MqttTunnel
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
    behind = [r.message for r in caplog.records if "reads MQTT messages 5s late" in r.message]
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


def test_a_probe_lost_for_good_pauses_liveness_for_a_bounded_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The broker's ACL changes and our probe stops coming back, while the bases' messages
    still do: the lag grows for ever. Found in review: liveness stayed paused for good, and
    a dead base kept its node. Past MASS_SILENCE_MAX_SECONDS it is judged again, and the
    growing lag does not pause it again."""
    clock, registry, tunnel, controller = judged_fleet(2)
    gone: list[str] = []
    with caplog.at_level(logging.INFO):
        for at in range(1, 3600):
            second(clock, tunnel, controller, float(at))
            if at % 10 == 0:
                registry.heartbeat("b0", status("b0"))
            gone += deleted(registry, registry.tick())
    bound = controller.dispatcher.settings.mass_silence_max_seconds
    assert gone == ["virtual-node-b1"], f"deleted: {gone}"
    assert not registry.liveness_paused
    assert f"for {bound:.0f}s (MASS_SILENCE_MAX_SECONDS)" in caplog.text
    assert caplog.text.count("base liveness is paused until it catches up") == 1


def test_a_new_connection_ends_a_late_intake_pause() -> None:
    """Found in review: paused for a late intake, the operator reconnects to a broker that
    never returns its probe (a fail-over broker denying the probe topic): the intake was
    never judged again, so liveness stayed paused for good."""
    clock, registry, tunnel, controller = judged_fleet(2)
    second(clock, tunnel, controller, 12.0)
    assert registry.liveness_paused
    controller.dispatcher.dispatch(BrokerDisconnected("keepalive timeout", was_connected=True))
    controller.dispatcher.dispatch(BrokerConnected())
    assert not registry.liveness_paused


def test_liveness_is_judged_as_of_when_the_tick_was_made() -> None:
    """A tick waits in the inbox behind the events read before it: those read after it (a
    heartbeat due now) are behind it. Judged at the time it is handled, 10 s later here, b0
    had been silent 30 s; as of when it was made, 20 s."""
    clock = Clock()
    registry = fleet(Settings(), clock, 1)
    made = clock.now + 20
    clock.now = made + 10
    assert registry.tick(at=made) == []
    assert registry.tick() == ["virtual-node-b0"]


@pytest.fixture
def tunnel_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    clock = Clock()
    monkeypatch.setattr(time, "monotonic", clock)
    yield clock


async def noop(_event: object) -> None:
    return None


def connected_tunnel() -> MqttTunnel:
    tunnel = MqttTunnel(Settings(), noop)
    tunnel.connected.set()
    return tunnel


def test_the_lag_is_the_last_round_trip_when_no_probe_is_out(tunnel_clock: Clock) -> None:
    """Found in review: from the oldest probe out alone, a steady 10.5 s lag read 7.5 to
    10.5 s (that probe went a period after the last one back): heartbeats were dropped as
    stale while the lag read under the bound."""
    tunnel = connected_tunnel()
    tunnel._probe_sent(1)
    tunnel_clock.now += 3
    tunnel._probe_sent(2)
    tunnel_clock.now += 7.5
    tunnel._probe_back(b"1")
    assert tunnel.intake_lag() == pytest.approx(10.5)
    tunnel_clock.now += 0.5
    assert tunnel.intake_lag() == pytest.approx(10.5)  # probe 2 has been out 8 s only


def test_too_many_probes_out_keep_the_oldest(tunnel_clock: Clock) -> None:
    """Found in review: the oldest were forgotten, so the lag could never read more than
    PROBES_REMEMBERED probe periods (5 s with a probe every 0.05 s)."""
    tunnel = connected_tunnel()
    for number in range(1, 2 * PROBES_REMEMBERED):
        tunnel._probe_sent(number)
        tunnel_clock.now += 1
    assert tunnel.intake_lag() == pytest.approx(2 * PROBES_REMEMBERED - 1)
