"""Conformance: drive simulated bases over the real broker as a controller does and check each
reply field by field against reference/wire-protocol.md (§2, §11)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiomqtt

from module_controller.protocol import decode
from module_controller.protocol.messages import (
    BatchInstallMessage,
    BizOperationMessage,
    HealthMessage,
    HeartMessage,
    QueryBaselineMessage,
    SimpleBizMessage,
)
from module_controller.protocol.topics import base_topic
from module_controller.simulator.base import SimulatedBase
from tests.integration.simulator.conftest import (
    Broker,
    FakeController,
    Received,
    StartBase,
)

BIZ1 = {"bizName": "biz1", "bizVersion": "0.0.1", "bizUrl": "https://h/biz1-0.0.1-ark-biz.jar"}


def assert_fresh_envelope(message: Received) -> Any:
    body = message.json
    assert set(body) == {"publishTimestamp", "data"}
    stamp = body["publishTimestamp"]
    assert isinstance(stamp, int)
    assert abs(message.at_ms - stamp) < 2_000, "publishTimestamp is not now in epoch ms"
    return body["data"]


def metadata(base: SimulatedBase) -> dict[str, str]:
    return {
        "identity": base.identity,
        "name": "base",
        "version": "1.1.1",
        "clusterName": "default",
    }


async def test_start_up_sends_query_baseline_then_heartbeats(
    controller: FakeController, start_base: StartBase
) -> None:
    base = await start_base(mqtt_heartbeat_period_s=0.3)
    query = await controller.expect(base.identity, "queryBaseline")
    assert query.topic == f"koupleless_{controller.env}/{base.identity}/base/queryBaseline"
    assert assert_fresh_envelope(query) == metadata(base)
    first = await controller.expect(base.identity, "heart")
    assert first.at_ms >= query.at_ms
    assert assert_fresh_envelope(first) == {
        "baseMetadata": metadata(base),
        "localIP": base.config.ip,
        "localHostName": base.config.resolved_host_name,
        "port": 0,
        "state": "activated",
    }
    await controller.expect(base.identity, "heart", count=3, timeout=5)
    assert controller.count(base.identity, "queryBaseline") == 1
    decode(HeartMessage, first.raw)
    decode(QueryBaselineMessage, query.raw)


async def test_health_reply(controller: FakeController, start_base: StartBase) -> None:
    base = await start_base()
    await controller.send(base.identity, "health", {})
    reply = await controller.expect(base.identity, "health")
    data = assert_fresh_envelope(reply)
    assert set(data) == {"code", "data"}
    assert data["code"] == "SUCCESS"
    health = data["data"]["healthData"]
    assert set(health) == {"jvm", "cpu", "masterBizInfo", "bizListInfo", "pluginListInfo"}
    assert health["masterBizInfo"] == {
        "bizName": "base",
        "bizVersion": "1.1.1",
        "bizState": "ACTIVATED",
        "webContextPath": "/",
    }
    jvm = health["jvm"]
    for key in ("loaded class count", "java max metaspace", "java committed metaspace"):
        assert type(jvm[key]) is int, key
    assert jvm["java max metaspace"] > jvm["java committed metaspace"] > 0
    decode(HealthMessage, reply.raw)


async def test_install_query_uninstall(controller: FakeController, start_base: StartBase) -> None:
    base = await start_base()
    await controller.send(base.identity, "installBiz", BIZ1)
    operation = assert_fresh_envelope(await controller.expect(base.identity, "bizOperation"))
    assert set(operation) == {"command", "bizName", "bizVersion", "response"}
    assert (operation["command"], operation["bizName"], operation["bizVersion"]) == (
        "installBiz",
        "biz1",
        "0.0.1",
    )
    response = operation["response"]
    assert set(response) == {"code", "data"}
    assert response["code"] == "SUCCESS"
    assert set(response["data"]) == {"code", "message", "bizInfos", "elapsedSpace"}
    assert response["data"]["message"].startswith("Install Biz: biz1:0.0.1 success")
    info = response["data"]["bizInfos"][0]
    assert (info["bizName"], info["bizVersion"], info["bizState"]) == ("biz1", "0.0.1", "ACTIVATED")

    await controller.send(base.identity, "queryAllBiz", {})
    inventory = assert_fresh_envelope(await controller.expect(base.identity, "simpleBiz"))
    (entry,) = inventory
    assert set(entry) == {"name", "version", "state", "latestStateRecord"}
    assert (entry["name"], entry["version"], entry["state"]) == ("biz1", "0.0.1", "activated")
    record = entry["latestStateRecord"]
    assert set(record) == {"changeTime", "state", "reason", "message"}
    assert (record["state"], record["reason"], record["message"]) == ("ACTIVATED", "STARTED", "")

    await controller.send(base.identity, "uninstallBiz", BIZ1)
    done = assert_fresh_envelope(await controller.expect(base.identity, "bizOperation", 2))
    assert done == {
        "command": "uninstallBiz",
        "bizName": "biz1",
        "bizVersion": "0.0.1",
        "response": {
            "code": "SUCCESS",
            "data": {"code": "SUCCESS", "message": "Uninstall biz: biz1:0.0.1 success."},
        },
    }
    await controller.send(base.identity, "queryAllBiz", {})
    assert assert_fresh_envelope(await controller.expect(base.identity, "simpleBiz", 2)) == []
    for message in controller.messages[(base.identity, "bizOperation")]:
        decode(BizOperationMessage, message.raw)
    decode(SimpleBizMessage, controller.messages[(base.identity, "simpleBiz")][0].raw)


async def test_error_replies(controller: FakeController, start_base: StartBase) -> None:
    base = await start_base()
    ident = base.identity
    await controller.send(ident, "installBiz", BIZ1)
    await controller.expect(ident, "bizOperation", 1)
    # REPEAT_BIZ
    await controller.send(ident, "installBiz", BIZ1)
    repeat = assert_fresh_envelope(await controller.expect(ident, "bizOperation", 2))
    assert repeat["response"] == {
        "code": "FAILED",
        "message": "install biz not success!",
        "data": {
            "code": "REPEAT_BIZ",
            "message": "Biz: biz1:0.0.1 has been installed or registered.",
            "elapsedSpace": 0,
        },
    }
    # NOT_FOUND_BIZ
    ghost = {"bizName": "ghost", "bizVersion": "9", "bizUrl": "https://h/ghost.jar"}
    await controller.send(ident, "uninstallBiz", ghost)
    missing = assert_fresh_envelope(await controller.expect(ident, "bizOperation", 3))
    assert missing["bizName"] == "ghost"
    assert missing["response"] == {
        "code": "FAILED",
        "message": "uninstall biz not success!",
        "data": {"code": "NOT_FOUND_BIZ", "message": "Uninstall biz: ghost:9 not found."},
    }
    # exception (a bare path): FAILED, message = exception message, data.message = stack trace
    await controller.send(
        ident, "installBiz", {"bizName": "p", "bizVersion": "1", "bizUrl": "/opt/p.jar"}
    )
    failed = assert_fresh_envelope(await controller.expect(ident, "bizOperation", 4))
    assert (failed["bizName"], failed["bizVersion"]) == ("p", "1")
    response = failed["response"]
    assert set(response) == {"code", "message", "data"}
    assert response["code"] == "FAILED"
    assert response["message"] == "java.net.MalformedURLException: no protocol: /opt/p.jar"
    assert response["data"]["code"] == "FAILED"
    assert response["data"]["message"].startswith(
        "com.alipay.sofa.ark.exception.ArkRuntimeException: java.net.MalformedURLException"
    )
    assert "\n\tat " in response["data"]["message"]
    # start failure: FAILED reply, the biz stays BROKEN with the stack trace in its record
    base.faults.fail_start.add("crashy")
    crashy = {"bizName": "crashy", "bizVersion": "1", "bizUrl": "https://h/crashy.jar"}
    await controller.send(ident, "installBiz", crashy)
    assert (await controller.expect(ident, "bizOperation", 5)).json["data"]["response"][
        "code"
    ] == "FAILED"
    await controller.send(ident, "queryAllBiz", {})
    listing = assert_fresh_envelope(await controller.expect(ident, "simpleBiz"))
    broken = next(item for item in listing if item["name"] == "crashy")
    assert broken["state"] == "broken"
    assert broken["latestStateRecord"]["state"] == "BROKEN"
    assert broken["latestStateRecord"]["reason"] == "INSTALL_FAILED"
    assert "\tat " in broken["latestStateRecord"]["message"]


async def test_lock_conflict_reply(controller: FakeController, start_base: StartBase) -> None:
    base = await start_base()
    base.faults.install_delay_s = 1.0
    await controller.send(base.identity, "installBiz", BIZ1)
    await base.wait_for_command("installBiz", 1, timeout=5)
    await controller.send(base.identity, "installBiz", BIZ1)
    conflict = assert_fresh_envelope(await controller.expect(base.identity, "bizOperation", 1))
    assert conflict["response"] == {
        "code": "FAILED",
        "message": (
            "FAILED:biz1:0.0.1 installBiz conflict, "
            "exist unfinished command(installBiz) for this biz"
        ),
    }
    finished = assert_fresh_envelope(await controller.expect(base.identity, "bizOperation", 2))
    assert finished["response"]["code"] == "SUCCESS"


async def test_health_is_answered_while_an_install_runs(
    controller: FakeController, start_base: StartBase
) -> None:
    base = await start_base()
    base.faults.install_delay_s = 2.0
    await controller.send(base.identity, "installBiz", BIZ1)
    await controller.send(base.identity, "health", {})
    await controller.expect(base.identity, "health", timeout=1.5)
    assert controller.count(base.identity, "bizOperation") == 0
    await controller.expect(base.identity, "bizOperation", timeout=5)


async def test_baseline_batch_install(controller: FakeController, start_base: StartBase) -> None:
    base = await start_base()
    baseline = [
        BIZ1,
        {"bizName": "biz2", "bizVersion": "0.0.1", "bizUrl": "https://h/biz2.jar"},
    ]
    await controller.publish_raw(
        base_topic(controller.env, base.identity, "baseline"), json.dumps(baseline).encode()
    )
    reply = await controller.expect(base.identity, "batchInstallBizResponse")
    data = assert_fresh_envelope(reply)
    assert set(data) == {"command", "response"}
    assert data["command"] == "batchInstallBiz"
    response = data["response"]
    assert response["code"] == "SUCCESS"
    batch = response["data"]
    assert set(batch) == {"code", "message", "elapsedSpace", "bizUrlToResponse"}
    assert batch["code"] == "SUCCESS" and isinstance(batch["elapsedSpace"], int)
    by_url = batch["bizUrlToResponse"]
    assert set(by_url) == {BIZ1["bizUrl"], "https://h/biz2.jar"}
    for url, item in by_url.items():
        assert item["code"] == "SUCCESS"
        (info,) = item["bizInfos"]
        assert info == {
            "bizName": "biz1" if url == BIZ1["bizUrl"] else "biz2",
            "bizVersion": "0.0.1",
            "bizState": "ACTIVATED",
        }
    decode(BatchInstallMessage, reply.raw)
    await base.wait_for_module("biz2", "0.0.1", "ACTIVATED", timeout=2)


async def test_bad_input_is_dropped_and_the_base_keeps_working(
    controller: FakeController, start_base: StartBase
) -> None:
    base = await start_base()
    ident = base.identity
    await controller.send(ident, "installBiz", b"{not json")
    await controller.send(ident, "installBiz", b"[1,2,3]")
    await controller.send(ident, "installBiz", b"")
    await controller.send(ident, "switchBiz", BIZ1)  # not executed over MQTT by real bases
    await controller.send(ident, "batchInstallBiz", {"bizList": [BIZ1]})
    await controller.publish_raw(base_topic(controller.env, ident, "baseline"), b'{"no":"list"}')
    await controller.send(ident, "health", {})
    await controller.expect(ident, "health")
    await base.wait_for_command("health")
    assert [entry.malformed for entry in base.received("installBiz")] == [True, True, True]
    assert base.modules() == []
    assert controller.count(ident, "bizOperation") == 0
    assert controller.count(ident, "batchInstallBizResponse") == 0
    assert base.running and base.connected


async def test_retained_commands_are_replayed_to_a_restarted_base(
    controller: FakeController, start_base: StartBase
) -> None:
    base = await start_base()
    ident = base.identity
    await controller.send(ident, "installBiz", BIZ1, retain=True)
    await base.wait_for_module("biz1", "0.0.1", "ACTIVATED", timeout=5)
    try:
        await base.restart(new_identity=False)
        assert base.identity == ident
        await base.wait_connected(10)
        # A new JVM: empty table, then the retained install is executed again.
        await base.wait_for_module("biz1", "0.0.1", "ACTIVATED", timeout=5)
        await controller.expect(ident, "queryBaseline", count=2)
    finally:
        await controller.send(ident, "installBiz", b"", retain=True)  # clear the retained copy


async def test_client_id_and_reconnect_without_new_query_baseline(
    mqtt_broker: Broker, controller: FakeController, start_base: StartBase
) -> None:
    base = await start_base(mqtt_heartbeat_period_s=0.3)
    await controller.expect(base.identity, "heart")
    # The broker kicks a client when another connects with the same client id: proof of the
    # id, and a forced reconnect.
    async with aiomqtt.Client(
        mqtt_broker.host,
        mqtt_broker.port,
        username=mqtt_broker.username,
        password=mqtt_broker.password,
        identifier=f"koupleless@@@{base.identity}",
    ):
        await base.wait_for(lambda: not base.connected, 5, "kick by duplicate client id")
    await base.wait_for(lambda: base.mqtt_connections >= 2, 15, "reconnect")
    beats = controller.count(base.identity, "heart")
    await controller.expect(base.identity, "heart", count=beats + 2, timeout=5)
    await controller.send(base.identity, "health", {})  # re-subscribed after reconnect
    await controller.expect(base.identity, "health")
    assert controller.count(base.identity, "queryBaseline") == 1


async def test_crash_and_restart_with_new_identity(
    controller: FakeController, start_base: StartBase
) -> None:
    base = await start_base(mqtt_heartbeat_period_s=0.2)
    old = base.identity
    await controller.expect(old, "heart")
    await base.crash()
    silent_from = controller.count(old, "heart")
    await asyncio.sleep(0.6)  # three heartbeat periods: none may arrive from a dead base
    assert controller.count(old, "heart") == silent_from
    await base.restart(new_identity=True)
    assert base.identity != old
    await controller.expect(base.identity, "queryBaseline")
    await controller.expect(base.identity, "heart")


async def test_fault_heartbeats_and_clock(
    controller: FakeController, start_base: StartBase
) -> None:
    base = await start_base(mqtt_heartbeat_period_s=0.2)
    await controller.expect(base.identity, "heart")
    base.faults.heartbeats_stopped = True
    await asyncio.sleep(0.25)  # let a beat already in flight land
    stopped_at = controller.count(base.identity, "heart")
    await asyncio.sleep(0.6)
    assert controller.count(base.identity, "heart") == stopped_at
    base.faults.clock_skew_ms = -60_000
    base.faults.heartbeats_stopped = False
    stale = await controller.expect(base.identity, "heart", count=stopped_at + 1, timeout=3)
    assert stale.at_ms - stale.json["publishTimestamp"] > 50_000
    assert not decode(HeartMessage, stale.raw).is_fresh()


async def test_fault_duplicate_reordered_and_malformed_replies(
    controller: FakeController, start_base: StartBase
) -> None:
    base = await start_base()
    ident = base.identity
    base.faults.duplicate_replies = True
    await controller.send(ident, "health", {})
    await controller.expect(ident, "health", count=2)
    first, second = controller.messages[(ident, "health")]
    assert first.raw == second.raw
    base.faults.duplicate_replies = False

    base.faults.reorder_replies = True
    await controller.send(ident, "installBiz", BIZ1)
    await base.wait_for_module("biz1", "0.0.1", "ACTIVATED", timeout=5)
    await controller.send(ident, "queryAllBiz", {})
    await controller.expect(ident, "bizOperation")
    await controller.expect(ident, "simpleBiz")
    operation = controller.messages[(ident, "bizOperation")][0]
    inventory = controller.messages[(ident, "simpleBiz")][0]
    assert inventory.at_ms <= operation.at_ms, "held-back reply was not sent after the next"
    base.faults.reorder_replies = False

    base.faults.malformed_replies = 1
    await controller.send(ident, "health", {})
    bad = await controller.expect(ident, "health", count=3)
    try:
        json.loads(bad.raw)
        raise AssertionError("a malformed reply was valid JSON")
    except json.JSONDecodeError:
        pass
    await controller.send(ident, "health", {})
    good = await controller.expect(ident, "health", count=4)
    decode(HealthMessage, good.raw)


async def test_fault_health_and_graceful_exit(
    controller: FakeController, start_base: StartBase
) -> None:
    base = await start_base()
    base.faults.master_biz_state = "DEACTIVATED"
    await controller.send(base.identity, "health", {})
    health = assert_fresh_envelope(await controller.expect(base.identity, "health"))
    assert health["data"]["healthData"]["masterBizInfo"]["bizState"] == "DEACTIVATED"
    base.faults.health_code = "FAILED"
    await controller.send(base.identity, "health", {})
    failed = assert_fresh_envelope(await controller.expect(base.identity, "health", 2))
    assert failed == {"code": "FAILED", "message": "simulated health check failure"}
    beats = controller.count(base.identity, "heart")
    await base.graceful_exit()
    goodbye = await controller.expect(base.identity, "heart", count=beats + 1)
    assert goodbye.json["data"]["state"] == "deactivated"
    assert not decode(HeartMessage, goodbye.raw).data.is_activated


async def test_fault_ignored_commands_are_logged_but_not_answered(
    controller: FakeController, start_base: StartBase
) -> None:
    base = await start_base()
    base.faults.ignore_commands.add("health")
    await controller.send(base.identity, "health", {})
    await controller.send(base.identity, "queryAllBiz", {})
    await controller.expect(base.identity, "simpleBiz")  # sent after health was dropped
    assert len(base.received("health")) == 1
    assert controller.count(base.identity, "health") == 0
