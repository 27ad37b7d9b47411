"""Module jars: writing test jars, reading their manifest, and a base that fetches them
registering the biz under the manifest's name and version, as a real base does."""

from __future__ import annotations

import asyncio
import random
import zipfile
from pathlib import Path

import pytest

from module_controller.protocol import BizState, ClientResponseCode, ResponseCode
from module_controller.protocol.biz import (
    BIZ_STOP_ILLEGAL_STATE_TEXT,
    BatchInstallRequest,
    BizModel,
    ClientResponse,
    repeat_biz_text,
)
from module_controller.simulator import jars
from module_controller.simulator.ark import ArkContainer, JavaException
from module_controller.simulator.arklet import Arklet
from module_controller.simulator.config import BaseConfig
from module_controller.simulator.faults import Faults
from module_controller.simulator.jars import manifest_name_version, write_module_jar


def fetching_arklet() -> tuple[Arklet, ArkContainer]:
    config = BaseConfig(name="base", version="1.1.1", fetch_jars=True)
    container = ArkContainer(
        "base",
        "1.1.1",
        activate_new_module=config.activate_new_module,
        auto_uninstall_when_failed=config.auto_uninstall_when_failed,
        remove_biz_when_stop_failed=config.remove_biz_when_stop_failed,
    )
    return Arklet(config, container, Faults(), random.Random(0)), container


def keys(container: ArkContainer) -> list[str]:
    return [biz.key for biz in container.bizs()]


def test_a_written_jar_declares_its_name_and_version(tmp_path: Path) -> None:
    jar = write_module_jar(tmp_path / "out" / "biz1.jar", "biz1", "0.0.1")
    assert jar == tmp_path / "out" / "biz1.jar"
    with zipfile.ZipFile(jar) as archive:
        names = archive.namelist()
        manifest = archive.read("META-INF/MANIFEST.MF").decode()
    assert names[0] == "META-INF/MANIFEST.MF" and jars.ARK_BIZ_MARK_ENTRY in names
    assert manifest.startswith("Manifest-Version: 1.0\r\n")
    assert "Ark-Biz-Name: biz1\r\n" in manifest and "Ark-Biz-Version: 0.0.1\r\n" in manifest
    assert manifest_name_version(jar.read_bytes()) == ("biz1", "0.0.1")


def test_long_manifest_values_wrap_at_72_bytes_and_read_back(tmp_path: Path) -> None:
    name = "module-" + "é" * 60 + "-x" * 20
    jar = write_module_jar(tmp_path / "long.jar", name, "1.0.0-SNAPSHOT")
    with zipfile.ZipFile(jar) as archive:
        lines = archive.read("META-INF/MANIFEST.MF").split(b"\r\n")
    assert max(len(line) for line in lines) <= 72
    assert any(line.startswith(b" ") for line in lines), "expected continuation lines"
    assert manifest_name_version(jar.read_bytes()) == (name, "1.0.0-SNAPSHOT")


@pytest.mark.parametrize(
    "entries",
    [
        {},  # a zip without a manifest
        {"META-INF/MANIFEST.MF": "Manifest-Version: 1.0\r\nArk-Biz-Name: only-name\r\n\r\n"},
        {"META-INF/MANIFEST.MF": "Manifest-Version: 1.0\r\n\r\nArk-Biz-Name: in-a-section\r\n"},
    ],
)
def test_jars_without_both_attributes_have_no_identity(
    tmp_path: Path, entries: dict[str, str]
) -> None:
    path = tmp_path / "plain.jar"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.class", b"\xca\xfe\xba\xbe")
        for entry, text in entries.items():
            archive.writestr(entry, text)
    assert manifest_name_version(path.read_bytes()) is None
    assert manifest_name_version(b"PK\x03\x04 not really a zip") is None


async def test_the_manifest_wins_over_the_request(tmp_path: Path) -> None:
    arklet, container = fetching_arklet()
    url = write_module_jar(tmp_path / "biz1.jar", "biz1", "0.0.1").as_uri()
    asked = BizModel(biz_name="biz1", biz_version="0.0.3", biz_url=url)
    output = await arklet.install(asked)
    assert output.code == ResponseCode.SUCCESS and isinstance(output.data, ClientResponse)
    assert output.data.message is not None
    assert output.data.message.startswith("Install Biz: biz1:0.0.1 success")
    infos = output.data.biz_infos or []
    assert [(i.biz_name, i.biz_version, i.biz_state) for i in infos] == [
        ("biz1", "0.0.1", BizState.ACTIVATED)
    ]
    assert keys(container) == ["biz1:0.0.1"]

    again = await arklet.install(asked)
    assert again.code == ResponseCode.FAILED and isinstance(again.data, ClientResponse)
    assert again.data.code == ClientResponseCode.REPEAT_BIZ
    assert again.data.message == "Biz: biz1:0.0.1 has been installed or registered."
    assert again.data.message == repeat_biz_text("biz1", "0.0.1")
    assert keys(container) == ["biz1:0.0.1"]


async def test_a_jar_without_manifest_keeps_the_requested_identity(tmp_path: Path) -> None:
    arklet, container = fetching_arklet()
    path = tmp_path / "anything.jar"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.class", b"\xca\xfe\xba\xbe")
    output = await arklet.install(BizModel(biz_name="m", biz_version="2", biz_url=path.as_uri()))
    assert output.ok and keys(container) == ["m:2"]


async def test_batch_entries_report_the_biz_the_manifest_declares(tmp_path: Path) -> None:
    arklet, container = fetching_arklet()
    url = write_module_jar(tmp_path / "b.jar", "b", "1.0.0").as_uri()
    output = await arklet.batch_install(
        BatchInstallRequest(biz_list=[BizModel(biz_name="b", biz_version="9", biz_url=url)])
    )
    assert output.data is not None and output.data.biz_url_to_response is not None
    infos = output.data.biz_url_to_response[url].biz_infos or []
    assert [(i.biz_name, i.biz_version, i.biz_state) for i in infos] == [
        ("b", "1.0.0", BizState.ACTIVATED)
    ]
    assert keys(container) == ["b:1.0.0"]


async def test_a_missing_jar_fails_and_leaves_nothing(tmp_path: Path) -> None:
    arklet, container = fetching_arklet()
    url = (tmp_path / "missing.jar").as_uri()
    with pytest.raises(JavaException) as caught:
        await arklet.install(BizModel(biz_name="gone", biz_version="1", biz_url=url))
    assert caught.value.message.startswith("java.io.FileNotFoundException: ")
    assert container.bizs() == []


async def test_uninstall_during_the_install_of_the_same_biz_fails_on_its_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arklet, container = fetching_arklet()
    url = write_module_jar(tmp_path / "biz1.jar", "biz1", "0.0.1").as_uri()
    downloading = asyncio.Event()
    release = asyncio.Event()
    real_fetch = jars.fetch

    async def slow_fetch(jar_url: str, timeout_s: float = 30.0) -> bytes:
        downloading.set()
        await release.wait()
        return await real_fetch(jar_url, timeout_s)

    monkeypatch.setattr(jars, "fetch", slow_fetch)
    request = BizModel(biz_name="biz1", biz_version="0.0.1", biz_url=url)
    install = asyncio.create_task(arklet.install(request))
    await asyncio.wait_for(downloading.wait(), timeout=5)
    with pytest.raises(JavaException) as caught:
        await arklet.uninstall(BizModel(biz_name="biz1", biz_version="0.0.1"))
    assert (
        caught.value.message == f"java.lang.IllegalArgumentException: {BIZ_STOP_ILLEGAL_STATE_TEXT}"
    )
    assert BIZ_STOP_ILLEGAL_STATE_TEXT == "BizState must be ACTIVATED, DEACTIVATED or BROKEN."
    release.set()
    assert (await asyncio.wait_for(install, timeout=5)).ok
    # Retried once the install is over, the uninstall goes through.
    assert (await arklet.uninstall(BizModel(biz_name="biz1", biz_version="0.0.1"))).ok
    assert container.bizs() == []
