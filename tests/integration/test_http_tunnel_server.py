"""The HTTP tunnel's server (spec §1, §3): heartbeats and baseline queries from bases.

No Kubernetes and no broker: a real HttpTunnelServer on a free port takes heartbeats from
simulated bases that speak only HTTP (each on a loopback address of its own), and from
hostile senders. The adversary's tests name, after "Was:", the problem each found (all
fixed since: they stay as regression tests).
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from module_controller import naming
from module_controller.protocol import BizModel
from module_controller.protocol.arklet import ARKLET_DEFAULT_PORT
from module_controller.registry import BaseRegistry
from module_controller.settings import Settings
from module_controller.tunnels import http_server
from module_controller.tunnels.events import (
    BaseHeartbeat,
    BaselineQuery,
    TunnelEvent,
)
from module_controller.tunnels.router import TunnelRouter
from tests.integration.http_tunnel_support import (
    Events,
    StartBase,
    biz,
    heartbeat_body,
    post,
    tunnel_server,
    tunnel_settings,
    unique_loopback_ip,
    until,
)

# Each test takes a few seconds at most; a hang must not hold the suite for 5 minutes.
pytestmark = pytest.mark.timeout(60)


# --- the tunnel server: /heartbeat ------------------------------------------------------------


async def test_a_heartbeat_arrives_as_an_http_heartbeat_with_the_base_address(
    start_http_base: StartBase,
) -> None:
    events = Events()
    async with tunnel_server(tunnel_settings(), events.deliver) as server:
        base = await start_http_base(heartbeat_port=server.port)
        beat = await until("a heartbeat", lambda: next(iter(events.of(BaseHeartbeat)), None))
    assert beat.tunnel == "http"
    assert beat.identity == base.identity == base.config.ip
    assert beat.status.local_ip == base.config.ip
    assert beat.status.port == base.port, "the Arklet port: it may drift from 1238"
    assert beat.status.is_activated


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\x00junk{", "not a BaseStatus"),
        (b"[1, 2]", "not a BaseStatus"),
        (b'{"localIP": "127.0.0.9"}', "baseMetadata"),
        (b"", "not a BaseStatus"),
    ],
)
async def test_a_body_that_is_not_a_heartbeat_is_400_with_the_reason(
    body: bytes, reason: str
) -> None:
    events = Events()
    async with tunnel_server(tunnel_settings(), events.deliver) as server:
        status, text = await post(server.port, "/heartbeat", body)
    assert status == 400
    assert reason in text
    assert events.seen == []


@pytest.mark.parametrize("path", ["/heartbeat", "/queryBaseline"])
@pytest.mark.parametrize("method", ["GET", "PUT"])
async def test_only_post_is_accepted(path: str, method: str) -> None:
    events = Events()
    async with tunnel_server(tunnel_settings(), events.deliver) as server:
        status, text = await post(server.port, path, b"", method=method)
    assert status == 405
    assert "POST" in text
    assert events.seen == []


async def test_an_oversized_heartbeat_is_refused() -> None:
    events = Events()
    settings = tunnel_settings()
    # Valid JSON so that only its size can be the reason to refuse it.
    padding = "x" * (settings.max_message_bytes + 10)
    body = heartbeat_body("b1", "127.0.0.9").replace('"host"', json.dumps(padding))
    async with tunnel_server(settings, events.deliver) as server:
        status, _ = await post(server.port, "/heartbeat", body)
    assert status == 413
    assert events.seen == []


@pytest.mark.parametrize("identity", ["a/b", "#", "x" * 200, " leading-space"])
async def test_an_identity_naming_refuses_is_400(identity: str) -> None:
    assert naming.invalid_identity_reason(identity) is not None
    events = Events()
    async with tunnel_server(tunnel_settings(), events.deliver) as server:
        status, text = await post(server.port, "/heartbeat", heartbeat_body(identity, "127.0.0.9"))
    assert status == 400
    assert "refused" in text
    assert events.seen == []


async def test_a_free_port_serves_ipv4_and_ipv6_alike() -> None:
    """Was: with HTTP_TUNNEL_LISTEN_PORT=0, TCPSite(host=None) binds 0.0.0.0 and ::
    each to a free port of its own, and start() returns addresses[0], whose family varies
    from process to process (asyncio collects the bind addresses in a set): about every
    other start, the port it reports refuses IPv4 bases. Bind one port for both (bind the
    first family, then the other on the same port), or report the IPv4 one."""
    settings = tunnel_settings(http_tunnel_listen_port=0)
    async with tunnel_server(settings, Events().deliver) as server:
        for host in ("127.0.0.1", "[::1]"):
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://{host}:{server.port}/heartbeat") as response,
            ):
                assert response.status == 405, host


# --- the tunnel server: /queryBaseline --------------------------------------------------------

METADATA = json.dumps({"identity": "b1", "name": "base", "version": "1.1.1", "clusterName": "c"})


async def test_query_baseline_answers_the_modules_as_a_json_list() -> None:
    asked: list[BaselineQuery] = []

    async def answer(query: BaselineQuery) -> list[BizModel]:
        asked.append(query)
        return [biz("biz1"), biz("biz2", "0.0.2")]

    async with tunnel_server(tunnel_settings(), Events().deliver, answer) as server:
        status, text = await post(server.port, "/queryBaseline", METADATA)
    assert status == 200
    assert json.loads(text) == [
        {"bizName": "biz1", "bizVersion": "0.0.1", "bizUrl": "file:///opt/biz1.jar"},
        {"bizName": "biz2", "bizVersion": "0.0.2", "bizUrl": "file:///opt/biz2.jar"},
    ]
    assert [(q.identity, q.metadata.cluster_name) for q in asked] == [("b1", "c")]


async def test_query_baseline_is_503_when_the_answer_fails() -> None:
    async def answer(query: BaselineQuery) -> list[BizModel]:
        raise RuntimeError("the API server said 500")

    async with tunnel_server(tunnel_settings(), Events().deliver, answer) as server:
        status, text = await post(server.port, "/queryBaseline", METADATA)
    assert status == 503
    assert "the API server said 500" in text


async def test_query_baseline_is_503_when_the_answer_is_too_slow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http_server, "BASELINE_TIMEOUT_SECONDS", 0.3)

    async def answer(query: BaselineQuery) -> list[BizModel]:
        await asyncio.sleep(30)  # a stuck Deployment list
        return []

    async with tunnel_server(tunnel_settings(), Events().deliver, answer) as server:
        started = time.monotonic()
        status, text = await post(server.port, "/queryBaseline", METADATA)
    assert status == 503
    assert "ask again" in text
    assert time.monotonic() - started < 5


async def test_query_baseline_refuses_junk_with_400() -> None:
    async with tunnel_server(tunnel_settings(), Events().deliver) as server:
        junk = await post(server.port, "/queryBaseline", b"{not json")
        bad_identity = await post(server.port, "/queryBaseline", json.dumps({"identity": "a/b"}))
    assert junk[0] == 400
    assert bad_identity[0] == 400


# --- adversary: a hostile sender ------------------------------------------------------------


@pytest.mark.parametrize("port", [-1, 65536, 10**12])
async def test_a_heartbeat_with_an_impossible_port_is_refused(port: int) -> None:
    """Was: BaseStatus.port has no bounds, so the base is registered and every
    call to it fails as an invalid URL (NotReady after BASE_NOT_READY_SECONDS, installs
    wait the install timeout); port -1 also makes the tunnel-port label "-1", a label
    value the API server refuses, so the node cannot even be written."""
    events = Events()
    async with tunnel_server(tunnel_settings(), events.deliver) as server:
        status, _ = await post(server.port, "/heartbeat", heartbeat_body("b1", "127.0.0.9", port))
    assert status == 400
    assert events.seen == []


async def test_port_zero_means_the_default_arklet_port() -> None:
    """The Go controller's fallback: a heartbeat without a port means Arklet's 1238."""
    heard = Heard(tunnel_settings())
    async with tunnel_server(heard.settings, heard.deliver) as server:
        status, _ = await post(server.port, "/heartbeat", heartbeat_body("b1", "127.0.0.9", 0))
    assert status == 200
    assert heard.router.address_of("b1") == ("127.0.0.9", ARKLET_DEFAULT_PORT)


class Heard:
    """Heartbeats applied to a real registry, addresses read back through the router."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = BaseRegistry(settings)
        self.router = TunnelRouter(self.registry, None, None)

    async def deliver(self, event: TunnelEvent) -> None:
        if isinstance(event, BaseHeartbeat):
            self.registry.heartbeat(event.identity, event.status, event.tunnel)


async def post_from(ip: str, port: int, body: str) -> int:
    """POST a heartbeat from the loopback address `ip`, as a base on that host would."""
    connector = aiohttp.TCPConnector(local_addr=(ip, 0), force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(f"http://127.0.0.1:{port}/heartbeat", data=body) as response,
    ):
        return response.status


@pytest.mark.parametrize("local_ip", ["", "not-an-ip"])
async def test_a_heartbeat_without_a_usable_ip_sends_no_command_to_the_operator_host(
    local_ip: str,
) -> None:
    """Was: BaseRecord.ip falls back to 127.0.0.1 for a localIP that is not an IP
    (the Go fallback for the node's InternalIP), and the router sends that base's Arklet
    calls there: to the operator's own pod, on a port the sender chose (its metrics, its
    health server, the kubelet proxy, or any sidecar). Refuse such a heartbeat (400), or
    use the address it came from."""
    heard = Heard(tunnel_settings())
    sender = unique_loopback_ip()
    async with tunnel_server(heard.settings, heard.deliver) as server:
        await post_from(sender, server.port, heartbeat_body("junk-ip", local_ip, 9090))
    address = heard.router.address_of("junk-ip")
    assert address is None or address[0] == sender, f"calls would go to {address}"


async def test_a_heartbeat_claiming_a_known_base_from_elsewhere_does_not_take_its_calls(
    start_http_base: StartBase,
) -> None:
    """Was: anyone who reaches the tunnel port can post a heartbeat with a live
    base's identity and its own localIP:port; the registry takes the new address at once,
    and from then on that base's installs, uninstalls and queries go to the attacker,
    whose answers the controller believes."""
    heard = Heard(tunnel_settings())
    async with tunnel_server(heard.settings, heard.deliver) as server:
        base = await start_http_base(heartbeat_port=server.port)
        await until("the base is registered", lambda: base.identity in heard.registry.bases)
        base.faults.heartbeats_stopped = True  # so that only the attacker speaks now
        genuine = (base.config.ip, base.port)
        assert heard.router.address_of(base.identity) == genuine
        attacker = unique_loopback_ip()
        await post_from(attacker, server.port, heartbeat_body(base.identity, attacker, 4444))
    assert heard.router.address_of(base.identity) == genuine


async def test_a_heartbeat_body_that_trickles_in_is_cut_off() -> None:
    """Was: the server reads a body without a deadline. A client that sends the
    headers and then nothing (slowloris) holds a connection and a handler for ever; a few
    thousand exhaust the operator's file descriptors, and with them its API server and
    broker connections. A real heartbeat is under 1 KiB and sent at once."""
    events = Events()
    async with tunnel_server(tunnel_settings(), events.deliver) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(b"POST /heartbeat HTTP/1.1\r\nHost: x\r\nContent-Length: 300\r\n\r\n{")
            await writer.drain()
            try:
                # Answered (408, 400) or closed: either way the server let go.
                await asyncio.wait_for(reader.read(100), timeout=8)
            except TimeoutError:
                pytest.fail("the server still waits for a heartbeat body after 8 s")
        finally:
            writer.close()
    assert events.seen == []
