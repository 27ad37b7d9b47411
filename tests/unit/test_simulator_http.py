"""The Arklet HTTP API and HTTP-tunnel heartbeat of a simulated base (spec §1, §3), on loopback.

Field-by-field checks of the HTTP envelope and its error forms.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from module_controller.simulator.base import SimulatedBase
from module_controller.simulator.config import BaseConfig


def random_loopback_ip() -> str:
    # A random 127.x.y.z per test run, so parallel runs do not share addresses.
    return f"127.{random.randint(64, 250)}.{random.randint(0, 255)}.{random.randint(1, 254)}"


@pytest.fixture
async def base() -> AsyncIterator[SimulatedBase]:
    simulated = SimulatedBase(BaseConfig(name="base", version="1.1.1", ip=random_loopback_ip()))
    await simulated.start()
    yield simulated
    await simulated.stop()


async def post(base: SimulatedBase, path: str, body: Any = None) -> tuple[int, Any]:
    url = f"http://{base.config.ip}:{base.port}/{path}"
    data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body))
    async with aiohttp.ClientSession() as session, session.post(url, data=data) as response:
        text = await response.text()
        assert response.headers.get("Connection", "").lower() == "close"
        try:
            return response.status, json.loads(text)
        except json.JSONDecodeError:
            return response.status, text


async def test_serves_on_its_own_loopback_ip_from_port_1238(base: SimulatedBase) -> None:
    assert base.config.ip.startswith("127.") and base.config.ip != "127.0.0.1"
    assert 1238 <= base.port < 1338


async def test_non_post_is_http_500_text(base: SimulatedBase) -> None:
    url = f"http://{base.config.ip}:{base.port}/health"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 500
        assert await response.text() == "POST http request only supported by arklet"


async def test_unknown_command_is_cmd_not_found(base: SimulatedBase) -> None:
    status, body = await post(base, "deployEverything", {})
    assert status == 200
    assert body == {
        "code": "CMD_NOT_FOUND",
        "message": "please follow the doc",
        "baseIdentity": base.identity,
    }


async def test_install_query_uninstall_envelopes(base: SimulatedBase) -> None:
    request = {"bizName": "biz1", "bizVersion": "0.0.1", "bizUrl": "https://h/biz1.jar"}
    status, body = await post(base, "installBiz?x=1", request)
    assert status == 200
    assert set(body) == {"code", "data", "baseIdentity"}
    assert body["code"] == "SUCCESS" and body["baseIdentity"] == base.identity
    data = body["data"]
    assert set(data) == {"code", "message", "bizInfos", "elapsedSpace"}
    assert data["code"] == "SUCCESS" and isinstance(data["elapsedSpace"], int)
    info = data["bizInfos"][0]
    assert (info["bizName"], info["bizVersion"], info["bizState"]) == ("biz1", "0.0.1", "activated")

    status, body = await post(base, "queryAllBiz")  # empty body tolerated
    assert status == 200 and body["code"] == "SUCCESS"
    (entry,) = body["data"]
    assert {"bizName", "bizVersion", "bizState", "mainClass", "webContextPath"} <= set(entry)
    assert entry["bizState"] == "activated"
    assert [(r["state"], r["reason"]) for r in entry["bizStateRecords"]] == [
        ("resolved", "Created"),
        ("activated", "Started"),
    ]
    assert all(isinstance(r["changeTime"], int) for r in entry["bizStateRecords"])

    status, body = await post(base, "uninstallBiz", request)
    assert body == {
        "code": "SUCCESS",
        "data": {"code": "SUCCESS", "message": "Uninstall biz: biz1:0.0.1 success."},
        "baseIdentity": base.identity,
    }
    status, body = await post(base, "uninstallBiz", request)
    assert body == {
        "code": "FAILED",
        "message": "uninstall biz not success!",
        "data": {"code": "NOT_FOUND_BIZ", "message": "Uninstall biz: biz1:0.0.1 not found."},
        "baseIdentity": base.identity,
    }
    assert [entry.command for entry in base.received()] == [
        "installBiz",
        "queryAllBiz",
        "uninstallBiz",
        "uninstallBiz",
    ]


async def test_repeat_biz_form(base: SimulatedBase) -> None:
    request = {"bizName": "biz1", "bizVersion": "1", "bizUrl": "file:///tmp/biz1.jar"}
    await post(base, "installBiz", request)
    _, body = await post(base, "installBiz", request)
    assert body == {
        "code": "FAILED",
        "message": "install biz not success!",
        "data": {
            "code": "REPEAT_BIZ",
            "message": "Biz: biz1:1 has been installed or registered.",
            "elapsedSpace": 0,
        },
        "baseIdentity": base.identity,
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"bizName": "a", "bizVersion": "1", "bizUrl": "/opt/a.jar"},
            "Internal Error: java.net.MalformedURLException: no protocol: /opt/a.jar",
        ),
        (
            {"bizName": "a", "bizUrl": "https://h/a.jar"},
            "Internal Error: bizName and bizVersion should be both blank or both not blank",
        ),
        (b"{broken", None),
        (b"[1,2]", None),
        ({"bizName": 5, "bizVersion": [], "bizUrl": {}}, None),
    ],
)
async def test_internal_error_form(base: SimulatedBase, body: Any, message: str | None) -> None:
    status, reply = await post(base, "installBiz", body)
    assert status == 200
    assert set(reply) == {"code", "message", "errorStackTrace"}  # no data, no baseIdentity
    assert reply["code"] == "CMD_PROCESS_INTERNAL_ERROR"
    assert reply["message"].startswith("Internal Error: ")
    if message is not None:
        assert reply["message"] == message
    assert "\n\tat " in reply["errorStackTrace"]
    assert base.modules() == []


async def test_start_failure_is_internal_error_and_leaves_broken(base: SimulatedBase) -> None:
    base.faults.fail_start.add("biz1")
    _, reply = await post(
        base, "installBiz", {"bizName": "biz1", "bizVersion": "1", "bizUrl": "https://h/b.jar"}
    )
    assert reply["code"] == "CMD_PROCESS_INTERNAL_ERROR"
    _, listing = await post(base, "queryAllBiz", {})
    (entry,) = listing["data"]
    assert entry["bizState"] == "broken"
    assert entry["bizStateRecords"][-1]["reason"] == "Install Failed"


async def test_health_and_help(base: SimulatedBase) -> None:
    _, reply = await post(base, "health", {})
    assert reply["code"] == "SUCCESS" and reply["baseIdentity"] == base.identity
    health = reply["data"]["healthData"]
    assert set(health) == {"jvm", "cpu", "masterBizInfo", "bizListInfo", "pluginListInfo"}
    assert health["masterBizInfo"] == {
        "bizName": "base",
        "bizVersion": "1.1.1",
        "bizState": "activated",
        "webContextPath": "/",
    }
    for key in ("loaded class count", "java max metaspace", "java committed metaspace"):
        assert isinstance(health["jvm"][key], int), key
    assert isinstance(health["jvm"]["max heap memory(M)"], float)
    assert isinstance(health["cpu"]["count"], int)
    _, system = await post(base, "health", {"type": "system", "metrics": ["cpu"]})
    assert set(system["data"]["healthData"]) == {"cpu", "masterBizInfo"}
    _, listing = await post(base, "help", {})
    assert {"id": "installBiz", "desc": "install one ark biz"} in listing["data"]


async def test_async_install_and_query_biz_ops(base: SimulatedBase) -> None:
    request = {
        "bizName": "a",
        "bizVersion": "1",
        "bizUrl": "https://h/a.jar",
        "async": True,
        "requestId": "r1",
    }
    _, reply = await post(base, "installBiz", request)
    assert reply["code"] == "SUCCESS" and reply["data"]["requestId"] == "r1"
    await base.wait_for_module("a", "1", "activated", timeout=5)
    await base.wait_for(
        lambda: base.arklet._async_ops["r1"].get("status") == "SUCCEEDED", 5, "async op done"
    )
    _, ops = await post(base, "queryBizOps", {"requestId": "r1"})
    assert ops["data"]["status"] == "SUCCEEDED"
    _, again = await post(base, "installBiz", request)
    assert again["code"] == "FAILED"


async def test_http_heartbeat_posts_base_status() -> None:
    beats: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    async def heartbeat(request: web.Request) -> web.Response:
        await beats.put((request.remote or "", await request.json()))
        return web.Response(text="SUCCESS")

    app = web.Application()
    app.router.add_post("/heartbeat", heartbeat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    ip = random_loopback_ip()
    simulated = SimulatedBase(
        BaseConfig(
            name="base",
            version="1.1.1",
            ip=ip,
            http_heartbeat_endpoint=f"http://127.0.0.1:{port}",
            http_heartbeat_period_s=0.2,
        )
    )
    try:
        await simulated.start()
        remote, first = await asyncio.wait_for(beats.get(), 5)
        _, second = await asyncio.wait_for(beats.get(), 5)
    finally:
        await simulated.stop()
        await runner.cleanup()
    assert remote == ip  # sent from the base's own address
    assert (
        first
        == second
        == {
            "baseMetadata": {
                "identity": simulated.identity,
                "name": "base",
                "version": "1.1.1",
                "clusterName": "default",
            },
            "localIP": ip,
            "localHostName": simulated.config.resolved_host_name,
            "port": simulated.port,
            "state": "activated",
        }
    )


def test_heartbeat_endpoint_must_be_loopback() -> None:
    from module_controller.simulator.http_tunnel import check_loopback_endpoint

    with pytest.raises(ValueError):
        check_loopback_endpoint("http://10.1.2.3:7777")
    assert check_loopback_endpoint("http://localhost:7777/") == "http://localhost:7777"
