"""Commands go back on the tunnel each base spoke first: MQTT or the Arklet HTTP API.

The module sync, the health poll and the baseline answers call one object with the MQTT
tunnel's surface; it picks the tunnel from the base's record in the registry (read only).
"""

from __future__ import annotations

from typing import Protocol

from module_controller.protocol import BizModel
from module_controller.protocol.arklet import ARKLET_DEFAULT_PORT
from module_controller.registry import BaseRegistry
from module_controller.tunnels.events import TunnelUnavailable


class BaseCommands(Protocol):
    async def query_health(self, identity: str) -> None: ...
    async def query_all_biz(self, identity: str) -> None: ...
    async def install_biz(self, identity: str, biz: BizModel) -> None: ...
    async def uninstall_biz(self, identity: str, biz: BizModel) -> None: ...


class MqttCommands(BaseCommands, Protocol):
    async def send_baseline(self, identity: str, modules: list[BizModel]) -> None: ...


class TunnelRouter:
    def __init__(
        self,
        registry: BaseRegistry,
        mqtt: MqttCommands | None,
        http: BaseCommands | None,
    ) -> None:
        self._registry = registry
        self._mqtt = mqtt
        self._http = http

    def _tunnel(self, identity: str) -> BaseCommands:
        record = self._registry.bases.get(identity)
        kind = record.tunnel if record is not None else "mqtt"
        tunnel = self._http if kind == "http" else self._mqtt
        if tunnel is None:
            raise TunnelUnavailable(
                f"base {identity} speaks {kind.upper()}, and that tunnel is not enabled"
            )
        return tunnel

    def address_of(self, identity: str) -> tuple[str, int] | None:
        """Where an HTTP base's Arklet listens: the IP and port of its last heartbeat."""
        record = self._registry.bases.get(identity)
        if record is None:
            return None
        return record.ip, record.status.port or ARKLET_DEFAULT_PORT

    async def query_health(self, identity: str) -> None:
        await self._tunnel(identity).query_health(identity)

    async def query_all_biz(self, identity: str) -> None:
        await self._tunnel(identity).query_all_biz(identity)

    async def install_biz(self, identity: str, biz: BizModel) -> None:
        await self._tunnel(identity).install_biz(identity, biz)

    async def uninstall_biz(self, identity: str, biz: BizModel) -> None:
        await self._tunnel(identity).uninstall_biz(identity, biz)

    async def send_baseline(self, identity: str, modules: list[BizModel]) -> None:
        """Baseline queries come only over MQTT (HTTP bases get theirs in the answer)."""
        if self._mqtt is None:
            raise TunnelUnavailable("no MQTT tunnel to send a baseline on")
        await self._mqtt.send_baseline(identity, modules)
