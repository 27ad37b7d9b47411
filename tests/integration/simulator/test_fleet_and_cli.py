"""Many bases in one process, and the `module-controller simulate` command on the broker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

from module_controller.simulator.config import BaseConfig, IdentityStyle
from module_controller.simulator.fleet import Fleet
from tests.integration.simulator.conftest import (
    Broker,
    FakeController,
    mqtt_settings,
    random_loopback_ip,
)


async def test_fleet_bases_are_distinct_and_all_heartbeat(
    mqtt_broker: Broker, controller: FakeController
) -> None:
    template = BaseConfig(
        name="base",
        version="1.1.1",
        env=controller.env,
        mqtt=mqtt_settings(mqtt_broker),
        identity_style=IdentityStyle.IP,
    )
    fleet = Fleet(template, first_ip=random_loopback_ip())
    try:
        bases = await fleet.start(20)
        await fleet.wait_connected(timeout=20)
        ips = {base.config.ip for base in bases}
        assert len(ips) == 20 and all(ip.startswith("127.") for ip in ips)
        assert {base.identity for base in bases} == ips  # IP-style identity
        assert len({(base.config.ip, base.port) for base in bases}) == 20
        for base in bases:
            beat = await controller.expect(base.identity, "heart")
            assert beat.json["data"]["localIP"] == base.identity
    finally:
        await fleet.stop()


async def test_simulate_command_runs_the_seed_base(
    mqtt_broker: Broker, controller: FakeController
) -> None:
    environment = dict(
        os.environ,
        MQTT_BROKER=mqtt_broker.host,
        MQTT_PORT=str(mqtt_broker.port),
        MQTT_USERNAME=mqtt_broker.username,
        MQTT_PASSWORD=mqtt_broker.password,
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "module_controller.cli",
        "simulate",
        "--bases",
        "2",
        "--name",
        "base",
        "--version",
        "1.1.1",
        "--env",
        controller.env,
        "--first-ip",
        random_loopback_ip(),
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        identities: set[str] = set()

        async def two_bases_beating() -> None:
            while len(identities) < 2:
                await asyncio.sleep(0.05)
                for (identity, kind), messages in controller.messages.items():
                    if kind == "heart" and messages:
                        data = json.loads(messages[0].raw)["data"]
                        assert data["baseMetadata"]["name"] == "base"
                        assert data["baseMetadata"]["version"] == "1.1.1"
                        identities.add(identity)

        try:
            await asyncio.wait_for(two_bases_beating(), 20)
        except TimeoutError:
            raise AssertionError(f"heartbeats seen from {identities or 'no base'}") from None
        identity = sorted(identities)[0]
        await controller.send(identity, "health", {})
        await controller.expect(identity, "health")
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), 20)
    log = output.decode()
    assert process.returncode == 0, log
    assert "received health" in log, log
