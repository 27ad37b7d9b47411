"""The operator's one inbox: every event, from the tunnel and from the cluster, in order.

The MQTT tunnel, the Kopf watch handlers and the liveness clock put events here; the
dispatcher takes them out one at a time. The queue is bounded: when it is full, whoever
puts waits, and a metric and a log line say so. No event is dropped here: a base's install
answer matters as much as a heartbeat. The MQTT reader waiting means the tunnel stops
acknowledging, so the broker holds the answers bases send (QoS 1); heartbeats (QoS 0) wait
in the MQTT client's bounded queue (see tunnels/mqtt_incoming.py).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from module_controller.lograte import RateLimitedLog
from module_controller.observability.metrics import Metrics
from module_controller.tunnels.events import TunnelEvent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModulePodChanged:
    """A module pod was listed, added, changed (type None, ADDED, MODIFIED) or DELETED."""

    type: str | None
    body: dict[str, Any]


@dataclass(frozen=True)
class NodeDeleted:
    """Someone deleted one of our virtual nodes."""

    name: str


@dataclass(frozen=True)
class OwnershipChanged:
    """These nodes' Leases changed for this replica (now held, or gone): resync them, and
    adopt the bases now held from their inventory."""

    node_names: tuple[str, ...]


@dataclass(frozen=True)
class Tick:
    """A second went by: judge liveness and the broker. The broker facts come with it.

    `broker_silence`: seconds since a message last came through the broker (None while
    disconnected); `probe_returned`: whether our own probe came back on this connection;
    `intake_lag`: how late our probe is now, so how late the bases' messages reach us;
    `at`: when it was made (the registry's clock), as of which liveness is judged: the
    heartbeats read before it are ahead of it in the inbox, those read after are not.
    """

    broker_silence: float | None
    probe_returned: bool
    at: float
    intake_lag: float | None = None


OperatorEvent = TunnelEvent | ModulePodChanged | NodeDeleted | OwnershipChanged | Tick


class Inbox:
    """A bounded FIFO of OperatorEvents: put waits when full, never drops."""

    def __init__(self, size: int, metrics: Metrics) -> None:
        self._queue: asyncio.Queue[OperatorEvent] = asyncio.Queue(maxsize=size)
        self._metrics = metrics
        self._log = RateLimitedLog(log)

    async def put(self, event: OperatorEvent) -> None:
        if self._queue.full():
            self._metrics.record_event_queue_full()
            self._log.warning(
                "full",
                "The event queue is full (%d events): %s waits for the dispatcher. The "
                "operator is behind; EVENT_QUEUE_SIZE sets the bound.",
                self._queue.maxsize,
                type(event).__name__,
            )
        await self._queue.put(event)

    async def get(self) -> OperatorEvent:
        return await self._queue.get()

    def get_nowait(self) -> OperatorEvent:
        return self._queue.get_nowait()

    def __len__(self) -> int:
        return self._queue.qsize()
