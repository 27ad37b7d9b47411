"""A keyed work queue: each key is processed by one worker at a time, repeats coalesce.

Level-triggered reconciliation needs exactly this: "node X may be out of date" is queued
once however often it is said, and a failed sync is retried with back-off.
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

    def add(self, key: str) -> None:
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

    async def stop(self) -> None:
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
                asyncio.get_running_loop().call_later(delay, self.add, key)
            else:
                self._failures.pop(key, None)
            finally:
                self._active.discard(key)
                if key in self._again:
                    self._again.discard(key)
                    self.add(key)
