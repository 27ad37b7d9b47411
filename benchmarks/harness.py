"""What the benchmarks share: the operator as a child process, a fleet of MQTT bases, waits."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiomqtt
from kubernetes_asyncio import client

from module_controller.kube_watch import ListWatch
from module_controller.simulator.config import BaseConfig, MqttSettings
from module_controller.simulator.fleet import Fleet
from module_controller.testbed import process, testbed
from module_controller.testbed.mosquitto import BrokerInfo
from module_controller.testbed.operator_process import (
    COMMAND,
    OperatorProcess,
    operator_environment,
)
from module_controller.tunnels.mqtt_reading import read_in_batches

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


def broker_listener(broker: BrokerInfo, identifier: str) -> aiomqtt.Client:
    """A client of the testbed's broker, for a benchmark to read what bases send. It reads
    its socket as the operator does (tunnels/mqtt_reading.py): stock aiomqtt reads one
    message per turn of the event loop, and this process, busy with a thousand simulated
    bases, lost 1,435 of 10,000 install replies that way."""
    listener = aiomqtt.Client(
        broker.host,
        broker.port,
        username=broker.username,
        password=broker.password,
        identifier=identifier,
    )
    read_in_batches(listener._client)
    return listener


class InstallReplies:
    """Each base's answer to each module's first successful install, read off the broker:
    when the base stamped it (publishTimestamp) and when it reached a subscriber here.

    The two differ by what holds the answer in the base's socket (about 40 ms while
    commands went at QoS 1: see COMMAND_QOS in tunnels/mqtt.py). Where "install reply ->
    pod Ready" starts, the operator's share, is the arrival.
    """

    def __init__(self, broker: BrokerInfo, env: str) -> None:
        self.broker = broker
        self.env = env
        self.stamped: dict[tuple[str, str], float] = {}  # (base identity, bizName) -> time
        self.arrived: dict[tuple[str, str], float] = {}
        self.subscribed = asyncio.Event()

    async def run(self) -> None:
        async with broker_listener(
            self.broker, f"benchmark-install-replies-{self.env}"
        ) as listener:
            await listener.subscribe(f"koupleless_{self.env}/+/base/bizOperation", qos=0)
            self.subscribed.set()
            async for message in listener.messages:
                if isinstance(message.payload, bytes):
                    identity = str(message.topic).split("/")[1]
                    self._see(identity, json.loads(message.payload), time.time())

    def _see(self, identity: str, envelope: dict[str, Any], now: float) -> None:
        data = envelope.get("data") or {}
        if data.get("command") != "installBiz":
            return
        if (data.get("response") or {}).get("code") != "SUCCESS":
            return
        key = (identity, str(data.get("bizName")))
        self.stamped.setdefault(key, envelope["publishTimestamp"] / 1000)
        self.arrived.setdefault(key, now)
