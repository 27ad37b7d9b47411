"""What the benchmarks share: the operator as a child process, a fleet of MQTT bases, waits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from module_controller.simulator.config import BaseConfig, MqttSettings
from module_controller.simulator.fleet import Fleet
from module_controller.testbed import testbed
from module_controller.testbed.operator_process import OperatorProcess, operator_environment

# The benchmarks' operator serves up to 1,000 bases: more time to shut down than the demo's.
OPERATOR_STOP_GRACE_SECONDS = 30.0


def start_operator(
    state: testbed.TestbedState, env: str, log: Path, **settings: str
) -> OperatorProcess:
    """`module-controller run` against the testbed's cluster and broker, logging to `log`.

    Stop it with `stop(OPERATOR_STOP_GRACE_SECONDS)`."""
    assert state.kubeconfig is not None and state.broker is not None
    operator = OperatorProcess(
        operator_environment(state.kubeconfig, env, state.broker, settings), log
    )
    operator.start()
    return operator


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
