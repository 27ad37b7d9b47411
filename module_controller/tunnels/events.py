"""What a tunnel reports to the operator, already decoded and checked.

A tunnel turns wire messages into these events and nothing else: everything downstream
of it works on validated models, never on raw bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from module_controller.protocol import (
    BaseMetadata,
    BaseStatus,
    BatchInstallBizResponse,
    BizOperationResponse,
    HealthData,
    SimpleBizInfo,
)

TunnelKind = Literal["mqtt", "http"]


@dataclass(frozen=True)
class BaseHeartbeat:
    identity: str
    status: BaseStatus
    tunnel: TunnelKind = "mqtt"


@dataclass(frozen=True)
class BaseHealthReport:
    identity: str
    health: HealthData
    tunnel: TunnelKind = "mqtt"


@dataclass(frozen=True)
class BaselineQuery:
    identity: str
    metadata: BaseMetadata


@dataclass(frozen=True)
class BaseInventory:
    """The complete list of modules on a base (an answer to queryAllBiz)."""

    identity: str
    modules: tuple[SimpleBizInfo, ...]
    tunnel: TunnelKind = "mqtt"


@dataclass(frozen=True)
class BizOperationResult:
    identity: str
    result: BizOperationResponse
    tunnel: TunnelKind = "mqtt"


@dataclass(frozen=True)
class BatchInstallResult:
    identity: str
    result: BatchInstallBizResponse
    tunnel: TunnelKind = "mqtt"


@dataclass(frozen=True)
class BrokerConnected:
    """The tunnel (re)connected and re-subscribed: what bases say is visible again."""


@dataclass(frozen=True)
class BrokerDisconnected:
    """The tunnel lost the broker (or could not reach it): silence from bases says nothing."""

    reason: str
    was_connected: bool = True


@dataclass(frozen=True)
class ArkletCallFailed:
    """An Arklet HTTP call got no answer (refused, timed out, not HTTP 200 with JSON)."""

    identity: str
    command: str
    reason: str


TunnelEvent = (
    BaseHeartbeat
    | BaseHealthReport
    | BaselineQuery
    | BaseInventory
    | BizOperationResult
    | BatchInstallResult
    | BrokerConnected
    | BrokerDisconnected
    | ArkletCallFailed
)


class TunnelUnavailable(RuntimeError):
    """A command could not be sent now (no broker, no such tunnel); it is asked again later."""
