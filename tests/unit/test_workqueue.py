"""The keyed work queue: one worker per key, repeats coalesce, failures retry, and nothing
(no worker, no retry timer) outlives stop()."""

from __future__ import annotations

import asyncio

from module_controller.workqueue import KeyedWorkQueue
from tests.waiting import wait_for


async def test_repeats_of_a_busy_key_coalesce_into_one_more_pass() -> None:
    seen: list[str] = []
    release = asyncio.Event()

    async def process(key: str) -> None:
        seen.append(key)
        await release.wait()

    queue = KeyedWorkQueue(process, workers=2)
    queue.start()
    try:
        queue.add("a")
        await wait_for(lambda: asyncio.sleep(0, seen == ["a"]), timeout=2, what="a first pass")
        for _ in range(5):
            queue.add("a")  # changed while being processed: once more, not five times
        release.set()
        await wait_for(lambda: asyncio.sleep(0, len(seen) == 2), timeout=2, what="a second pass")
        await asyncio.sleep(0.05)
        assert seen == ["a", "a"]
    finally:
        await queue.stop()


async def test_a_failure_is_retried_and_the_retry_timer_dies_with_the_queue() -> None:
    attempts: list[str] = []

    async def failing(key: str) -> None:
        attempts.append(key)
        raise RuntimeError("the API server said no")

    queue = KeyedWorkQueue(failing, workers=1, retry_initial=0.05, retry_max=0.05)
    queue.start()
    queue.add("a")
    await wait_for(lambda: asyncio.sleep(0, len(attempts) >= 2), timeout=2, what="a retry")
    await queue.stop()
    assert queue._retries == {}, "a retry timer outlived stop()"
    tried = len(attempts)
    await asyncio.sleep(0.2)  # longer than the retry delay: a live timer would fire here
    assert len(attempts) == tried
    queue.add("a")  # a late caller after stop() is ignored, not queued for nobody
    assert len(queue) == 0


async def test_settled_returns_once_the_step_in_progress_has_finished() -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def process(key: str) -> None:
        started.set()
        await release.wait()

    queue = KeyedWorkQueue(process, workers=1)
    queue.start()
    try:
        await asyncio.wait_for(queue.settled("a"), 1)  # idle: at once
        queue.add("a")
        await asyncio.wait_for(started.wait(), 1)
        waiting = asyncio.create_task(queue.settled("a"))
        await asyncio.sleep(0.05)
        assert not waiting.done(), "a step is still running"
        release.set()
        await asyncio.wait_for(waiting, 1)
    finally:
        await queue.stop()
