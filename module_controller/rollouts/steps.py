"""Step math: what each step's size is for a Deployment of N replicas.

A step's `replicas` is cumulative: how many pods run the new version once the step is done,
a count or a share of N ("50%" of 5 is 3: shares round up, so a share above 0% is at least
one pod). Sizes never go down: a later step smaller than an earlier one keeps the earlier
size. The last step always brings every pod to the new version: a spec whose last step
stops short of N gets one more step of N, without a pause.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from module_controller.rollouts.model import Pause, Step


def resolve(replicas: int | str, total: int) -> int:
    """A step's size: a count (at most `total`) or a share of `total`, rounded up."""
    if isinstance(replicas, int):
        return max(0, min(replicas, total))
    percent = int(replicas.rstrip("%"))
    return min(total, math.ceil(total * percent / 100))


@dataclass(frozen=True)
class PlannedStep:
    index: int
    size: int
    pause: Pause | None
    # How the spec wrote it ("1", "50%"), or "100%" for the step added at the end.
    written: str


def plan_steps(steps: list[Step], total: int) -> list[PlannedStep]:
    planned: list[PlannedStep] = []
    size = 0
    for index, step in enumerate(steps):
        size = max(size, resolve(step.replicas, total))
        planned.append(PlannedStep(index, size, step.pause, str(step.replicas)))
    if size < total or not planned:
        planned.append(PlannedStep(len(planned), total, None, "100%"))
    elif planned[-1].pause is not None:
        # The last step is the hand-over to the Deployment: a pause on it would hold a
        # finished release; it is kept as a pause before the hand-over, then done.
        planned.append(PlannedStep(len(planned), total, None, "100%"))
    return planned


def step_of(canary_replicas: int, planned: list[PlannedStep]) -> int:
    """The step a canary of this size is at (for a status lost or from another spec): the
    first whose size is at least the canary's."""
    for step in planned:
        if step.size >= canary_replicas:
            return step.index
    return planned[-1].index


def max_surge(deployment: dict[str, Any], total: int) -> int:
    """The Deployment's maxSurge in pods (its default 25%, rounded up; 0 for Recreate)."""
    strategy = (deployment.get("spec") or {}).get("strategy") or {}
    if strategy.get("type", "RollingUpdate") != "RollingUpdate":
        return 0
    surge = (strategy.get("rollingUpdate") or {}).get("maxSurge", "25%")
    if isinstance(surge, str) and surge.endswith("%"):
        return math.ceil(total * int(surge.rstrip("%")) / 100)
    try:
        return int(surge)
    except (TypeError, ValueError):
        return 0


def step_label(index: int, planned: list[PlannedStep]) -> str:
    """ "2/3": the step being worked on, 1-based, of how many (all done: "3/3")."""
    return f"{min(index + 1, len(planned))}/{len(planned)}"
