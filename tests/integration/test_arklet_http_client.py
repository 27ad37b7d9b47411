"""The HTTP tunnel's Arklet client (spec §1, §3), against real simulated bases.

No Kubernetes and no broker: a real ArkletHttpClient calls the Arklet HTTP API of simulated
bases that speak only HTTP (each on a loopback address of its own), its answers collected
as tunnel events. Timeouts are short (about a second) so that the failure paths stay quick.
The adversary's tests (a hostile base, and Murphy) name, after "Was:", the problem each
found (all fixed since: they stay as regression tests).
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from aiohttp import web

from module_controller.protocol.arklet import ARKLET_DEFAULT_PORT
from module_controller.protocol.states import BizState
from module_controller.simulator.base import SimulatedBase
from module_controller.tunnels.arklet_http import ArkletHttpClient
from module_controller.tunnels.events import (
    ArkletCallFailed,
    BaseHealthReport,
    BaseInventory,
    BizOperationResult,
)
from tests.integration.http_tunnel_support import (
    Events,
    StartBase,
    arklet_client,
    biz,
    settled,
    tunnel_settings,
    unique_loopback_ip,
    until,
)

# Each test takes a few seconds at most; a hang must not hold the suite for 5 minutes.
pytestmark = pytest.mark.timeout(60)


# --- the Arklet client against a simulated base ----------------------------------------------


async def test_install_inventory_health_uninstall_against_a_simulated_base(
    start_http_base: StartBase,
) -> None:
    base = await start_http_base()
    events = Events()
    addresses = {base.identity: (base.config.ip, base.port)}
    async with arklet_client(tunnel_settings(), addresses, events) as client:
        await client.install_biz(base.identity, biz("biz1"))
        await settled(client)
        (installed,) = events.of(BizOperationResult)
        assert installed.identity == base.identity
        assert installed.result.command == "installBiz"
        assert (installed.result.biz_name, installed.result.biz_version) == ("biz1", "0.0.1")
        assert installed.result.response.ok
        await base.wait_for_module("biz1", "0.0.1", BizState.ACTIVATED)

        await client.query_all_biz(base.identity)
        await client.query_health(base.identity)
        await settled(client)
        (inventory,) = events.of(BaseInventory)
        assert inventory.identity == base.identity
        assert [(m.name, m.version, m.state) for m in inventory.modules] == [
            ("biz1", "0.0.1", BizState.ACTIVATED)
        ]
        (health,) = events.of(BaseHealthReport)
        assert health.identity == base.identity
        assert health.health.master_biz_info is not None
        assert health.health.master_biz_info.biz_name == "base"

        await client.uninstall_biz(base.identity, biz("biz1"))
        await settled(client)
        uninstalled = events.of(BizOperationResult)[-1]
        assert uninstalled.result.command == "uninstallBiz"
        assert uninstalled.result.response.ok
        assert base.module("biz1", "0.0.1") is None
    assert events.of(ArkletCallFailed) == []
    commands = [entry.command for entry in base.received()]
    # The inventory and health calls run side by side: either may arrive first.
    assert commands[0] == "installBiz" and commands[-1] == "uninstallBiz"
    assert sorted(commands[1:3]) == ["health", "queryAllBiz"]


async def test_an_install_that_fails_on_the_base_is_a_failed_result_with_its_message(
    start_http_base: StartBase,
) -> None:
    base = await start_http_base()
    base.faults.fail_start = {"broken"}
    events = Events()
    addresses = {base.identity: (base.config.ip, base.port)}
    async with arklet_client(tunnel_settings(), addresses, events) as client:
        await client.install_biz(base.identity, biz("broken"))
        await settled(client)
    (result,) = events.of(BizOperationResult)
    assert not result.result.response.ok
    assert "simulated start failure of broken" in str(result.result.response.message)
    assert events.of(ArkletCallFailed) == [], "the base answered: its API is fine"


async def test_an_install_may_take_longer_than_a_query(start_http_base: StartBase) -> None:
    # An install downloads and starts a jar: it has INSTALL_TIMEOUT_SECONDS, not the
    # query timeout.
    base = await start_http_base()
    base.faults.install_delay_s = 1.0
    events = Events()
    settings = tunnel_settings(arklet_http_timeout_seconds=0.5, install_timeout_seconds=5)
    addresses = {base.identity: (base.config.ip, base.port)}
    async with arklet_client(settings, addresses, events) as client:
        await client.install_biz(base.identity, biz("biz1"))
        await settled(client)
    assert events.of(ArkletCallFailed) == []
    (result,) = events.of(BizOperationResult)
    assert result.result.response.ok


async def test_a_failed_health_answer_is_neither_a_report_nor_silence(
    start_http_base: StartBase,
) -> None:
    # The base answered (its API works) but its health failed: nothing to report.
    base = await start_http_base()
    base.faults.health_code = "FAILED"
    events = Events()
    addresses = {base.identity: (base.config.ip, base.port)}
    async with arklet_client(tunnel_settings(), addresses, events) as client:
        await client.query_health(base.identity)
        await settled(client)
    assert len(base.received("health")) == 1
    assert events.seen == []


async def test_a_refused_connection_is_tried_three_times_then_answered_as_not_delivered() -> None:
    # Nothing listens on this address: every connection is refused.
    events = Events()
    addresses = {"ghost": (unique_loopback_ip(), ARKLET_DEFAULT_PORT)}
    async with arklet_client(tunnel_settings(), addresses, events) as client:
        started = time.monotonic()
        await client.install_biz("ghost", biz("biz1"))
        await client.query_health("ghost")
        await settled(client)
        elapsed = time.monotonic() - started
    failures = {failure.command: failure for failure in events.of(ArkletCallFailed)}
    assert set(failures) == {"installBiz", "health"}
    assert "3 times" in failures["installBiz"].reason
    assert elapsed >= 0.1 + 0.2, "two waits between three attempts"
    (result,) = events.of(BizOperationResult)
    assert result.identity == "ghost"
    assert (result.result.command, result.result.biz_name) == ("installBiz", "biz1")
    assert not result.result.response.ok
    assert "not delivered" in str(result.result.response.message)
    assert events.of(BaseHealthReport) == [], "a health call is not answered for the base"


async def test_a_base_that_listens_between_two_attempts_gets_the_call(
    start_http_base: StartBase,
) -> None:
    ip = unique_loopback_ip()
    events = Events()
    addresses = {ip: (ip, ARKLET_DEFAULT_PORT)}
    # Slow retries here, so that the base is up before the third attempt.
    client = ArkletHttpClient(
        tunnel_settings(), events.deliver, addresses.get, first_retry_seconds=0.4
    )
    await client.start()
    try:
        await client.install_biz(ip, biz("biz1"))
        # Attempts go at 0, 0.4 and 1.2 s: the base comes up between the first two.
        await asyncio.sleep(0.2)
        base = await start_http_base(ip=ip)
        assert base.port == ARKLET_DEFAULT_PORT, "this test needs 1238 free on its own IP"
        await settled(client)
    finally:
        await client.stop()
    (result,) = events.of(BizOperationResult)
    assert result.result.response.ok
    assert events.of(ArkletCallFailed) == []
    assert len(base.received("installBiz")) == 1


async def test_a_frozen_api_fails_the_call_without_inventing_an_answer(
    start_http_base: StartBase,
) -> None:
    base = await start_http_base()
    base.faults.http_api_frozen = True
    events = Events()
    addresses = {base.identity: (base.config.ip, base.port)}
    async with arklet_client(tunnel_settings(), addresses, events) as client:
        await client.install_biz(base.identity, biz("biz1"))
        await client.query_health(base.identity)
        await settled(client)
    assert sorted(failure.command for failure in events.of(ArkletCallFailed)) == [
        "health",
        "installBiz",
    ]
    assert all("no answer within" in failure.reason for failure in events.of(ArkletCallFailed))
    # The base received the install and may still carry it out: no failure is invented.
    assert events.of(BizOperationResult) == []
    assert len(base.received("installBiz")) == 1


async def test_a_command_the_base_ignores_fails_alone(start_http_base: StartBase) -> None:
    base = await start_http_base()
    base.faults.ignore_commands = {"queryAllBiz"}
    events = Events()
    addresses = {base.identity: (base.config.ip, base.port)}
    async with arklet_client(tunnel_settings(), addresses, events) as client:
        await client.query_all_biz(base.identity)
        await client.query_health(base.identity)
        await settled(client)
    assert [failure.command for failure in events.of(ArkletCallFailed)] == ["queryAllBiz"]
    assert len(events.of(BaseHealthReport)) == 1


async def test_the_same_call_twice_in_flight_is_sent_once(start_http_base: StartBase) -> None:
    base = await start_http_base()
    base.faults.install_delay_s = 0.5
    events = Events()
    addresses = {base.identity: (base.config.ip, base.port)}
    async with arklet_client(tunnel_settings(install_timeout_seconds=5), addresses, events) as c:
        await c.install_biz(base.identity, biz("biz1"))
        await c.install_biz(base.identity, biz("biz1"))
        await c.query_health(base.identity)
        await c.query_health(base.identity)
        await settled(c)
        assert len(base.received("installBiz")) == 1
        assert len(base.received("health")) == 1
        assert len(events.of(BizOperationResult)) == 1
        # Once answered it may be sent again (here the base answers REPEAT_BIZ).
        await c.install_biz(base.identity, biz("biz1"))
        await settled(c)
        assert len(base.received("installBiz")) == 2


async def _most_in_flight(
    client: ArkletHttpClient, bases: list[SimulatedBase], events: Events, sent: int
) -> int:
    """Installs received by the bases and not yet answered, at most, until all answered."""
    most = 0
    deadline = time.monotonic() + 10
    while len(events.of(BizOperationResult)) < sent:
        received = sum(len(base.received("installBiz")) for base in bases)
        most = max(most, received - len(events.of(BizOperationResult)))
        assert time.monotonic() < deadline, f"only {len(events.seen)} answers of {sent}"
        await asyncio.sleep(0.01)
    return most


async def test_calls_to_one_base_are_bounded(start_http_base: StartBase) -> None:
    base = await start_http_base()
    base.faults.install_delay_s = 0.3
    events = Events()
    settings = tunnel_settings(install_timeout_seconds=10, arklet_http_max_calls_per_base=2)
    addresses = {base.identity: (base.config.ip, base.port)}
    async with arklet_client(settings, addresses, events) as client:
        for number in range(6):
            await client.install_biz(base.identity, biz(f"biz{number}"))
        most = await _most_in_flight(client, [base], events, 6)
        await settled(client)
    assert most == 2, "two at a time: never more, and the bound is used"
    assert all(result.result.response.ok for result in events.of(BizOperationResult))


async def test_calls_over_all_bases_are_bounded(start_http_base: StartBase) -> None:
    bases = [await start_http_base(), await start_http_base()]
    for base in bases:
        base.faults.install_delay_s = 0.3
    events = Events()
    settings = tunnel_settings(
        install_timeout_seconds=10, arklet_http_max_calls=3, arklet_http_max_calls_per_base=4
    )
    addresses = {base.identity: (base.config.ip, base.port) for base in bases}
    async with arklet_client(settings, addresses, events) as client:
        for number in range(4):
            for base in bases:
                await client.install_biz(base.identity, biz(f"biz{number}"))
        most = await _most_in_flight(client, bases, events, 8)
        await settled(client)
    assert most == 3


async def test_an_answer_that_comes_after_the_timeout_is_not_waited_for(
    start_http_base: StartBase,
) -> None:
    """A slow install times out without a result; the base's inventory tells what happened."""
    base = await start_http_base()
    base.faults.install_delay_s = 1.5
    events = Events()
    addresses = {base.identity: (base.config.ip, base.port)}
    async with arklet_client(tunnel_settings(), addresses, events) as client:
        await client.install_biz(base.identity, biz("biz1"))
        await settled(client)
        assert [failure.command for failure in events.of(ArkletCallFailed)] == ["installBiz"]
        assert events.of(BizOperationResult) == []
        await base.wait_for_module("biz1", "0.0.1", BizState.ACTIVATED)
        await client.query_all_biz(base.identity)
        await settled(client)
    (inventory,) = events.of(BaseInventory)
    assert [m.name for m in inventory.modules] == ["biz1"]


async def test_stopping_mid_call_ends_the_call_quietly(start_http_base: StartBase) -> None:
    base = await start_http_base()
    base.faults.http_api_frozen = True
    events = Events()
    addresses = {base.identity: (base.config.ip, base.port)}
    client = ArkletHttpClient(
        tunnel_settings(install_timeout_seconds=30), events.deliver, addresses.get
    )
    await client.start()
    await client.install_biz(base.identity, biz("biz1"))
    await base.wait_for_command("installBiz")
    started = time.monotonic()
    await client.stop()
    assert time.monotonic() - started < 3
    assert client.in_flight() == 0 and len(client.tasks) == 0
    assert events.seen == [], "a call cut by the stop is not a failure of the base"


# --- adversary: a hostile base, and Murphy ----------------------------------------------------


async def test_a_call_after_stop_delivers_nothing() -> None:
    """Was: a command sent after stop() (the module sync stops after the client)
    runs in a new task nobody stops, finds no session and delivers ArkletCallFailed plus an
    invented "not delivered: the operator is stopping" install failure."""
    events = Events()
    addresses = {"b1": (unique_loopback_ip(), ARKLET_DEFAULT_PORT)}
    client = ArkletHttpClient(tunnel_settings(), events.deliver, addresses.get)
    await client.start()
    await client.stop()
    await client.install_biz("b1", biz("biz1"))
    await settled(client)
    assert events.seen == []


async def test_an_answer_sent_in_pieces_is_read_whole() -> None:
    """Was: the client reads the answer with one content.read(n), which returns the
    first piece that arrived; an answer split over TCP segments (a big inventory, a slow
    base, a proxy) is taken for "not an Arklet answer"."""
    answer = json.dumps(
        {"code": "SUCCESS", "baseIdentity": "b1", "data": {"healthData": {"cpu": {"count": 8}}}}
    ).encode()

    async def slow_arklet(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(answer)
        await response.prepare(request)
        await response.write(answer[:20])
        await asyncio.sleep(0.2)
        await response.write(answer[20:])
        return response

    app = web.Application()
    app.router.add_post("/health", slow_arklet)
    runner = web.AppRunner(app)
    await runner.setup()
    ip = unique_loopback_ip()
    site = web.TCPSite(runner, ip, 0)
    await site.start()
    port = int(runner.addresses[0][1])
    events = Events()
    try:
        async with arklet_client(tunnel_settings(), {"b1": (ip, port)}, events) as client:
            await client.query_health("b1")
            await settled(client)
    finally:
        await runner.cleanup()
    assert events.of(ArkletCallFailed) == []
    assert len(events.of(BaseHealthReport)) == 1


async def test_an_answer_from_another_base_is_not_taken_for_this_one(
    start_http_base: StartBase,
) -> None:
    """Was: the answer's baseIdentity is never compared. When a base's address now
    serves another base (it died and another took its IP:port, port drift, a forged
    heartbeat), that base's inventory is taken for this one's, and an install that
    landed there is reported as done here."""
    ours, other = await start_http_base(), await start_http_base()
    events = Events()
    # Our base's address, as its last heartbeat said, now leads to the other base.
    addresses = {ours.identity: (other.config.ip, other.port)}
    async with arklet_client(tunnel_settings(), addresses, events) as client:
        await client.query_all_biz(ours.identity)
        await client.install_biz(ours.identity, biz("biz1"))
        await settled(client)
    assert events.of(BaseInventory) == [], "the other base's modules are not ours"
    assert not [r for r in events.of(BizOperationResult) if r.result.response.ok]


async def test_an_ipv6_base_is_reachable(start_http_base: StartBase) -> None:
    """Was: the URL is f"http://{ip}:{port}/...", so an IPv6 localIP (valid per
    naming.ip_address) gives http://::1:1238/health, an invalid URL: every call fails and
    the node of an IPv6 base goes NotReady. IPv6 hosts need brackets."""
    base = await start_http_base(ip="::1")
    events = Events()
    addresses = {base.identity: ("::1", base.port)}
    async with arklet_client(tunnel_settings(), addresses, events) as client:
        await client.query_health(base.identity)
        await settled(client)
    assert events.of(ArkletCallFailed) == []
    assert len(events.of(BaseHealthReport)) == 1


async def test_installs_stuck_on_a_frozen_base_do_not_starve_the_other_bases(
    start_http_base: StartBase,
) -> None:
    """Was: an install holds its slot of ARKLET_HTTP_MAX_CALLS for up to
    INSTALL_TIMEOUT_SECONDS (120 s). A rollout to a few frozen bases (16 bases x 4 modules
    fill the 64 slots) stops every other base's health and inventory calls, and installs,
    for two minutes; those calls only wait, so nothing says why. Give the quick calls
    (health, queryAllBiz) slots of their own, or let long calls hold fewer of them."""
    frozen, healthy = await start_http_base(), await start_http_base()
    frozen.faults.http_api_frozen = True
    events = Events()
    settings = tunnel_settings(
        install_timeout_seconds=4, arklet_http_max_calls=2, arklet_http_max_calls_per_base=2
    )
    addresses = {base.identity: (base.config.ip, base.port) for base in (frozen, healthy)}
    async with arklet_client(settings, addresses, events) as client:
        await client.install_biz(frozen.identity, biz("biz1"))
        await client.install_biz(frozen.identity, biz("biz2"))
        await frozen.wait_for_command("installBiz", count=2)
        started = time.monotonic()
        await client.query_health(healthy.identity)
        await until("the healthy base's health", lambda: events.of(BaseHealthReport), 6)
        waited = time.monotonic() - started
        await settled(client)
    assert waited < 1.5, f"the healthy base's health waited {waited:.1f}s for a slot"


async def test_what_a_client_keeps_per_base_goes_when_the_calls_end(
    start_http_base: StartBase,
) -> None:
    """Was: ArkletHttpClient._per_base keeps one semaphore per identity ever called
    and never drops it. Bases with UUID identities get a new one per restart, and a hostile
    sender can make up identities: the dict grows for the operator's lifetime."""
    base = await start_http_base()
    events = Events()
    identities = [f"base-{number}" for number in range(200)]
    addresses = {identity: (base.config.ip, base.port) for identity in identities}
    settings = tunnel_settings(arklet_http_timeout_seconds=3)
    async with arklet_client(settings, addresses, events) as client:
        for identity in identities:
            await client.query_health(identity)
        for number in range(200):  # bases that went away before their call ran
            await client.query_health(f"gone-{number}")
        await settled(client, timeout=15)
        assert len(client._per_base) == 0, f"{len(client._per_base)} semaphores kept"
