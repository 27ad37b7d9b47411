"""The one error type raised when a wire message cannot be decoded."""

from __future__ import annotations


class ProtocolError(ValueError):
    """A payload is not valid JSON or does not have the shape the specification requires.

    Callers (tunnels, the simulator) catch this single type, log it and drop the message:
    a malformed message must never take down a connection or a base.
    """

    def __init__(self, what: str, reason: str, payload: bytes | str | None = None) -> None:
        self.what = what
        self.reason = reason
        self.excerpt = _excerpt(payload)
        detail = f"cannot decode {what}: {reason}"
        if self.excerpt:
            detail += f" (payload: {self.excerpt})"
        super().__init__(detail)


def _excerpt(payload: bytes | str | None, limit: int = 200) -> str:
    """A short, printable start of the payload, so a log line shows what arrived."""
    if payload is None:
        return ""
    text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
    return text if len(text) <= limit else text[:limit] + "..."
