"""Conformance with what a real base was seen doing on the wire ("Observed on a real base" in
reference/wire-protocol.md), driven over the real broker as a controller does."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from module_controller.protocol import decode
from module_controller.protocol.biz import BIZ_STOP_ILLEGAL_STATE_TEXT
from module_controller.protocol.messages import BizOperationMessage, SimpleBizMessage
from module_controller.simulator.jars import write_module_jar
from tests.integration.simulator.conftest import FakeController, Received, StartBase


def data_of(message: Received, model: type[Any] = BizOperationMessage) -> Any:
    """The envelope's data, after checking the controller's models decode the message."""
    decode(model, message.raw)
    return message.json["data"]


async def inventory(controller: FakeController, identity: str) -> list[dict[str, Any]]:
    """Ask for queryAllBiz and return the next simpleBiz list."""
    count = controller.count(identity, "simpleBiz") + 1
    await controller.send(identity, "queryAllBiz", {})
    listing = data_of(await controller.expect(identity, "simpleBiz", count), SimpleBizMessage)
    assert isinstance(listing, list)
    return listing


async def test_a_failed_download_answers_failed_and_leaves_nothing(
    tmp_path: Path, controller: FakeController, start_base: StartBase
) -> None:
    base = await start_base(fetch_jars=True)
    missing = (tmp_path / "nowhere" / "biz1-0.0.1-ark-biz.jar").as_uri()
    await controller.send(
        base.identity, "installBiz", {"bizName": "biz1", "bizVersion": "0.0.1", "bizUrl": missing}
    )
    operation = data_of(await controller.expect(base.identity, "bizOperation"))
    assert (operation["command"], operation["bizName"], operation["bizVersion"]) == (
        "installBiz",
        "biz1",
        "0.0.1",
    )
    response = operation["response"]
    assert response["code"] == "FAILED"
    assert response["message"].startswith("java.io.FileNotFoundException: ")
    assert response["data"]["code"] == "FAILED"
    assert "java.io.FileNotFoundException" in response["data"]["message"]
    assert await inventory(controller, base.identity) == []
    assert base.modules() == []


async def test_a_start_failure_stays_listed_as_broken(
    tmp_path: Path, controller: FakeController, start_base: StartBase
) -> None:
    base = await start_base(fetch_jars=True)
    base.faults.fail_start.add("crashy")
    url = write_module_jar(tmp_path / "crashy.jar", "crashy", "1.0.0").as_uri()
    await controller.send(
        base.identity, "installBiz", {"bizName": "crashy", "bizVersion": "1.0.0", "bizUrl": url}
    )
    operation = data_of(await controller.expect(base.identity, "bizOperation"))
    assert operation["response"]["code"] == "FAILED"
    (entry,) = await inventory(controller, base.identity)
    assert (entry["name"], entry["version"], entry["state"]) == ("crashy", "1.0.0", "broken")
    assert entry["latestStateRecord"]["reason"] == "INSTALL_FAILED"


async def test_the_jar_manifest_wins_and_a_second_install_is_repeat_biz(
    tmp_path: Path, controller: FakeController, start_base: StartBase
) -> None:
    base = await start_base(fetch_jars=True)
    url = write_module_jar(tmp_path / "biz1.jar", "biz1", "0.0.1").as_uri()
    asked = {"bizName": "biz1", "bizVersion": "0.0.3", "bizUrl": url}
    await controller.send(base.identity, "installBiz", asked)
    operation = data_of(await controller.expect(base.identity, "bizOperation", 1))
    # The top level echoes the request; bizInfos tell what was really registered.
    assert (operation["bizName"], operation["bizVersion"]) == ("biz1", "0.0.3")
    assert operation["response"]["code"] == "SUCCESS"
    infos = operation["response"]["data"]["bizInfos"]
    assert [(i["bizName"], i["bizVersion"], i["bizState"]) for i in infos] == [
        ("biz1", "0.0.1", "ACTIVATED")
    ]
    listing = await inventory(controller, base.identity)
    assert [(e["name"], e["version"], e["state"]) for e in listing] == [
        ("biz1", "0.0.1", "activated")
    ]

    await controller.send(base.identity, "installBiz", asked)
    repeat = data_of(await controller.expect(base.identity, "bizOperation", 2))
    assert (repeat["bizName"], repeat["bizVersion"]) == ("biz1", "0.0.3")
    assert repeat["response"]["code"] == "FAILED"
    assert repeat["response"]["data"]["code"] == "REPEAT_BIZ"
    assert (
        repeat["response"]["data"]["message"] == "Biz: biz1:0.0.1 has been installed or registered."
    )
    assert [biz.key for biz in base.modules()] == ["biz1:0.0.1"]


async def test_a_jar_without_manifest_is_installed_under_the_requested_identity(
    tmp_path: Path, controller: FakeController, start_base: StartBase
) -> None:
    base = await start_base(fetch_jars=True)
    path = tmp_path / "plain.jar"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.class", b"\xca\xfe\xba\xbe")
    request = {"bizName": "plain", "bizVersion": "2.0.0", "bizUrl": path.as_uri()}
    await controller.send(base.identity, "installBiz", request)
    operation = data_of(await controller.expect(base.identity, "bizOperation"))
    infos = operation["response"]["data"]["bizInfos"]
    assert [(i["bizName"], i["bizVersion"]) for i in infos] == [("plain", "2.0.0")]


async def test_uninstall_in_the_middle_of_an_install_fails_on_the_biz_state(
    tmp_path: Path, controller: FakeController, start_base: StartBase
) -> None:
    base = await start_base(fetch_jars=True)
    base.faults.install_delay_s = 1.0  # the install is still running when the uninstall lands
    url = write_module_jar(tmp_path / "biz1.jar", "biz1", "0.0.1").as_uri()
    biz1 = {"bizName": "biz1", "bizVersion": "0.0.1", "bizUrl": url}
    await controller.send(base.identity, "installBiz", biz1)
    await base.wait_for_command("installBiz", 1, timeout=5)
    await controller.send(base.identity, "uninstallBiz", biz1)
    refused = data_of(await controller.expect(base.identity, "bizOperation", 1))
    assert (refused["command"], refused["bizName"]) == ("uninstallBiz", "biz1")
    assert refused["response"]["code"] == "FAILED"
    assert refused["response"]["message"].endswith(BIZ_STOP_ILLEGAL_STATE_TEXT)
    assert "BizState must be ACTIVATED, DEACTIVATED or BROKEN" in refused["response"]["message"]
    installed = data_of(await controller.expect(base.identity, "bizOperation", 2))
    assert installed["command"] == "installBiz" and installed["response"]["code"] == "SUCCESS"
    # Retried after the install, the uninstall succeeds.
    await controller.send(base.identity, "uninstallBiz", biz1)
    done = data_of(await controller.expect(base.identity, "bizOperation", 3))
    assert done["response"]["code"] == "SUCCESS"
    assert await inventory(controller, base.identity) == []


async def test_letter_case_per_topic_and_simple_biz_without_the_base(
    controller: FakeController, start_base: StartBase
) -> None:
    base = await start_base()
    url = "https://h/biz1-0.0.1-ark-biz.jar"
    await controller.send(
        base.identity, "installBiz", {"bizName": "biz1", "bizVersion": "0.0.1", "bizUrl": url}
    )
    operation = data_of(await controller.expect(base.identity, "bizOperation"))
    (info,) = operation["response"]["data"]["bizInfos"]
    assert info["bizState"] == "ACTIVATED"
    assert [(r["state"], r["reason"]) for r in info["bizStateRecords"]] == [
        ("RESOLVED", "CREATED"),
        ("ACTIVATED", "STARTED"),
    ]
    listing = await inventory(controller, base.identity)
    assert [(e["name"], e["state"]) for e in listing] == [("biz1", "activated")]
    assert listing[0]["latestStateRecord"]["state"] == "ACTIVATED"
    assert all(e["name"] != base.config.name for e in listing), "simpleBiz lists the base"
    heart = await controller.expect(base.identity, "heart")
    assert heart.json["data"]["state"] == "activated"
