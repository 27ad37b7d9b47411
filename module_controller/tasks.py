"""Stopping tasks that may not want to stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
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
