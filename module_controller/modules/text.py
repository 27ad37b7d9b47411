"""Bounded text for what we write into pods and Events.

Pod status and Event messages carry text that users and bases control (a BIZ_VERSION, a jar
URL, a base's stack trace). Unbounded, one 100 KB value made a pod 400 KB; so every such
text goes through here: an exception is shown by its first line, everything is cut at
MAX_MESSAGE characters.
"""

from __future__ import annotations

MAX_MESSAGE = 1000
MAX_VALUE = 64  # a value quoted inside a sentence


def bounded(text: str, limit: int = MAX_MESSAGE) -> str:
    """`text` cut to `limit` characters, saying it was cut."""
    if len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


def first_line(text: str | None) -> str:
    """The first non-blank line: an exception's class and message, without its stack."""
    for line in (text or "").splitlines():
        if line.strip():
            return bounded(line.strip())
    return ""


def shown(value: str, limit: int = MAX_VALUE) -> str:
    """A user's value quoted in a sentence, cut when long (its length is told instead)."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}… ({len(value)} characters)"
