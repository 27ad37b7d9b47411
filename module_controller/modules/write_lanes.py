"""The status writes a base's plan ends with, carried out behind the base's worker.

A plan ends with writes that put pods in (Ready, or a first status), its Events and its
pod removals. They used to hold the base's worker until the API server answered: with
the API server slow (seconds per write at 1,000 bases), a pod bound to that base waited
that long for its install, and eight bases waiting on writes held every worker, so pods
bound anywhere waited too. Now each base has a lane: the tail of its plans, carried out in
order, one plan's part after the other's, while its worker goes on planning and sending.

What keeps the seed's order:

- a later plan sees the pods of a lane as they will be written (`as_written`), so it
  never writes the same status again, and it takes a pod written Ready in a lane out of
  Ready (a going-down write) when it must;
- a plan that takes pods out of Ready or uninstalls waits for its base's lane first
  (`landed`): a pod is never left Ready after its NotReady write, nor while its module
  is uninstalled.

A lane that fails has its base planned again after a back-off (`plan_again`), from what
the API server holds; the statuses it did not write are forgotten. Writes in flight over all
bases are bounded (`slots`): a burst of plans queues here, not at the API server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from module_controller.modules.state import ModulePod

log = logging.getLogger(__name__)

StatusWrite = tuple[ModulePod, dict[str, Any]]


class PlanVoid(Exception):
    """The base went, or this replica's hold of it, before a plan's step: the rest of
    the plan is dropped and the base planned afresh (by us, if it is ours again)."""


# Back-off of a base whose lanes keep failing (as the work queue retries a failed sync).
RETRY_INITIAL_SECONDS = 0.5
RETRY_MAX_SECONDS = 30.0


class WriteLanes:
    def __init__(self, plan_again: Callable[[str, float], None]) -> None:
        # Plans the base of a node again after so many seconds.
        self._plan_again = plan_again
        self._failures: dict[str, int] = {}  # node name -> lanes failed in a row
        self._tails: dict[str, asyncio.Task[None]] = {}  # node name -> its last lane
        self._running: set[asyncio.Task[None]] = set()
        self._writing: dict[str, dict[str, Any]] = {}  # pod uid -> status on its way
        self._removing: set[str] = set()  # pod uids whose removal is queued

    def as_written(self, pods: list[ModulePod]) -> list[ModulePod]:
        """`pods` as the lanes will leave them: written, or removed."""
        if not self._writing and not self._removing:
            return pods
        return [
            dataclasses.replace(pod, status=self._writing[pod.uid])
            if pod.uid in self._writing
            else pod
            for pod in pods
            if pod.uid not in self._removing
        ]

    def queue(
        self,
        node_name: str,
        writes: list[StatusWrite],
        removals: list[ModulePod],
        carry_out: Callable[[], Awaitable[None]],
    ) -> None:
        """Queue a plan's tail (`carry_out` does it: `writes`, then Events, then
        `removals`) behind the base's earlier ones."""
        for pod, status in writes:
            self._writing[pod.uid] = status
        self._removing.update(pod.uid for pod in removals)
        earlier = self._tails.get(node_name)
        lane = asyncio.create_task(
            self._carry_out(node_name, earlier, writes, removals, carry_out),
            name=f"status writes of {node_name}",
        )
        self._tails[node_name] = lane
        self._running.add(lane)
        lane.add_done_callback(lambda done: self._forget(node_name, done))

    async def landed(self, node_name: str) -> None:
        """Returns once the base's lanes queued so far are done (failed ones too)."""
        tail = self._tails.get(node_name)
        if tail is not None:
            await asyncio.wait([tail])

    async def stop(self) -> None:
        lanes = list(self._running)  # a base's earlier lanes too, not only its last
        for lane in lanes:
            lane.cancel()
        await asyncio.gather(*lanes, return_exceptions=True)

    async def _carry_out(
        self,
        node_name: str,
        earlier: asyncio.Task[None] | None,
        writes: list[StatusWrite],
        removals: list[ModulePod],
        carry_out: Callable[[], Awaitable[None]],
    ) -> None:
        try:
            if earlier is not None:
                await asyncio.wait([earlier])
            await carry_out()
        except PlanVoid:
            self._plan_again(node_name, 0.0)  # what was skipped, if the base is ours again
        except Exception as error:
            self._failed(node_name, error)
        else:
            self._failures.pop(node_name, None)
        finally:
            # Written (the pods hold the API server's answer now), failed or void: either
            # way the next plan starts from what the pods say.
            for pod, status in writes:
                if self._writing.get(pod.uid) is status:
                    del self._writing[pod.uid]
            self._removing.difference_update(pod.uid for pod in removals)

    def _failed(self, node_name: str, error: Exception) -> None:
        failures = self._failures.get(node_name, 0) + 1
        self._failures[node_name] = failures
        delay = min(RETRY_INITIAL_SECONDS * 2 ** (failures - 1), RETRY_MAX_SECONDS)
        log.warning(
            "Status writes on node %s failed (attempt %d), planning it again in %.1fs: %s",
            node_name,
            failures,
            delay,
            error,
        )
        self._plan_again(node_name, delay)

    def _forget(self, node_name: str, lane: asyncio.Task[None]) -> None:
        self._running.discard(lane)
        if self._tails.get(node_name) is lane:
            del self._tails[node_name]
