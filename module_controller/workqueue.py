"""A keyed work queue: each key is processed by one worker at a time, repeats coalesce.

Level-triggered reconciliation needs exactly this: "node X may be out of date" is queued
once however often it is said, and a failed sync is retried with back-off. Ours, not
Kopf's: Kopf queues work per Kubernetes object, while ours is per base and per node and
must coalesce what many objects and messages say about one base.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class KeyedWorkQueue:
    def __init__(
        self,
        process: Callable[[str], Awaitable[None]],
        *,
        workers: int = 8,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        name: str = "work",
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self._process = process
        self._workers = workers
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._name = name
        self._on_error = on_error
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._pending: set[str] = set()
        self._active: set[str] = set()
        self._again: set[str] = set()
        self._failures: dict[str, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._retries: dict[str, asyncio.TimerHandle] = {}
        self._settle_waiters: dict[str, asyncio.Future[None]] = {}
        self._stopped = False

    def add(self, key: str) -> None:
        if self._stopped:
            return  # a late timer or caller after stop(): nobody would process it
        if key in self._active:
            self._again.add(key)  # it changed while being processed: process it once more
            return
        if key in self._pending:
            return
        self._pending.add(key)
        self._queue.put_nowait(key)

    def add_all(self, keys: list[str]) -> None:
        for key in keys:
            self.add(key)

    def start(self) -> None:
        for number in range(self._workers):
            self._tasks.append(
                asyncio.create_task(self._work(), name=f"{self._name}-worker-{number}")
            )

    def __len__(self) -> int:
        """Keys waiting or being processed."""
        return len(self._pending | self._active)

    async def settled(self, key: str) -> None:
        """Returns once no worker is processing `key`: what one started has finished."""
        while key in self._active:
            waiter = self._settle_waiters.get(key)
            if waiter is None:
                waiter = asyncio.get_running_loop().create_future()
                self._settle_waiters[key] = waiter
            await asyncio.shield(waiter)  # a waiter cancelled leaves it for the others

    async def stop(self) -> None:
        self._stopped = True
        for handle in self._retries.values():
            handle.cancel()  # a retry timer must not outlive the queue
        self._retries.clear()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._pending.discard(key)
            self._active.add(key)
            try:
                await self._process(key)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if self._on_error is not None:
                    self._on_error(error)
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                delay = min(self._retry_initial * 2 ** (failures - 1), self._retry_max)
                log.warning(
                    "%s of %s failed (attempt %d), retrying in %.1fs: %s",
                    self._name,
                    key,
                    failures,
                    delay,
                    error,
                )
                self._retry_later(key, delay)
            else:
                self._failures.pop(key, None)
                retry = self._retries.pop(key, None)
                if retry is not None:
                    retry.cancel()  # done meanwhile: the retry has nothing left to do
            finally:
                self._active.discard(key)
                waiter = self._settle_waiters.pop(key, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
                if key in self._again:
                    self._again.discard(key)
                    self.add(key)

    def _retry_later(self, key: str, delay: float) -> None:
        """One retry timer per key: a later failure replaces the earlier timer."""
        previous = self._retries.pop(key, None)
        if previous is not None:
            previous.cancel()
        self._retries[key] = asyncio.get_running_loop().call_later(delay, self._retry, key)

    def _retry(self, key: str) -> None:
        self._retries.pop(key, None)
        self.add(key)
