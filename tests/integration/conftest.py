"""Fixtures of the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from module_controller.simulator.base import SimulatedBase
from module_controller.simulator.config import BaseConfig, IdentityStyle
from tests.integration.http_tunnel_support import StartBase, unique_loopback_ip


@pytest.fixture
async def start_http_base() -> AsyncIterator[StartBase]:
    """Starts simulated bases that speak HTTP only; stops them at the end of the test."""
    started: list[SimulatedBase] = []

    async def start(heartbeat_port: int | None = None, ip: str | None = None) -> SimulatedBase:
        endpoint = None if heartbeat_port is None else f"http://127.0.0.1:{heartbeat_port}"
        config = BaseConfig(
            name="base",
            version="1.1.1",
            mqtt=None,
            http_api=True,
            http_heartbeat_endpoint=endpoint,
            http_heartbeat_period_s=0.2,
            ip=ip or unique_loopback_ip(),
            identity_style=IdentityStyle.IP,
        )
        base = SimulatedBase(config)
        await base.start()
        started.append(base)
        return base

    yield start
    for base in started:
        await base.stop()
