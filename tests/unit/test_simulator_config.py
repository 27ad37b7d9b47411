"""Simulator configuration: CLI options, environment, loopback addresses, jar fetching."""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import pytest

from module_controller.protocol.biz import BizModel
from module_controller.simulator import cli
from module_controller.simulator.addresses import can_bind, loopback_ips, require_loopback
from module_controller.simulator.ark import ArkContainer, JavaException
from module_controller.simulator.arklet import Arklet
from module_controller.simulator.config import BaseConfig, IdentityStyle
from module_controller.simulator.faults import Faults


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    return parser.parse_args(["simulate", *argv])


def test_simulate_options_become_a_base_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "MQTT_BROKER": "127.0.0.5",
        "MQTT_PORT": "18830",
        "MQTT_USERNAME": "u",
        "MQTT_PASSWORD": "p",
    }.items():
        monkeypatch.setenv(name, value)
    args = parse("--bases", "3", "--name", "base", "--version", "1.1.1", "--env", "DEV")
    assert args.bases == 3 and args.handler is cli.run
    config = cli.config_from_args(args)
    assert (config.name, config.version, config.cluster_name, config.env) == (
        "base",
        "1.1.1",
        "default",
        "dev",
    )
    assert config.identity_style is IdentityStyle.UUID
    assert config.mqtt is not None
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.username, config.mqtt.password) == (
        "127.0.0.5",
        18830,
        "u",
        "p",
    )
    assert config.mqtt.client_prefix == "koupleless" and config.mqtt.ca_path is None


def test_simulate_rejects_a_non_loopback_heartbeat_endpoint() -> None:
    args = parse("--name", "b", "--version", "1", "--http-heartbeat", "http://192.168.1.9:7777")
    with pytest.raises(ValueError):
        cli.config_from_args(args)


def test_identity_styles() -> None:
    uuid_config = BaseConfig(ip="127.0.0.9")
    assert uuid_config.resolve_identity() != uuid_config.resolve_identity()
    assert BaseConfig(ip="127.0.0.9", identity_style=IdentityStyle.IP).resolve_identity() == (
        "127.0.0.9"
    )
    assert BaseConfig(identity="fixed").resolve_identity() == "fixed"


def test_loopback_addresses_skip_reserved_ones_and_bind() -> None:
    ips = loopback_ips("127.0.0.254")
    assert [next(ips) for _ in range(3)] == ["127.0.0.254", "127.0.1.1", "127.0.1.2"]
    first = next(loopback_ips("127.0.0.0"))
    assert first == "127.0.0.2"
    with pytest.raises(ValueError):
        require_loopback("10.0.0.1")
    assert can_bind("127.0.33.44")


async def test_fetch_reads_file_urls_and_fails_like_a_base(tmp_path: Path) -> None:
    config = BaseConfig(fetch_jars=True)
    container = ArkContainer(
        "base",
        "1",
        activate_new_module=True,
        auto_uninstall_when_failed=False,
        remove_biz_when_stop_failed=True,
    )
    arklet = Arklet(config, container, Faults(), random.Random(0))
    jar = tmp_path / "biz1-1.0.0-ark-biz.jar"
    jar.write_bytes(b"PK\x03\x04simulated")
    installed = await arklet.install(BizModel(biz_url=jar.as_uri()))
    assert installed.ok and container.get("biz1", "1.0.0") is not None
    missing = BizModel(biz_name="gone", biz_version="1", biz_url=(tmp_path / "gone.jar").as_uri())
    with pytest.raises(JavaException) as caught:
        await arklet.install(missing)
    assert caught.value.message.startswith("java.io.FileNotFoundException: ")
    remote = BizModel(biz_name="r", biz_version="1", biz_url="https://example.com/r.jar")
    with pytest.raises(JavaException) as refused:
        await arklet.install(remote)
    assert refused.value.message == "java.net.UnknownHostException: example.com"
    assert container.get("gone", "1") is None and container.get("r", "1") is None
