"""Log set-up: sentences for people, or one JSON object per line for log collectors.

Text:   2026-05-04 10:00:00,123 INFO module_controller.vnodes: Base 10.0.0.5 came online.
JSON:   {"time": "2026-05-04T10:00:00.123+00:00", "level": "INFO", "logger": "...",
         "message": "...", "base": "10.0.0.5"}

Extras given with `log.info("...", extra={"base": ...})` become JSON fields. Kopf attaches
the object it is handling as the extra `k8s_ref` (kind, namespace, name, uid): JSON lines
carry it as a field, text lines start with `[namespace/name]`, so a line about a pod says
which pod without every message repeating it.

One record is always one line, whatever the data in it: a base may name itself "a\nb", and
that must not forge a second log line. Text lines escape every control character (a newline
becomes the two characters `\n`), tracebacks included, so `sed 's/\\n/\n/g'` unfolds one;
JSON escapes them by itself, and the few line separators it leaves raw are escaped too.

Kopf installs the handler (`kopf.configure`, as `kopf run` does); the formatters are ours.
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any, Literal, TextIO

import kopf

LogFormat = Literal["text", "json"]  # the LOG_FORMAT setting's values

# `k8s_object` is "[namespace/name] " for Kopf's lines about an object, else empty.
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(k8s_object)s%(message)s"

# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
) | {"message", "asctime", "taskName"}

# Kopf's extras for Kopf itself (whether to post the line as an Event, and the whole
# operator settings object), not facts about what happened.
_KOPF_CONTROL_EXTRAS = frozenset({"k8s_skip", "settings"})


def _escape_table() -> dict[int, str]:
    table = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))}
    table |= {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}
    # Unicode line and paragraph separators: Python's splitlines and some viewers break there.
    table |= {0x2028: "\\u2028", 0x2029: "\\u2029"}
    return table


_ESCAPES = _escape_table()
# JSON escapes below 0x20 by itself; it leaves DEL, the C1 controls (NEL is a line break)
# and the Unicode line separators raw.
_JSON_ESCAPES = {code: f"\\u{code:04x}" for code in (*range(0x7F, 0xA0), 0x2028, 0x2029)}


def one_line(text: str) -> str:
    """`text` with every control character and line separator escaped: one line for sure."""
    return text.translate(_ESCAPES)


def _object_name(record: logging.LogRecord) -> str | None:
    """`namespace/name` (or `name`) of the Kubernetes object Kopf says the line is about."""
    ref = getattr(record, "k8s_ref", None)
    if not isinstance(ref, dict) or not ref.get("name"):
        return None
    namespace = ref.get("namespace")
    return f"{namespace}/{ref['name']}" if namespace else str(ref["name"])


class TextFormatter(logging.Formatter):
    """The standard sentence format, prefixed with `[namespace/name]` for Kopf's lines."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)  # the format string also tells it to fill asctime

    def format(self, record: logging.LogRecord) -> str:
        # Escaped last, after the traceback is appended, so nothing can add a line break.
        return one_line(super().format(record))

    def formatMessage(self, record: logging.LogRecord) -> str:
        # Formatter.format has already filled in record.message and record.asctime.
        name = _object_name(record)
        return TEXT_FORMAT % {**vars(record), "k8s_object": f"[{name}] " if name else ""}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key in _STANDARD_ATTRIBUTES or key in _KOPF_CONTROL_EXTRAS or key in entry:
                continue
            entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: an extra that JSON cannot encode (a datetime, an enum) is written as
        # its text rather than losing the whole line.
        return json.dumps(entry, default=str, ensure_ascii=False).translate(_JSON_ESCAPES)


def configure_logging(
    level: int | str = logging.INFO,
    log_format: LogFormat = "text",
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send every logger's records to `stream` (stderr by default) in the chosen format.

    `kopf.configure` installs the root handler (replacing the one it installed before, so
    calling this again switches format instead of printing each line twice) and keeps
    asyncio's own logger quiet below DEBUG. Returns the handler.
    """
    numeric = level if isinstance(level, int) else logging.getLevelNamesMapping()[level]
    kopf.configure(
        debug=numeric <= logging.DEBUG, log_format=kopf.LogFormat.PLAIN, log_prefix=False
    )
    root = logging.getLogger()
    handler = root.handlers[-1]  # kopf.configure appends its handler last
    assert isinstance(handler, logging.StreamHandler)
    if stream is not None:
        handler.setStream(stream)
    # Kopf's formatters neither escape line breaks (text) nor use our documented JSON field
    # names (it writes `timestamp`, `severity`, `object`), so ours stay.
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    # Kopf knows only DEBUG, INFO and WARNING (quiet); LOG_LEVEL may also say ERROR.
    root.setLevel(level)
    return handler
