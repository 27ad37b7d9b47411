"""A Mosquitto of one test's own, which the test may freeze (SIGSTOP) without harming others."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import aiomqtt

from module_controller.settings import Settings
from module_controller.testbed import testbed
from module_controller.testbed.mosquitto import BrokerInfo


class PrivateBroker:
    def __init__(self, state_dir: Path, *, with_tls: bool = False) -> None:
        self.state_dir = state_dir
        state = testbed.up(state_dir, with_cluster=False, with_tls=with_tls)
        assert state.broker is not None
        self.info: BrokerInfo = state.broker
        (self.pid,) = [record.pid for record in state.processes if record.name == "mosquitto"]
        self.frozen = False

    def operator_settings(self, **overrides: object) -> Settings:
        """The operator's settings for this broker, with `overrides`."""
        info = self.info
        values: dict[str, object] = {
            "mqtt_broker": info.host,
            "mqtt_port": info.port,
            "mqtt_username": info.username,
            "mqtt_password": info.password,
        }
        return Settings(**(values | overrides))  # type: ignore[arg-type]

    def client(self) -> aiomqtt.Client:
        """A client of this broker, as a base connects (use it with `async with`)."""
        info = self.info
        return aiomqtt.Client(info.host, info.port, username=info.username, password=info.password)

    def freeze(self) -> None:
        """As a hung broker: every TCP connection stays open and nothing is answered."""
        os.kill(self.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        if self.frozen:
            os.kill(self.pid, signal.SIGCONT)
            self.frozen = False

    def stop(self) -> None:
        self.thaw()
        testbed.down(self.state_dir)
