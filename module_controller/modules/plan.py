"""What the planner decides for one base, and what it decides it from (plain data)."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from module_controller.k8s_events import EventType
from module_controller.modules.spec import ModuleSpec
from module_controller.modules.state import ModulePod
from module_controller.protocol import BizModel
from module_controller.settings import Settings

StatusWrite = tuple[ModulePod, dict[str, Any]]


@dataclass(frozen=True)
class PodEvent:
    pod: ModulePod
    type: EventType
    reason: str
    message: str


@dataclass
class Plan:
    installs: list[ModuleSpec] = field(default_factory=list)
    uninstalls: list[BizModel] = field(default_factory=list)
    # Writes that take pods out of Ready: carried out before any command or other write.
    going_down: list[StatusWrite] = field(default_factory=list)
    status_writes: list[StatusWrite] = field(default_factory=list)
    deletions: list[ModulePod] = field(default_factory=list)
    events: list[PodEvent] = field(default_factory=list)
    wake_at: float | None = None  # plan again then: a backoff or a grace period ends

    @property
    def writes(self) -> list[StatusWrite]:
        """Every status write, in the order they are made."""
        return self.going_down + self.status_writes

    @property
    def empty(self) -> bool:
        return not (
            self.installs
            or self.uninstalls
            or self.going_down
            or self.status_writes
            or self.deletions
            or self.events
        )

    def wake(self, at: float) -> None:
        self.wake_at = at if self.wake_at is None else min(self.wake_at, at)


@dataclass(frozen=True)
class PlanContext:
    settings: Settings
    base_ip: str
    base_ready: bool
    orphans_allowed: bool
    now: float  # monotonic seconds
    wall: datetime.datetime
    # Modules wanted by live pods the scheduler has not placed yet (anywhere).
    unscheduled_keys: frozenset[str] = frozenset()
