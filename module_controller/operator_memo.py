"""What the operator keeps for its whole life, in Kopf's memo: typed, not string keys.

`module-controller run` hands Kopf an `OperatorMemo` (with a stop flag); `kopf run -m
module_controller.handlers` hands the handlers Kopf's own `kopf.Memo`, which then carries
an `OperatorMemo` as its one attribute `operator` (see `operator_memo`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubernetes_asyncio import client

    from module_controller.observability.api_probe import ApiProbe
    from module_controller.observability.server import HealthChecks, ObservabilityServer
    from module_controller.rollouts.controller import RolloutController
    from module_controller.runtime import Runtime


@dataclass
class OperatorMemo:
    # Set to stop the operator (a fatal failure); Kopf watches it. None under `kopf run`,
    # where a fatal failure fails /healthz and the liveness probe restarts the pod.
    stop_flag: asyncio.Event | None = None
    # Why start-up failed, for `module-controller run` to print before exiting 1.
    startup_failure: str | None = None
    health: HealthChecks | None = None
    http: ObservabilityServer | None = None
    api: client.ApiClient | None = None
    runtime: Runtime | None = None
    api_probe: ApiProbe | None = None
    # The ModuleRollout controller (handlers/rollouts.py), from start-up to clean-up.
    rollouts: RolloutController | None = None


def operator_memo(memo: Any) -> OperatorMemo:
    """Our memo, whichever way the operator was started."""
    if isinstance(memo, OperatorMemo):
        return memo
    # Kopf's kopf.Memo (a dict with attribute access), from `kopf run`: ours lives inside.
    ours = memo.get("operator")
    if not isinstance(ours, OperatorMemo):
        ours = OperatorMemo()
        memo["operator"] = ours
    return ours
