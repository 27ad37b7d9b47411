"""A stop never hangs on a task that swallows its first cancellation."""

from __future__ import annotations

import asyncio
import time

from module_controller.tasks import cancel_and_wait


async def test_a_task_that_swallows_one_cancellation_is_cancelled_again() -> None:
    async def stubborn() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.Event().wait()  # like a client waiting for an ack that never comes

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    began = time.monotonic()
    left = await cancel_and_wait([task], patience=0.2)
    assert left == set() and task.cancelled()
    assert time.monotonic() - began < 1


async def test_a_task_that_will_not_stop_is_reported_not_waited_for() -> None:
    release = asyncio.Event()

    async def obstinate() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(obstinate())
    await asyncio.sleep(0)
    began = time.monotonic()
    left = await cancel_and_wait([task], patience=0.05, rounds=2)
    assert left == {task}
    assert time.monotonic() - began < 1
    release.set()
    await task
