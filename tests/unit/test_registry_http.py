"""The registry's rules for bases on the HTTP tunnel, on a clock the test controls.

HTTP bases are heard directly, not through the broker: a broker outage stops only the MQTT
bases' clocks. Their Arklet API is called directly too, so an API that stays silent makes
the node NotReady (never deleted) although the base beats. Each base keeps the tunnel it
spoke first, and its node says which one, so that a restarted operator keeps it too.

Tests whose docstring starts with FAILS name a problem found by the review of the HTTP
tunnel; they fail until it is fixed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest

from module_controller import naming
from module_controller.protocol import BaseMetadata, BaseStatus
from module_controller.protocol.states import BizState
from module_controller.registry import BaseRegistry
from module_controller.settings import Settings
from module_controller.tunnels.events import (
    ArkletCallFailed,
    BaseHeartbeat,
    BaseInventory,
    TunnelKind,
)
from module_controller.vnode_manifest import (
    TUNNEL_ANNOTATION,
    TUNNEL_PORT_LABEL,
    base_status_of_node,
    node_manifest,
    tunnel_of_node,
)
from tests.unit.wiring_support import Wired

# Defaults: NotReady after 25 s of silence, deleted after 60 s.
BOTH_TUNNELS = Settings(enable_mqtt_tunnel=True, enable_http_tunnel=True)


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def status(
    identity: str,
    port: int = 1240,
    local_ip: str = "127.0.0.9",
    state: BizState = BizState.ACTIVATED,
) -> BaseStatus:
    return BaseStatus(
        base_metadata=BaseMetadata(
            identity=identity, name="base", version="1.1.1", cluster_name="default"
        ),
        local_ip=local_ip,
        local_host_name="host",
        port=port,
        state=state,
    )


def node(identity: str) -> str:
    return f"virtual-node-{identity}"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry(clock: Clock) -> BaseRegistry:
    """Both tunnels on, the broker connected and delivering."""
    registry = BaseRegistry(BOTH_TUNNELS, clock=clock)
    registry.broker_up()
    return registry


# --- liveness: HTTP bases do not wait for a broker --------------------------------------------


def test_a_broker_outage_stops_the_clocks_of_mqtt_bases_only(
    registry: BaseRegistry, clock: Clock
) -> None:
    registry.heartbeat("m", status("m"), "mqtt")
    registry.heartbeat("h", status("h"), "http")
    registry.broker_down()
    clock.now += 25
    assert registry.tick() == [node("h")], "the HTTP base's silence counts"
    h = registry.bases["h"]
    assert not h.ready and "no heartbeat" in str(h.not_ready_reason)
    assert registry.bases["m"].ready, "the MQTT base cannot be heard: it is not judged"
    clock.now += 35
    assert registry.tick() == [node("h")]
    assert set(registry.bases) == {"m"}, "the HTTP base is gone, the MQTT one kept"
    registry.broker_up()
    clock.now += 24
    assert registry.tick() == [], "back from the outage, the MQTT base gets a full grace"
    clock.now += 1
    assert registry.tick() == [node("m")]


def test_the_broker_coming_back_gives_http_bases_no_fresh_grace(
    registry: BaseRegistry, clock: Clock
) -> None:
    # Their silence counted all along: a broker that comes back says nothing about them.
    registry.heartbeat("h", status("h"), "http")
    clock.now += 5
    registry.broker_down()
    clock.now += 15
    registry.broker_up()
    clock.now += 5
    assert registry.tick() == [node("h")], "silent 25 s, the outage notwithstanding"


def test_http_bases_are_judged_before_the_broker_ever_connects(clock: Clock) -> None:
    registry = BaseRegistry(BOTH_TUNNELS, clock=clock)
    assert registry.liveness_paused, "the MQTT side waits for the broker at start"
    registry.heartbeat("m", status("m"), "mqtt")
    registry.heartbeat("h", status("h"), "http")
    clock.now += 25
    assert registry.tick() == [node("h")]
    assert registry.bases["m"].ready


def test_without_an_mqtt_tunnel_nothing_waits_for_a_broker(clock: Clock) -> None:
    settings = Settings(enable_http_tunnel=True)  # a Go manifest: HTTP only
    assert not settings.enable_mqtt_tunnel
    registry = BaseRegistry(settings, clock=clock)
    assert not registry.liveness_paused, "no broker will ever connect"
    registry.heartbeat("h", status("h"), "http")
    # A node an older operator made for an MQTT base: nobody can hear it now.
    registry.adopt("old", status("old"), node("old"), tunnel="mqtt")
    clock.now += 25
    assert sorted(registry.tick()) == [node("h"), node("old")], "NotReady"
    clock.now += 35
    assert sorted(registry.tick()) == [node("h"), node("old")], "gone"
    assert registry.bases == {}


# --- an Arklet API that does not answer -------------------------------------------------------


@pytest.mark.parametrize(("port", "shown"), [(1240, "127.0.0.9:1240"), (0, "127.0.0.9:1238")])
def test_an_http_base_whose_api_is_silent_goes_not_ready_although_it_beats(
    registry: BaseRegistry, clock: Clock, port: int, shown: str
) -> None:
    registry.heartbeat("h", status("h", port), "http")
    registry.arklet_failed("h", "no answer within 5s")
    for _ in range(2):  # beating every 10 s, its API silent for 20 s
        clock.now += 10
        registry.heartbeat("h", status("h", port), "http")
        assert registry.tick() == []
    clock.now += 5
    assert registry.tick() == [node("h")]
    record = registry.bases["h"]
    assert not record.ready
    reason = str(record.not_ready_reason)
    assert shown in reason, "the reason names where the API was called"
    assert "no answer within 5s" in reason
    clock.now += 5
    registry.heartbeat("h", status("h", port), "http")
    assert not registry.bases["h"].ready, "a heartbeat does not vouch for the API"
    assert registry.arklet_answered("h") == [node("h")]
    assert registry.bases["h"].ready


def test_an_api_failure_alone_never_deletes_the_node(registry: BaseRegistry, clock: Clock) -> None:
    registry.heartbeat("h", status("h"), "http")
    for _ in range(30):  # five minutes of heartbeats, every Arklet call failing
        clock.now += 10
        registry.arklet_failed("h", "connection refused")
        registry.heartbeat("h", status("h"), "http")
        registry.tick()
    assert "h" in registry.bases
    assert not registry.bases["h"].ready
    assert node("h") not in registry.departures


def test_an_answer_in_between_starts_the_count_again(registry: BaseRegistry, clock: Clock) -> None:
    registry.heartbeat("h", status("h"), "http")
    registry.arklet_failed("h", "timeout")
    clock.now += 10
    registry.arklet_answered("h")
    clock.now += 10
    registry.arklet_failed("h", "timeout")  # a second, separate failure
    clock.now += 10
    registry.heartbeat("h", status("h"), "http")
    clock.now += 14
    registry.heartbeat("h", status("h"), "http")
    assert registry.tick() == [], "failing 24 s only, counted from the second failure"
    assert registry.bases["h"].ready


def test_an_api_answer_does_not_make_a_silent_base_ready(
    registry: BaseRegistry, clock: Clock
) -> None:
    registry.heartbeat("h", status("h"), "http")
    clock.now += 25
    assert registry.tick() == [node("h")]
    registry.arklet_failed("h", "timeout")
    assert registry.arklet_answered("h") == [], "its heartbeats are still missing"
    assert not registry.bases["h"].ready


def test_api_news_of_an_unknown_base_is_ignored(registry: BaseRegistry) -> None:
    registry.arklet_failed("nobody", "refused")
    assert registry.arklet_answered("nobody") == []
    assert registry.bases == {}


def test_an_unreachable_base_that_keeps_beating_does_not_rewrite_its_node_each_beat(
    registry: BaseRegistry, clock: Clock
) -> None:
    """FAILS today: registry.heartbeat() reports a NotReady base as changed on every
    heartbeat (`changed = ... or not record.ready`), and the reason it sets says "has not
    answered for {n}s", different each time. So while an HTTP base's API is down, every
    heartbeat (12 s) patches its node's status and records a new BaseNotReady Event (the
    Event key holds the message, so they never aggregate). Return the node only when the
    reason's substance changes, and keep the seconds out of the reason (or say "since")."""
    registry.heartbeat("h", status("h"), "http")
    registry.arklet_failed("h", "timeout")
    clock.now += 25
    assert registry.tick() == [node("h")]
    reason = registry.bases["h"].not_ready_reason
    for _ in range(2):
        clock.now += 12
        assert registry.heartbeat("h", status("h"), "http") == [], "the same heartbeat again"
        assert registry.tick() == []
    assert registry.bases["h"].not_ready_reason == reason


def test_a_heartbeat_that_finds_the_api_silent_too_long_reports_the_node(
    registry: BaseRegistry, clock: Clock
) -> None:
    """FAILS today: when a heartbeat is the first to find the API silent for
    BASE_NOT_READY_SECONDS, heartbeat() sets the NotReady reason but computes `changed`
    from the state before, so it returns []; the next tick skips the base (already
    NotReady). The registry says NotReady, the node stays Ready (and no Event) until the
    next heartbeat. Compute `changed` after the new reason is known."""
    registry.heartbeat("h", status("h"), "http")
    registry.arklet_failed("h", "timeout")
    clock.now += 25
    changed = registry.heartbeat("h", status("h"), "http") + registry.tick()
    assert not registry.bases["h"].ready
    assert changed == [node("h")], "the NotReady transition is reported, once"


# --- one tunnel per base ----------------------------------------------------------------------


@pytest.mark.parametrize(("first", "other"), [("http", "mqtt"), ("mqtt", "http")])
def test_a_heartbeat_on_the_other_tunnel_is_ignored_and_logged(
    registry: BaseRegistry,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
    first: TunnelKind,
    other: TunnelKind,
) -> None:
    registry.heartbeat("b", status("b"), first)
    clock.now += 20
    with caplog.at_level(logging.WARNING, logger="module_controller.registry"):
        assert registry.heartbeat("b", status("b", 1999, "127.0.0.77"), other) == []
        farewell = status("b", state=BizState.DEACTIVATED)
        assert registry.heartbeat("b", farewell, other) == [], "nor can it say goodbye"
    record = registry.bases["b"]
    assert record.tunnel == first
    assert (record.status.local_ip, record.status.port) == ("127.0.0.9", 1240)
    clock.now += 5
    assert registry.tick() == [node("b")], "the other voice did not keep the base alive"
    assert f"Ignored a {other.upper()} heartbeat of base b" in caplog.text


def test_an_adopted_base_keeps_the_tunnel_its_node_records(registry: BaseRegistry) -> None:
    # After a restart the node's annotation says how the base speaks: a heartbeat on the
    # other tunnel (an impostor on port 7777, say) must not take its commands.
    registry.adopt("old", status("old"), node("old"), tunnel="mqtt")
    assert not registry.bases["old"].heard_since_start
    assert registry.heartbeat("old", status("old"), "http") == []
    assert registry.heartbeat("old", status("old"), "mqtt") == [node("old")]
    record = registry.bases["old"]
    assert (record.tunnel, record.heard_since_start) == ("mqtt", True)


def test_an_http_base_that_moved_is_taken_at_its_new_address_once_the_old_is_silent(
    registry: BaseRegistry, clock: Clock
) -> None:
    registry.heartbeat("b", status("b"), "http")
    moved = status("b").model_copy(update={"local_ip": "127.0.0.77"})
    assert registry.heartbeat("b", moved, "http") == [], "a fresh base keeps its address"
    assert registry.bases["b"].status.local_ip == "127.0.0.9"
    clock.now += registry.settings.base_not_ready_seconds
    registry.heartbeat("b", moved, "http")
    assert registry.bases["b"].status.local_ip == "127.0.0.77"


# --- what the node says about the tunnel ------------------------------------------------------


@pytest.mark.parametrize("tunnel", ["mqtt", "http"])
def test_the_tunnel_annotation_round_trips_through_the_node(
    registry: BaseRegistry, clock: Clock, tunnel: TunnelKind
) -> None:
    registry.heartbeat("b", status("b"), tunnel)
    manifest = node_manifest(registry.bases["b"], BOTH_TUNNELS)
    assert manifest["metadata"]["annotations"][TUNNEL_ANNOTATION] == tunnel
    assert tunnel_of_node(manifest) == tunnel
    # A restarted operator adopts the node: same tunnel, same Arklet address.
    restarted = BaseRegistry(BOTH_TUNNELS, clock=clock)
    adopted = base_status_of_node(manifest)
    assert adopted is not None
    identity, recorded = adopted
    restarted.adopt(
        identity, recorded, manifest["metadata"]["name"], tunnel=tunnel_of_node(manifest)
    )
    record = restarted.bases["b"]
    assert (record.tunnel, record.ip, record.status.port) == (tunnel, "127.0.0.9", 1240)


@pytest.mark.parametrize(
    "node_body",
    [
        {},
        {"metadata": {}},
        {"metadata": {"annotations": None}},
        {"metadata": {"annotations": {TUNNEL_ANNOTATION: "carrier-pigeon"}}},
    ],
)
def test_a_node_without_a_known_tunnel_is_mqtt(node_body: dict[str, object]) -> None:
    # Nodes of older operator versions, and junk, mean the tunnel that existed then.
    assert tunnel_of_node(node_body) == "mqtt"


@pytest.mark.parametrize(("port", "label"), [(1240, "1240"), (0, "1238")])
def test_http_nodes_carry_the_tunnel_port_label(
    registry: BaseRegistry, port: int, label: str
) -> None:
    registry.heartbeat("h", status("h", port), "http")
    registry.heartbeat("m", status("m", port), "mqtt")
    http_labels = node_manifest(registry.bases["h"], BOTH_TUNNELS)["metadata"]["labels"]
    mqtt_labels = node_manifest(registry.bases["m"], BOTH_TUNNELS)["metadata"]["labels"]
    assert http_labels[TUNNEL_PORT_LABEL] == label
    assert naming.label_value(label) == label, "a value the API server accepts"
    assert TUNNEL_PORT_LABEL not in mqtt_labels, "MQTT bases have no Arklet port to show"


# --- adversary: one identity on both tunnels ---------------------------------------------------


async def test_an_mqtt_answer_for_an_http_base_does_not_say_its_api_answers(
    wired: Wired,
) -> None:
    """FAILS today: answers carry no tunnel, and the dispatcher takes any BaseInventory or
    BaseHealthReport as proof that the base's Arklet HTTP API answers
    (registry.arklet_answered). The MQTT tunnel subscribes koupleless_<env>/+/base/...,
    so a second process with the same identity on MQTT (or anyone who may publish there)
    keeps a dead HTTP API's node Ready, and its simpleBiz, bizOperation and
    batchInstallBizResponse feed the HTTP base's module bookkeeping. Tag base events with
    their tunnel and drop those that do not come from the base's own tunnel."""
    await wired.say(
        BaseHeartbeat("h1", status("h1"), tunnel="http"),
        ArkletCallFailed("h1", "health", "no answer within 5s"),
        BaseInventory("h1", ()),  # as the MQTT decoder makes it from base/simpleBiz
        BaseHeartbeat("marker", status("marker"), tunnel="http"),
    )
    await wired.until("every event applied", lambda: "marker" in wired.registry.bases)
    assert wired.registry.bases["h1"].arklet_failing_since is not None
