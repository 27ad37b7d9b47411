"""The testbed's broker is a real Mosquitto that insists on the generated credentials."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import aiomqtt
import pytest

from module_controller.testbed.mosquitto import BrokerInfo


async def test_broker_refuses_anonymous_clients(mqtt_broker: BrokerInfo) -> None:
    with pytest.raises(aiomqtt.MqttError, match=r"[Nn]ot authori[sz]ed"):
        async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port, timeout=5):
            pass


async def test_broker_refuses_a_wrong_password(mqtt_broker: BrokerInfo) -> None:
    with pytest.raises(aiomqtt.MqttError, match=r"[Nn]ot authori[sz]ed"):
        async with aiomqtt.Client(
            mqtt_broker.host,
            mqtt_broker.port,
            username=mqtt_broker.username,
            password=mqtt_broker.password + "-wrong",
            timeout=5,
        ):
            pass


async def test_broker_carries_messages_for_the_generated_credentials(
    mqtt_broker: BrokerInfo,
) -> None:
    async with aiomqtt.Client(
        mqtt_broker.host,
        mqtt_broker.port,
        username=mqtt_broker.username,
        password=mqtt_broker.password,
        timeout=5,
    ) as mqtt:
        await mqtt.subscribe("testbed/echo", qos=1)
        await mqtt.publish("testbed/echo", b"hello", qos=1)
        async with asyncio.timeout(10):
            async for message in mqtt.messages:
                assert message.payload == b"hello"
                break


def _module_controller(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "module_controller.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _exports(text: str) -> dict[str, str]:
    pairs = {}
    for line in text.splitlines():
        assert line.startswith("export "), f"not a shell export: {line!r}"
        name, _, value = line.removeprefix("export ").partition("=")
        pairs[name] = value.strip("'")
    return pairs


async def test_testbed_cli_up_prints_exports_and_down_stops_everything(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    up = _module_controller("testbed", "up", "--no-cluster", "--state-dir", str(state_dir))
    assert up.returncode == 0, up.stderr
    exports = _exports(up.stdout)
    assert set(exports) == {"MQTT_BROKER", "MQTT_PORT", "MQTT_USERNAME", "MQTT_PASSWORD"}
    state = json.loads((state_dir / "state.json").read_text())
    pid = state["processes"][0]["pid"]
    try:
        async with aiomqtt.Client(
            exports["MQTT_BROKER"],
            int(exports["MQTT_PORT"]),
            username=exports["MQTT_USERNAME"],
            password=exports["MQTT_PASSWORD"],
            timeout=5,
        ):
            pass
        again = _module_controller("testbed", "up", "--no-cluster", "--state-dir", str(state_dir))
        assert again.returncode == 0, again.stderr
        assert _exports(again.stdout) == exports, "a second `up` must reuse the running testbed"
    finally:
        down = _module_controller("testbed", "down", "--state-dir", str(state_dir))
    assert down.returncode == 0, down.stderr
    assert "Stopped mosquitto" in down.stderr
    assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid), f"mosquitto (pid {pid}) runs on"


def _is_zombie(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] == "Z"
