"""Waiting on conditions with a deadline, and saying what was seen when it runs out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def wait_for(
    condition: Callable[[], Awaitable[T | None]],
    *,
    timeout: float,
    what: str,
    diagnose: Callable[[], Awaitable[str]] | None = None,
    interval: float = 0.25,
) -> T:
    """Poll `condition` until it returns something truthy, and return that.

    When `timeout` seconds pass first, fail with `what` and the output of `diagnose`
    (the state the test saw), so a red test explains itself.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = await condition()
        except Exception as error:  # transient API errors must not end the wait
            last_error = error
            result = None
        if result:
            return result
        if time.monotonic() >= deadline:
            details = await diagnose() if diagnose else ""
            if last_error is not None:
                details += f"\nlast error while polling: {last_error!r}"
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{details}")
        await asyncio.sleep(interval)
