"""What the benchmarks share: the operator as a child process, a fleet of MQTT bases, waits."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from module_controller.simulator.config import BaseConfig, MqttSettings
from module_controller.simulator.fleet import Fleet
from module_controller.testbed import testbed


def start_operator(
    state: testbed.TestbedState, env: str, log: Path, **settings: str
) -> subprocess.Popen[bytes]:
    """`module-controller run` against the testbed's cluster and broker, logging to `log`."""
    assert state.kubeconfig is not None and state.broker is not None
    broker = state.broker
    environment = {
        **os.environ,
        "KUBECONFIG": state.kubeconfig,
        "ENV": env,
        "MQTT_BROKER": broker.host,
        "MQTT_PORT": str(broker.port),
        "MQTT_USERNAME": broker.username,
        "MQTT_PASSWORD": broker.password,
        "METRICS_PORT": "0",
        "HEALTH_PORT": "0",
        **settings,
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "module_controller.cli", "run"],
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def mqtt_fleet(
    state: testbed.TestbedState, env: str, first_ip: str, name: str = "base", version: str = "1.1.1"
) -> Fleet:
    """Simulated bases of the seed's base on the testbed's broker, MQTT only."""
    assert state.broker is not None
    broker = state.broker
    return Fleet(
        BaseConfig(
            name=name,
            version=version,
            env=env,
            http_api=False,
            mqtt=MqttSettings(broker.host, broker.port, broker.username, broker.password),
        ),
        first_ip=first_ip,
    )


async def wait(condition: Callable[[], Awaitable[object]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout:.0f}s")
        await asyncio.sleep(0.5)
