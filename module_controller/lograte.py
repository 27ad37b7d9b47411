"""Logging that cannot be flooded: one line per kind of trouble per interval."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field


@dataclass
class _Window:
    last_logged: float = float("-inf")
    suppressed: int = 0


@dataclass
class RateLimitedLog:
    """Log a kind of event at most once per `interval` seconds, counting what was held back.

    A flood of malformed messages or fake identities must cost a few log lines, not a
    full disk.
    """

    logger: logging.Logger
    interval: float = 10.0
    _windows: dict[str, _Window] = field(default_factory=dict)

    def warning(self, kind: str, message: str, *args: object) -> bool:
        """Log `message` unless `kind` was logged within the interval; True if it was logged."""
        now = time.monotonic()
        window = self._windows.setdefault(kind, _Window())
        if now - window.last_logged < self.interval:
            window.suppressed += 1
            return False
        if window.suppressed:
            message += " (%d more like this since the last report)"
            args = (*args, window.suppressed)
        window.last_logged = now
        window.suppressed = 0
        self.logger.warning(message, *args)
        return True
