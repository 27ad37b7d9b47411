"""Kubernetes Events about module pods and virtual nodes, posted without slowing callers.

`EventRecorder.record(...)` only puts the event in a bounded queue and returns; one
background task posts core/v1 Events, a few at a time (what `kubectl describe` and
`kubectl get events` show). When the queue is full the event is dropped and counted: an
operator busy with a thousand bases must not wait on, or run out of memory for, its own
commentary.

Repeats are aggregated as kubelets do: the same object, type, reason and message within
`aggregate_seconds` patches the existing Event's `count` and `lastTimestamp` instead of
creating another one, and identical events already waiting in the queue are merged into
one request. API errors are logged (rate-limited) and never raised to callers.

Call `record` from the event loop's thread (the operator is asyncio throughout).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller.kube import call_for_json
from module_controller.lograte import RateLimitedLog
from module_controller.observability.metrics import Metrics

log = logging.getLogger(__name__)

EventType = Literal["Normal", "Warning"]

COMPONENT = "module-controller"
DEFAULT_QUEUE_SIZE = 1000
DEFAULT_AGGREGATE_SECONDS = 300.0
# How many distinct (object, reason, message) Events are remembered for aggregation.
AGGREGATION_MEMORY = 4096
# A base's message may carry a whole Java stack trace; Events are for people to read.
MAX_MESSAGE_LENGTH = 1024
# Event names are "<object name>.<hex nanoseconds>", a DNS subdomain of at most 253.
_NAME_SUFFIX_LENGTH = 17
_MAX_NAME_LENGTH = 253
REQUEST_TIMEOUT_SECONDS = 10.0
# Requests in flight: one at a time, a release on 1,000 bases queued more Events (one per
# pod installed) than a slow API server took, and the queue dropped thousands.
POSTS_IN_FLIGHT = 8
# Events about cluster-scoped objects (nodes) live in this namespace, as kubelet's do.
CLUSTER_SCOPED_EVENT_NAMESPACE = "default"


@dataclass(frozen=True)
class ObjectRef:
    """The object an Event is about (its `involvedObject`)."""

    kind: str
    name: str
    namespace: str | None
    uid: str
    api_version: str = "v1"

    @classmethod
    def from_manifest(cls, body: Mapping[str, Any]) -> ObjectRef:
        """The reference to an object given as a dict (a Kopf body, a JSON manifest)."""
        metadata = body["metadata"]
        return cls(
            kind=body["kind"],
            name=metadata["name"],
            namespace=metadata.get("namespace") or None,
            uid=metadata.get("uid", ""),
            api_version=body.get("apiVersion", "v1"),
        )

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind.lower()} {where}{self.name}"


@dataclass(frozen=True)
class _Key:
    involved: ObjectRef
    type: EventType
    reason: str
    message: str


@dataclass
class _Posted:
    """An Event the API server holds, as far as aggregation needs to know."""

    name: str
    namespace: str
    count: int
    first_timestamp: str
    posted_at: float  # monotonic


def _timestamp(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def event_namespace(involved: ObjectRef) -> str:
    return involved.namespace or CLUSTER_SCOPED_EVENT_NAMESPACE


def event_name(involved: ObjectRef, nanoseconds: int) -> str:
    prefix = involved.name[: _MAX_NAME_LENGTH - _NAME_SUFFIX_LENGTH].rstrip(".-")
    return f"{prefix}.{nanoseconds:x}"


def truncate_message(message: str) -> str:
    if len(message) <= MAX_MESSAGE_LENGTH:
        return message
    return message[: MAX_MESSAGE_LENGTH - 3] + "..."


def event_manifest(
    key: _Key, *, name: str, count: int, first: str, last: str, instance: str
) -> dict[str, Any]:
    """The core/v1 Event the API server stores for `key`."""
    involved = key.involved
    reference: dict[str, Any] = {
        "apiVersion": involved.api_version,
        "kind": involved.kind,
        "name": involved.name,
    }
    if involved.namespace:
        reference["namespace"] = involved.namespace
    if involved.uid:
        reference["uid"] = involved.uid
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": event_namespace(involved)},
        "involvedObject": reference,
        "type": key.type,
        "reason": key.reason,
        "message": key.message,
        "source": {"component": COMPONENT, "host": instance},
        "reportingComponent": COMPONENT,
        "reportingInstance": instance,
        "count": count,
        "firstTimestamp": first,
        "lastTimestamp": last,
    }


class EventRecorder:
    """Posts Kubernetes Events in the background; see the module docstring."""

    def __init__(
        self,
        api: client.ApiClient,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        aggregate_seconds: float = DEFAULT_AGGREGATE_SECONDS,
        instance: str | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime.datetime] = _utcnow,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self._api = api
        self._core = client.CoreV1Api(api)
        self._queue: asyncio.Queue[_Key] = asyncio.Queue(maxsize=queue_size)
        self._aggregate_seconds = aggregate_seconds
        # reportingInstance may hold at most 128 characters.
        self._instance = (instance or socket.gethostname())[:128]
        self._metrics = metrics
        self._clock = clock
        self._now = now
        self._posted: OrderedDict[_Key, _Posted] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(POSTS_IN_FLIGHT)
        self._closed = False
        self._warn = RateLimitedLog(log, interval=30.0)
        self.dropped = 0  # events thrown away: queue full, or recorded after stop()
        self.posted = 0  # API calls that succeeded (creates and patches)
        self.failed = 0  # API calls that failed

    # --- what callers use ---------------------------------------------------------------

    def start(self) -> None:
        """Start the background poster (idempotent); call it from the event loop."""
        if self._task is None:
            self._task = asyncio.create_task(self._post_forever(), name="k8s-event-recorder")

    def record(self, involved: ObjectRef, type: EventType, reason: str, message: str) -> None:
        """Queue an Event about `involved`; never blocks and never raises for the API."""
        if self._closed:
            self.dropped += 1
            log.debug("Dropped event %s on %s: the recorder is stopped.", reason, involved)
            return
        key = _Key(involved, type, reason, truncate_message(message))
        try:
            self._queue.put_nowait(key)
        except asyncio.QueueFull:
            self.dropped += 1
            self._warn.warning(
                "events-dropped",
                "Dropped event %s on %s: %d events are already waiting to be posted "
                "(%d dropped so far).",
                reason,
                involved,
                self._queue.maxsize,
                self.dropped,
            )

    async def stop(self, flush_timeout: float = 5.0) -> None:
        """Post what is queued (for at most `flush_timeout` seconds), then stop."""
        self._closed = True
        if self._task is None:
            return
        if not self._task.done():
            try:
                await asyncio.wait_for(self._queue.join(), flush_timeout)
            except TimeoutError:
                log.warning(
                    "Stopped posting events with %d still queued after %.0fs.",
                    self._queue.qsize(),
                    flush_timeout,
                )
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    # --- the background poster ------------------------------------------------------------

    async def _post_forever(self) -> None:
        while True:
            first = await self._queue.get()
            # Whatever else is already waiting goes in the same round; repeats merge.
            batch: OrderedDict[_Key, int] = OrderedDict({first: 1})
            while not self._queue.empty():
                key = self._queue.get_nowait()
                batch[key] = batch.get(key, 0) + 1
            taken = sum(batch.values())
            try:
                # Keys in a batch are distinct (repeats merged): they go out together.
                await asyncio.gather(
                    *(self._post_in_turn(key, repeats) for key, repeats in batch.items())
                )
            finally:
                for _ in range(taken):
                    self._queue.task_done()

    async def _post_in_turn(self, key: _Key, repeats: int) -> None:
        async with self._slots:
            await self._post(key, repeats)

    async def _post(self, key: _Key, repeats: int) -> None:
        try:
            previous = self._recent(key)
            if previous is not None and await self._patch(key, previous, repeats):
                return
            await self._create(key, repeats)
        except asyncio.CancelledError:
            raise
        except ApiException as error:
            self._failed(key, error.status, f"{error.status} {error.reason}")
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            self._failed(key, None, repr(error))
        except Exception as error:  # the poster must outlive any one bad event
            log.exception("Posting event %s on %s failed unexpectedly.", key.reason, key.involved)
            self._failed(key, None, repr(error), logged=True)

    def _recent(self, key: _Key) -> _Posted | None:
        previous = self._posted.get(key)
        if previous is None:
            return None
        if self._clock() - previous.posted_at > self._aggregate_seconds:
            del self._posted[key]
            return None
        return previous

    async def _patch(self, key: _Key, previous: _Posted, repeats: int) -> bool:
        """Count repeats on the existing Event; False when it is gone (expired, deleted)."""
        count = previous.count + repeats
        body = {"count": count, "lastTimestamp": _timestamp(self._now())}
        try:
            await call_for_json(
                self._api,
                self._core.patch_namespaced_event,
                previous.name,
                previous.namespace,
                body,
                _request_timeout=REQUEST_TIMEOUT_SECONDS,
            )
        except ApiException as error:
            if error.status == 404:
                del self._posted[key]
                return False
            raise
        previous.count = count
        previous.posted_at = self._clock()
        self._posted.move_to_end(key)
        self.posted += 1
        return True

    async def _create(self, key: _Key, count: int) -> None:
        moment = self._now()
        stamp = _timestamp(moment)
        name = event_name(key.involved, time.time_ns())
        namespace = event_namespace(key.involved)
        body: Any = event_manifest(  # the client sends a dict as it is
            key, name=name, count=count, first=stamp, last=stamp, instance=self._instance
        )
        await call_for_json(
            self._api,
            self._core.create_namespaced_event,
            namespace,
            body,
            _request_timeout=REQUEST_TIMEOUT_SECONDS,
        )
        self.posted += 1
        self._posted[key] = _Posted(name, namespace, count, stamp, self._clock())
        self._posted.move_to_end(key)
        while len(self._posted) > AGGREGATION_MEMORY:
            self._posted.popitem(last=False)

    def _failed(self, key: _Key, status: int | None, detail: str, logged: bool = False) -> None:
        self.failed += 1
        if self._metrics is not None:
            self._metrics.record_api_error("events", status)
        if not logged:
            self._warn.warning(
                f"events-failed-{status}",
                "Could not post event %s on %s: %s.",
                key.reason,
                key.involved,
                detail,
            )
