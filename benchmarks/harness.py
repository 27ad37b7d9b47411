"""What the benchmarks share: the operator as a child process, a fleet of MQTT bases, waits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client

from module_controller.kube_watch import ListWatch
from module_controller.simulator.config import BaseConfig, MqttSettings
from module_controller.simulator.fleet import Fleet
from module_controller.testbed import process, testbed
from module_controller.testbed.operator_process import (
    COMMAND,
    OperatorProcess,
    operator_environment,
)

# The benchmarks' operator serves up to 1,000 bases: more time to shut down than the demo's.
OPERATOR_STOP_GRACE_SECONDS = 30.0


class ProfiledOperator(OperatorProcess):
    """The operator under cProfile, which writes `output` when the operator exits: on a
    SIGTERM (`stop`), not on a kill -9."""

    def __init__(self, environment: Mapping[str, str], log: Path, output: Path) -> None:
        super().__init__(environment, log)
        self.output = output

    def start(self) -> None:
        interpreter, _, *module_and_arguments = COMMAND
        argv = (interpreter, "-m", "cProfile", "-o", str(self.output), "-m", *module_and_arguments)
        self.child, self.record = process.start(
            "operator", argv, self.log, self.environment, own_session=self.own_session
        )


def start_operator(
    state: testbed.TestbedState,
    env: str,
    log: Path,
    *,
    profile: Path | None = None,
    **settings: str,
) -> OperatorProcess:
    """`module-controller run` against the testbed's cluster and broker, logging to `log`;
    under cProfile when `profile` names the file for its statistics.

    Stop it with `stop(OPERATOR_STOP_GRACE_SECONDS)`."""
    assert state.kubeconfig is not None and state.broker is not None
    environment = operator_environment(state.kubeconfig, env, state.broker, settings)
    operator = (
        OperatorProcess(environment, log)
        if profile is None
        else ProfiledOperator(environment, log, profile)
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


async def list_and_watch(
    api: client.ApiClient,
    listing: Callable[..., Awaitable[Any]],
    see: Callable[[str, Mapping[str, Any]], None],
    *args: Any,
    label_selector: str = "",
    what: str = "objects",
    listed: asyncio.Event | None = None,
) -> None:
    """Feed `see(event type, object as JSON)` with what `listing` lists ("MODIFIED"), then
    with its watch, for ever ("DELETED" for what went; while the watch was down, with only
    its metadata). The operator's own plain JSON watch: model objects cost the benchmark
    enough CPU, in the process that runs the simulated bases too, to hold their heartbeats
    back for seconds at 1,000 bases (a list of 6,000 pods blocked it for tens of seconds).
    `listed` is set once the first list was seen."""

    async def seen(body: Mapping[str, Any]) -> None:
        see("MODIFIED", body)

    async def gone(body: Mapping[str, Any]) -> None:
        see("DELETED", body)

    watch = ListWatch(
        api, listing, *args, label_selector=label_selector, seen=seen, gone=gone, what=what
    )
    await watch.list_first(seen)
    if listed is not None:
        listed.set()
    await watch.run()
