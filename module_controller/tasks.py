"""Starting short tasks and stopping tasks that may not want to stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

log = logging.getLogger(__name__)


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any]], *, patience: float = 2.0, rounds: int = 3
) -> set[asyncio.Task[Any]]:
    """Cancel `tasks` and wait for them, cancelling again those that linger.

    A task can swallow one cancellation while it cleans up and then wait on something that
    never comes (aiomqtt's client waits without a deadline for the broker to acknowledge a
    DISCONNECT). A stop must not hang on that: each round cancels what is left and waits
    `patience` seconds. Returns the tasks still running after the last round.
    """
    pending = {task for task in tasks if not task.done()}
    for _ in range(rounds):
        if not pending:
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=patience)
    for task in pending:
        log.warning("Task %s did not stop after %d cancellations.", task.get_name(), rounds)
    return pending


async def run_every(seconds: float, work: Callable[[], Awaitable[None]]) -> None:
    """Run `work` every `seconds`, for ever; a failure is logged and does not end the loop.

    At a fixed rate, not `seconds` after each run ends: a round of 500 node Lease renewals
    takes a second or two, and sleeping after it stretched the renewal period to 11.5 s.
    A run longer than the period is followed by the next at once, never by two together.
    """
    loop = asyncio.get_running_loop()
    due = loop.time()
    while True:
        due = max(due + seconds, loop.time())
        await asyncio.sleep(due - loop.time())
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception:
            name = getattr(work, "__name__", work)
            log.exception("Periodic task %s failed; it runs again in %.0fs.", name, seconds)


def raise_if_cancelling() -> None:
    """Raise CancelledError when the current task is being cancelled.

    A cancelled aiomqtt session can end in an MqttError instead of CancelledError: aiomqtt
    waits up to its timeout for the broker to acknowledge a DISCONNECT while the
    cancellation unwinds, and a timeout there raises MqttError. Taken for a lost
    connection, it would be reconnected and the task would never stop.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class BackgroundTasks:
    """Short-lived tasks of one owner: a failure is logged, not fatal; `stop` ends them all."""

    def __init__(self, owner: str) -> None:
        self._owner = owner
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        async def guarded() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: %s failed.", self._owner, name)

        task = asyncio.create_task(guarded(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def __len__(self) -> int:
        return len(self._tasks)

    async def stop(self) -> None:
        await cancel_and_wait(list(self._tasks))
        self._tasks.clear()
