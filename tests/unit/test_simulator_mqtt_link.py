"""A simulated base's MQTT link reads its TLS files once, when it is made."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from module_controller.simulator.base import SimulatedBase
from module_controller.simulator.config import BaseConfig, MqttSettings


async def test_a_ca_file_that_is_no_certificate_fails_the_start_before_anything_listens(
    tmp_path: Path,
) -> None:
    bad_ca = tmp_path / "ca.crt"
    bad_ca.write_text("not a certificate\n")
    base = SimulatedBase(
        BaseConfig(ip="127.0.0.1", mqtt=MqttSettings(host="127.0.0.1", ca_path=str(bad_ca)))
    )
    with pytest.raises(ssl.SSLError):
        await base.start()
    assert not base.running
    assert base.port == 0, "the Arklet HTTP API was not started"
    await base.stop()  # nothing to stop, and no error
