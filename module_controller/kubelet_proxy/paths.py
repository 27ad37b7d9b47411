"""What the API server asks a kubelet for, read into plain values: no I/O here.

For `kubectl logs` the API server calls the node's kubelet at
`GET https://<node address>:<daemon port>/containerLogs/<namespace>/<pod>/<container>` with
the pod log options as query parameters (`follow=true`, `tailLines=10`, ...; see
`LogLocation` in kube-apiserver's pod registry). The proxy answers that path only; the
kubelet's other paths are refused with a status and a sentence saying why.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass

LOGS_PATH = "containerLogs"
# Streams into a container: there is none to stream into, a module runs inside its base's JVM.
STREAMING_PATHS = frozenset({"exec", "attach", "portForward", "run"})
LOG_STREAMS = frozenset({"All", "Stdout", "Stderr"})
# Go's strconv.ParseBool, which the kubelet's parameter decoding uses.
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


class Refusal(Exception):
    """A request the proxy does not serve: the HTTP status and the sentence to answer with.

    The API server hands the sentence to kubectl for 400 and 5xx answers, but replaces it
    with "the server could not find the requested resource" for a 404, so a refusal the
    user must read is a 400 (as the kubelet's own "previous terminated container ... not
    found" is).
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class LogTarget:
    """The container whose log the API server asks for (a module pod's, for us)."""

    namespace: str
    pod: str
    container: str


def parse_path(method: str, path: str) -> LogTarget:
    """The container a kubelet request names, or a Refusal for anything but a log read."""
    parts = path.strip("/").split("/")
    if parts[0] == LOGS_PATH:
        if len(parts) != 4 or not all(parts[1:]):
            raise Refusal(
                404,
                f"{path} is not a container log: the kubelet log API is "
                "/containerLogs/<namespace>/<pod>/<container>",
            )
        if method != "GET":
            raise Refusal(405, f"{method} is not allowed on {path}: container logs are read")
        return LogTarget(parts[1], parts[2], parts[3])
    if parts[0] in STREAMING_PATHS:
        raise Refusal(
            501,
            f"the module controller does not implement the kubelet's /{parts[0]} for module "
            "pods: a module runs inside its base's JVM, there is no container of its own "
            "to exec into, attach to or forward ports from; use the base's own pod",
        )
    raise Refusal(
        404,
        f"the module controller's kubelet proxy serves only GET "
        f"/{LOGS_PATH}/<namespace>/<pod>/<container> (kubectl logs for module pods), "
        f"not {path}",
    )


@dataclass(frozen=True)
class LogQuery:
    """The pod log options of one request, as the API server's pods/log takes them."""

    follow: bool = False
    previous: bool = False
    timestamps: bool = False
    tail_lines: int | None = None
    since_seconds: int | None = None
    since_time: str | None = None  # RFC 3339, as sent
    limit_bytes: int | None = None
    stream: str | None = None  # All, Stdout or Stderr (only with PodLogsQuerySplitStreams)

    def api_params(self) -> list[tuple[str, str]]:
        """The query of `GET /api/v1/namespaces/<ns>/pods/<pod>/log`, same names and values."""
        params: list[tuple[str, str]] = []
        for name, flag in (
            ("follow", self.follow),
            ("previous", self.previous),
            ("timestamps", self.timestamps),
        ):
            if flag:
                params.append((name, "true"))
        for name, value in (
            ("tailLines", self.tail_lines),
            ("sinceSeconds", self.since_seconds),
            ("sinceTime", self.since_time),
            ("limitBytes", self.limit_bytes),
            ("stream", self.stream),
        ):
            if value is not None:
                params.append((name, str(value)))
        return params


def _flag(query: Mapping[str, str], name: str) -> bool:
    value = query.get(name)
    if value is None or value in _FALSE:
        return False
    if value in _TRUE:
        return True
    raise Refusal(400, f"{name}={value!r} is not a boolean (true or false)")


def _whole(query: Mapping[str, str], name: str, least: int) -> int | None:
    value = query.get(name)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise Refusal(400, f"{name}={value!r} is not a whole number") from None
    if number < least:
        raise Refusal(400, f"{name}={value!r} must be at least {least}")
    return number


def _since_time(query: Mapping[str, str]) -> str | None:
    value = query.get("sinceTime")
    if value is None:
        return None
    try:
        datetime.datetime.fromisoformat(value)
    except ValueError:
        raise Refusal(400, f"sinceTime={value!r} is not an RFC 3339 time") from None
    return value


def log_query(query: Mapping[str, str]) -> LogQuery:
    """The log options of a kubelet request, checked as the API server checks them."""
    since_seconds = _whole(query, "sinceSeconds", 1)
    since_time = _since_time(query)
    if since_seconds is not None and since_time is not None:
        raise Refusal(400, "at most one of sinceSeconds or sinceTime may be given")
    stream = query.get("stream")
    if stream is not None and stream not in LOG_STREAMS:
        raise Refusal(400, f"stream={stream!r} is not one of {', '.join(sorted(LOG_STREAMS))}")
    return LogQuery(
        follow=_flag(query, "follow"),
        previous=_flag(query, "previous"),
        timestamps=_flag(query, "timestamps"),
        tail_lines=_whole(query, "tailLines", 0),
        since_seconds=since_seconds,
        since_time=since_time,
        limit_bytes=_whole(query, "limitBytes", 1),
        stream=stream,
    )
