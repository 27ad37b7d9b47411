"""A stop never hangs on a task that swallows its first cancellation; periodic work keeps
its period."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from module_controller.tasks import cancel_and_wait, run_every


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


async def test_periodic_work_keeps_its_period_however_long_each_run_takes() -> None:
    starts: list[float] = []
    fourth = asyncio.Event()

    async def slow_round() -> None:  # like 500 Lease renewals: most of the period
        starts.append(time.monotonic())
        if len(starts) == 4:
            fourth.set()
        await asyncio.sleep(0.15)

    task = asyncio.create_task(run_every(0.2, slow_round))
    try:
        await asyncio.wait_for(fourth.wait(), 5)
    finally:
        await cancel_and_wait([task])
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    # 0.35 s apart if it slept a period after each run
    assert all(gap < 0.28 for gap in gaps), f"runs drifted apart: {gaps}"


async def test_a_failing_run_is_logged_and_the_next_still_comes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs = 0
    third = asyncio.Event()

    async def failing() -> None:
        nonlocal runs
        runs += 1
        if runs == 3:
            third.set()
        raise RuntimeError("the API server said no")

    task = asyncio.create_task(run_every(0.05, failing))
    try:
        await asyncio.wait_for(third.wait(), 5)
    finally:
        await cancel_and_wait([task])
    assert "Periodic task failing failed" in caplog.text
