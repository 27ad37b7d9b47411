"""The simulated SOFAArk state machine and Arklet handlers (spec §1.3-§1.5), no network."""

from __future__ import annotations

import asyncio
import random

import pytest

from module_controller.protocol import BizState, ClientResponseCode, ResponseCode
from module_controller.protocol.arklet import INSTALL_NOT_SUCCESS_TEXT, UNINSTALL_NOT_SUCCESS_TEXT
from module_controller.protocol.biz import BatchInstallRequest, BizModel, ClientResponse
from module_controller.protocol.states import StateChangeReason
from module_controller.simulator.ark import ArkContainer, JavaException
from module_controller.simulator.arklet import Arklet
from module_controller.simulator.config import BaseConfig
from module_controller.simulator.faults import Faults
from module_controller.simulator.jars import name_version_from_url, validate_url


def make_arklet(**options: bool) -> tuple[Arklet, ArkContainer, Faults]:
    config = BaseConfig(name="base", version="1.1.1", **options)  # type: ignore[arg-type]
    container = ArkContainer(
        "base",
        "1.1.1",
        activate_new_module=config.activate_new_module,
        auto_uninstall_when_failed=config.auto_uninstall_when_failed,
        remove_biz_when_stop_failed=config.remove_biz_when_stop_failed,
    )
    faults = Faults()
    return Arklet(config, container, faults, random.Random(0)), container, faults


def biz(name: str = "biz1", version: str = "0.0.1") -> BizModel:
    return BizModel(biz_name=name, biz_version=version, biz_url=f"https://h/{name}-{version}.jar")


def states(container: ArkContainer) -> dict[str, BizState]:
    return {item.key: item.state for item in container.bizs()}


async def test_install_goes_resolved_then_activated_with_records() -> None:
    arklet, container, _ = make_arklet()
    output = await arklet.install(biz())
    assert output.code == ResponseCode.SUCCESS
    assert isinstance(output.data, ClientResponse) and output.data.code == "SUCCESS"
    assert output.data.message is not None
    assert output.data.message.startswith("Install Biz: biz1:0.0.1 success, cost: ")
    installed = container.get("biz1", "0.0.1")
    assert installed is not None and installed.state is BizState.ACTIVATED
    assert [(r.state, r.reason) for r in installed.records] == [
        (BizState.RESOLVED, StateChangeReason.CREATED),
        (BizState.ACTIVATED, StateChangeReason.STARTED),
    ]
    times = [record.change_time for record in installed.records]
    assert times == sorted(times) and len(set(times)) == len(times)


async def test_repeat_install_is_repeat_biz() -> None:
    arklet, _, _ = make_arklet()
    await arklet.install(biz())
    again = await arklet.install(biz())
    assert again.code == ResponseCode.FAILED and again.message == INSTALL_NOT_SUCCESS_TEXT
    assert isinstance(again.data, ClientResponse)
    assert again.data.code == ClientResponseCode.REPEAT_BIZ
    assert again.data.message == "Biz: biz1:0.0.1 has been installed or registered."
    assert again.data.elapsed_space == 0


async def test_second_version_takes_over_by_default() -> None:
    arklet, container, _ = make_arklet()
    await arklet.install(biz(version="1"))
    await arklet.install(biz(version="2"))
    assert states(container) == {"biz1:1": BizState.DEACTIVATED, "biz1:2": BizState.ACTIVATED}
    old = container.get("biz1", "1")
    assert old is not None and old.records[-1].reason is StateChangeReason.SWITCHED


async def test_second_version_starts_deactivated_when_switched_off() -> None:
    arklet, container, _ = make_arklet(activate_new_module=False)
    await arklet.install(biz(version="1"))
    await arklet.install(biz(version="2"))
    assert states(container) == {"biz1:1": BizState.ACTIVATED, "biz1:2": BizState.DEACTIVATED}
    switched = await arklet.switch(biz(version="2"))
    assert switched.ok
    assert states(container) == {"biz1:1": BizState.DEACTIVATED, "biz1:2": BizState.ACTIVATED}


async def test_start_failure_keeps_broken_biz_with_stack_trace() -> None:
    arklet, container, faults = make_arklet()
    faults.fail_start.add("biz1")
    with pytest.raises(JavaException) as caught:
        await arklet.install(biz())
    assert "simulated start failure" in caught.value.message
    broken = container.get("biz1", "0.0.1")
    assert broken is not None and broken.state is BizState.BROKEN
    last = broken.latest_record
    assert last is not None and last.reason is StateChangeReason.INSTALL_FAILED
    assert last.message is not None and "\tat " in last.message


async def test_start_failure_removes_biz_with_auto_uninstall() -> None:
    arklet, container, faults = make_arklet(auto_uninstall_when_failed=True)
    faults.fail_start_probability = 1.0
    with pytest.raises(JavaException):
        await arklet.install(biz())
    assert container.bizs() == []


async def test_download_failure_creates_no_biz() -> None:
    arklet, container, faults = make_arklet()
    faults.fail_download.add("biz1:0.0.1")
    with pytest.raises(JavaException) as caught:
        await arklet.install(biz())
    assert caught.value.message == "java.io.FileNotFoundException: https://h/biz1-0.0.1.jar"
    assert container.bizs() == []


async def test_uninstall_stops_and_removes_and_unknown_is_not_found() -> None:
    arklet, container, _ = make_arklet()
    await arklet.install(biz())
    done = await arklet.uninstall(biz())
    assert done.ok and isinstance(done.data, ClientResponse)
    assert done.data.message == "Uninstall biz: biz1:0.0.1 success."
    assert container.bizs() == []
    missing = await arklet.uninstall(biz())
    assert missing.code == ResponseCode.FAILED and missing.message == UNINSTALL_NOT_SUCCESS_TEXT
    assert isinstance(missing.data, ClientResponse)
    assert missing.data.code == ClientResponseCode.NOT_FOUND_BIZ
    assert missing.data.message == "Uninstall biz: biz1:0.0.1 not found."


async def test_uninstall_failure_raises_and_removes_by_default() -> None:
    arklet, container, faults = make_arklet()
    await arklet.install(biz())
    faults.fail_uninstall.add("biz1")
    with pytest.raises(JavaException):
        await arklet.uninstall(biz())
    assert container.bizs() == []


async def test_master_biz_cannot_be_uninstalled() -> None:
    arklet, _, _ = make_arklet()
    output = await arklet.uninstall(BizModel(biz_name="base", biz_version="1.1.1"))
    assert isinstance(output.data, ClientResponse)
    assert output.data.message == "Master biz must not be uninstalled."


async def test_same_biz_twice_at_once_is_a_lock_conflict() -> None:
    arklet, container, faults = make_arklet()
    faults.install_delay_s = 0.2
    first = asyncio.create_task(arklet.install(biz()))
    await asyncio.sleep(0.05)
    second = await arklet.install(biz())
    assert second.code == ResponseCode.FAILED and second.data is None
    assert second.message == (
        "FAILED:biz1:0.0.1 installBiz conflict, exist unfinished command(installBiz) for this biz"
    )
    assert (await first).ok
    assert states(container) == {"biz1:0.0.1": BizState.ACTIVATED}


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (BizModel(biz_name="a", biz_version="1", biz_url=""), "bizUrl should not be blank"),
        (
            BizModel(biz_name="a", biz_url="https://h/a.jar"),
            "bizName and bizVersion should be both blank or both not blank",
        ),
        (
            BizModel(biz_name="a", biz_version="1", biz_url="/opt/a.jar"),
            "java.net.MalformedURLException: no protocol: /opt/a.jar",
        ),
        (
            BizModel(biz_name="a", biz_version="1", biz_url="gopher://h/a.jar"),
            "java.net.MalformedURLException: unknown protocol: gopher",
        ),
    ],
)
async def test_install_input_validation(request_: BizModel, message: str) -> None:
    arklet, container, _ = make_arklet()
    with pytest.raises(JavaException) as caught:
        await arklet.install(request_)
    assert caught.value.message == message
    assert container.bizs() == []


async def test_name_and_version_may_come_from_the_jar_name() -> None:
    arklet, container, _ = make_arklet()
    output = await arklet.install(BizModel(biz_url="file:///x/biz9-2.0.1-ark-biz.jar"))
    assert output.ok and states(container) == {"biz9:2.0.1": BizState.ACTIVATED}
    assert name_version_from_url("https://h/download?id=3") is None
    validate_url("FILE:///x.jar")


async def test_batch_install_reports_per_url_with_biz_infos() -> None:
    arklet, _, faults = make_arklet()
    await arklet.install(biz("dup", "1"))
    faults.fail_start.add("bad")
    request = BatchInstallRequest(biz_list=[biz("ok", "1"), biz("dup", "1"), biz("bad", "1")])
    output = await arklet.batch_install(request)
    assert output.code == ResponseCode.FAILED
    data = output.data
    assert data is not None and data.code == "FAILED" and data.biz_url_to_response is not None
    by_url = data.biz_url_to_response
    assert by_url["https://h/ok-1.jar"].code == "SUCCESS"
    assert by_url["https://h/dup-1.jar"].code == "REPEAT_BIZ"
    assert by_url["https://h/bad-1.jar"].code == "FAILED"
    for response in by_url.values():
        assert response.biz_infos is not None and len(response.biz_infos) == 1
    bad_infos = by_url["https://h/bad-1.jar"].biz_infos
    assert bad_infos is not None and bad_infos[0].biz_state is BizState.BROKEN


async def test_health_reports_master_and_modules() -> None:
    arklet, _, faults = make_arklet()
    await arklet.install(biz())
    health = arklet.health().data
    assert health is not None
    data = health.health_data
    assert data.master_biz_info is not None and data.master_biz_info.biz_name == "base"
    assert data.biz_list_info is not None and len(data.biz_list_info) == 2
    assert data.jvm is not None and data.jvm.java_max_metaspace is not None
    faults.health_code = "FAILED"
    assert arklet.health().code == "FAILED" and arklet.health().data is None
