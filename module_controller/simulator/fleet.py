"""Many simulated bases in one process: the entry point of the CLI, tests and benchmarks."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator

from module_controller.simulator.addresses import DEFAULT_FIRST_IP, can_bind, loopback_ips
from module_controller.simulator.base import SimulatedBase
from module_controller.simulator.config import BaseConfig

START_CONCURRENCY = 50  # connect in waves, not all at once


class Fleet:
    """Starts bases from a template config, each on its own loopback IP."""

    def __init__(self, template: BaseConfig, first_ip: str = DEFAULT_FIRST_IP) -> None:
        self.template = template
        self._ips: Iterator[str] = loopback_ips(first_ip)
        self.bases: list[SimulatedBase] = []

    def _next_config(self) -> BaseConfig:
        ip = next(self._ips)
        if not can_bind(ip):
            raise OSError(f"cannot bind loopback address {ip} on this host")
        return dataclasses.replace(self.template, ip=ip)

    async def start(self, count: int) -> list[SimulatedBase]:
        """Start ``count`` more bases; returns them once all have started."""
        if self.template.identity and len(self.bases) + count > 1:
            # Same identity = same client id and topics: they would kick each other off.
            raise ValueError("a fixed identity can only be used by a single base")
        new = [SimulatedBase(self._next_config()) for _ in range(count)]
        self.bases.extend(new)
        limit = asyncio.Semaphore(START_CONCURRENCY)

        async def start_one(base: SimulatedBase) -> None:
            async with limit:
                await base.start()

        await asyncio.gather(*(start_one(base) for base in new))
        return new

    async def wait_connected(self, timeout: float = 60.0) -> None:
        await asyncio.gather(*(base.wait_connected(timeout) for base in self.bases))

    async def stop(self) -> None:
        await asyncio.gather(*(base.stop() for base in self.bases), return_exceptions=True)
        self.bases.clear()
