"""ListWatch against a stand-in API server that misbehaves: watches that stall, end at once,
break mid-line or answer 410; callbacks that fail; cancellation at each wait. What must hold:
the loop goes on (listing again), nothing is lost or reported twice, nothing is leaked."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import pytest
from aiohttp import web
from kubernetes_asyncio import client

from module_controller.kube_watch import ListWatch
from tests.local_server import serving

PATH = "/api/v1/pods"
LOGGER = "module_controller.kube_watch"

Handler = Callable[["FakeApi", web.Request], Awaitable[web.StreamResponse]]
Answer = list[dict[str, Any]] | int | Handler


def pod(name: str, version: int, uid: str = "", **labels: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": uid or f"uid-{name}",
            "labels": labels or {"app": name},
            "resourceVersion": str(version),
        },
        "spec": {"nodeName": "virtual-node-1"},
    }


async def hold(fake: FakeApi, request: web.Request) -> web.StreamResponse:
    """A watch with nothing to say: open until the test ends, as a quiet server's is."""
    response = web.StreamResponse()
    await response.prepare(request)
    await fake.closing.wait()
    return response


def raw(data: bytes, *, abort: bool = False) -> Handler:
    """A watch that writes `data` as it is, then ends it (or drops the connection)."""
    return slow(data, 0.0, abort=abort)


def slow(first: bytes, seconds: float, last: bytes = b"", *, abort: bool = False) -> Handler:
    """A watch that writes `first`, says nothing for `seconds`, writes `last`, then ends
    it (or drops the connection)."""

    async def answer(fake: FakeApi, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(first)
        if seconds:
            await asyncio.sleep(seconds)
        if last:
            await response.write(last)
        if abort:
            assert request.transport is not None
            request.transport.close()
            await fake.closing.wait()
        return response

    return answer


def status(code: int, message: str) -> Handler:
    async def answer(fake: FakeApi, request: web.Request) -> web.StreamResponse:
        body = {"kind": "Status", "code": code, "message": message}
        return web.json_response(body, status=code)

    return answer


def expired() -> dict[str, Any]:
    return {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}


class FakeApi:
    """Answers each list with `lists` (in turn, the last one again and again) and each watch
    with `watches` (in turn, then `then`): events (the watch then ends), an HTTP status, or
    a handler of its own."""

    def __init__(self) -> None:
        self.lists: list[list[dict[str, Any]]] = [[]]
        self.watches: list[Answer] = []
        self.then: Answer = hold
        self.listed = 0
        self.watched_from: list[str] = []
        self.watch_timeouts: list[str] = []
        self.list_gate: asyncio.Event | None = None  # a list waits for it when set
        self.closing = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") not in ("true", "1", "True"):
            if self.list_gate is not None:
                await self.list_gate.wait()
            items = self.lists[min(self.listed, len(self.lists) - 1)]
            self.listed += 1
            version = str(100 * self.listed)
            return web.json_response({"items": items, "metadata": {"resourceVersion": version}})
        self.watched_from.append(request.query.get("resourceVersion", ""))
        self.watch_timeouts.append(request.query.get("timeoutSeconds", ""))
        answer = self.watches.pop(0) if self.watches else self.then
        if isinstance(answer, int):
            return await status(answer, f"status {answer}")(self, request)
        if callable(answer):
            return await answer(self, request)
        response = web.StreamResponse()
        await response.prepare(request)
        for event in answer:
            await response.write(json.dumps(event).encode() + b"\n")
        return response


class Reports:
    """What the watch reported, as 'seen name/uid@version' and 'gone name/uid'; a report
    named in `failing` raises instead, once per count."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.bodies: list[Mapping[str, Any]] = []
        self.failing: dict[str, int] = {}

    def _note(self, entry: str, body: Mapping[str, Any]) -> None:
        if self.failing.get(entry, 0) > 0:
            self.failing[entry] -= 1
            raise RuntimeError(f"could not take {entry}")
        self.log.append(entry)
        self.bodies.append(body)

    async def seen(self, body: Mapping[str, Any]) -> None:
        metadata = body["metadata"]
        self._note(f"seen {metadata['name']}/{metadata['uid']}@{metadata['resourceVersion']}", body)

    async def gone(self, body: Mapping[str, Any]) -> None:
        metadata = body["metadata"]
        self._note(f"gone {metadata['name']}/{metadata['uid']}", body)


@pytest.fixture
async def served() -> AsyncIterator[tuple[FakeApi, client.ApiClient]]:
    fake = FakeApi()
    app = web.Application()
    app.router.add_get(PATH, fake.handle)
    async with serving(app) as url:
        api = client.ApiClient(client.Configuration(host=url))
        try:
            yield fake, api
        finally:
            fake.closing.set()
            if fake.list_gate is not None:
                fake.list_gate.set()
            await api.close()


def pod_watch(api: client.ApiClient, reports: Reports, **options: Any) -> ListWatch:
    return ListWatch(
        api,
        client.CoreV1Api(api).list_pod_for_all_namespaces,
        label_selector="module-controller.koupleless.io/component=module",
        seen=reports.seen,
        gone=reports.gone,
        what="module pods",
        **options,
    )


async def until(condition: Callable[[], object], what: str, timeout: float = 1.5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout}s for {what}")
        await asyncio.sleep(0.005)


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def running(watch: ListWatch) -> asyncio.Task[None]:
    return asyncio.create_task(watch.run())


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


# --- a watch that stalls -----------------------------------------------------------------


async def test_a_silent_watch_is_given_up_and_listed_again_within_the_client_timeout(
    served: tuple[FakeApi, client.ApiClient], caplog: pytest.LogCaptureFixture
) -> None:
    fake, api = served
    fake.lists = [[pod("a", 90)], [pod("a", 130)]]
    fake.watches = [hold]
    reports = Reports()
    watch = pod_watch(
        api, reports, watch_seconds=0, client_grace_seconds=0.3, retry_initial_seconds=0.01
    )
    task = await running(watch)
    try:
        await until(lambda: "seen a/uid-a@130" in reports.log, "a list after the stall")
    finally:
        await stop(task)
    assert fake.listed == 2
    (warning,) = warnings_of(caplog)
    assert "timed out" in warning.getMessage()


async def test_the_client_gives_a_watch_more_time_than_the_server_is_asked_to_take(
    served: tuple[FakeApi, client.ApiClient],
) -> None:
    """The server ends a watch at timeoutSeconds; the client's own deadline must come later,
    or every quiet watch would end as a failure (a pause and a list) instead of going on."""
    fake, api = served
    asked: list[dict[str, Any]] = []
    listing = client.CoreV1Api(api).list_pod_for_all_namespaces

    async def recorded(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("watch"):
            asked.append(kwargs)
        return await listing(*args, **kwargs)

    reports = Reports()
    watch = ListWatch(
        api, recorded, label_selector="x", seen=reports.seen, gone=reports.gone, what="pods"
    )
    task = await running(watch)
    try:
        await until(lambda: asked and fake.watch_timeouts, "a watch at the server")
    finally:
        await stop(task)
    assert asked[0]["timeout_seconds"] == 60
    assert asked[0]["_request_timeout"] >= 60 + 10
    assert fake.watch_timeouts == ["60"]


# --- 410 and errors ----------------------------------------------------------------------


@pytest.mark.parametrize("answer", [410, [expired()]], ids=["http-status", "error-event"])
async def test_an_expired_version_lists_again_at_once_without_a_warning(
    served: tuple[FakeApi, client.ApiClient], caplog: pytest.LogCaptureFixture, answer: Answer
) -> None:
    """A 410 is routine (the version was compacted away), whether the server says so as the
    watch's HTTP status or as an ERROR event: list again now, not after an error's pause."""
    fake, api = served
    fake.lists = [[pod("a", 90)], [pod("a", 130)]]
    fake.watches = [answer]
    reports = Reports()
    task = await running(pod_watch(api, reports, retry_initial_seconds=5.0))
    try:
        await until(lambda: "seen a/uid-a@130" in reports.log, "a list after the 410")
    finally:
        await stop(task)
    assert warnings_of(caplog) == []


async def test_an_expiry_mid_stream_keeps_what_came_before_and_the_list_tells_the_rest(
    served: tuple[FakeApi, client.ApiClient],
) -> None:
    fake, api = served
    fake.lists = [[pod("a", 90), pod("b", 91)], [pod("a", 130), pod("c", 131)]]
    fake.watches = [
        [
            {"type": "MODIFIED", "object": pod("a", 101)},
            {"type": "DELETED", "object": pod("b", 102)},
            {"type": "ADDED", "object": pod("d", 103)},
            expired(),
            {"type": "ADDED", "object": pod("e", 104)},  # after the error: never read
        ]
    ]
    reports = Reports()
    task = await running(pod_watch(api, reports))
    try:
        await until(
            lambda: "gone d/uid-d" in reports.log and len(fake.watched_from) == 2,
            "the watch after the list after the expiry",
        )
    finally:
        await stop(task)
    assert sorted(reports.log[:2]) == ["seen a/uid-a@90", "seen b/uid-b@91"]
    assert reports.log[2:5] == ["seen a/uid-a@101", "gone b/uid-b", "seen d/uid-d@103"]
    assert sorted(reports.log[5:]) == ["gone d/uid-d", "seen a/uid-a@130", "seen c/uid-c@131"]
    assert fake.watched_from == ["100", "200"]


@pytest.mark.parametrize("answer", [410, 500, [expired()]], ids=["410", "500", "error-event"])
async def test_a_failure_right_after_list_first_lists_again_and_reports_what_went(
    served: tuple[FakeApi, client.ApiClient], answer: Answer
) -> None:
    fake, api = served
    fake.lists = [[pod("a", 90), pod("b", 91)], [pod("b", 120)]]
    fake.watches = [answer]
    first, reports = Reports(), Reports()
    watch = pod_watch(api, reports, retry_initial_seconds=0.01)
    assert await watch.list_first(first.seen) == 2
    task = await running(watch)
    try:
        await until(
            lambda: len(reports.log) == 2 and len(fake.watched_from) == 2, "the watch after"
        )
    finally:
        await stop(task)
    assert sorted(first.log) == ["seen a/uid-a@90", "seen b/uid-b@91"]
    assert sorted(reports.log) == ["gone a/uid-a", "seen b/uid-b@120"]
    assert fake.watched_from == ["100", "200"]


# --- a stream that breaks ----------------------------------------------------------------

LINE = json.dumps({"type": "MODIFIED", "object": pod("a", 101)}).encode() + b"\n"


@pytest.mark.parametrize(
    "answer",
    [
        raw(LINE + LINE[:30], abort=True),
        raw(LINE + LINE[:30]),
        raw(LINE + b"{not json}\n" + LINE),
        raw(LINE + b"[1, 2]\n"),
        raw(LINE + b'{"type": "ADDED", "object": "a pod"}\n'),
    ],
    ids=["cut-mid-line", "ended-mid-line", "malformed-line", "not-an-object", "odd-object"],
)
async def test_a_broken_stream_lists_again_and_loses_nothing(
    served: tuple[FakeApi, client.ApiClient], caplog: pytest.LogCaptureFixture, answer: Answer
) -> None:
    fake, api = served
    fake.lists = [[pod("a", 90), pod("b", 91)], [pod("a", 130)]]
    fake.watches = [answer]
    reports = Reports()
    task = await running(pod_watch(api, reports, retry_initial_seconds=0.01))
    try:
        await until(lambda: "seen a/uid-a@130" in reports.log, "the list after the break")
    finally:
        await stop(task)
    assert "seen a/uid-a@101" in reports.log  # what came whole before the break counts
    assert reports.log[-2:] == ["gone b/uid-b", "seen a/uid-a@130"]
    assert fake.listed == 2
    (warning,) = warnings_of(caplog)
    assert "The watch of module pods failed" in warning.getMessage()
    assert not warning.exc_info  # the stream's fault, not a bug of ours: no traceback


async def test_an_event_as_big_as_etcd_allows_is_read(
    served: tuple[FakeApi, client.ApiClient],
) -> None:
    """aiohttp refuses a line longer than twice its read buffer (128 KiB by default); a pod
    may be 1.5 MiB (etcd's limit), and kubernetes-asyncio's session reads 2 MiB at a time."""
    fake, api = served
    big = pod("a", 101)
    big["metadata"]["annotations"] = {"big": "x" * (3 << 19)}
    fake.watches = [[{"type": "MODIFIED", "object": big}], hold]
    reports = Reports()
    task = await running(pod_watch(api, reports))
    try:
        await until(lambda: reports.log, "the big event")
    finally:
        await stop(task)
    assert reports.log == ["seen a/uid-a@101"]
    assert fake.listed == 1


# --- what went while the watch was down --------------------------------------------------


async def test_an_object_deleted_while_down_is_reported_gone_once_with_its_metadata(
    served: tuple[FakeApi, client.ApiClient],
) -> None:
    fake, api = served
    fake.lists = [[pod("a", 90, uid="u-1", app="biz1")], [], []]
    fake.watches = [[expired()], [expired()]]
    reports = Reports()
    task = await running(pod_watch(api, reports, retry_initial_seconds=0.01))
    try:
        await until(lambda: fake.listed == 3 and len(fake.watched_from) == 3, "a third list")
    finally:
        await stop(task)
    assert reports.log == ["seen a/u-1@90", "gone a/u-1"]
    assert reports.bodies[1] == {
        "metadata": {"name": "a", "namespace": "default", "uid": "u-1", "labels": {"app": "biz1"}}
    }


async def test_an_object_made_again_under_its_name_while_down_is_reported_gone_then_seen(
    served: tuple[FakeApi, client.ApiClient],
) -> None:
    """A pod deleted and made again (a new uid) between two lists: the old one is gone (its
    readers hold it by uid), and is said to be before the new one is seen (readers holding
    objects by name, as the node Leases are, must not lose the new one)."""
    fake, api = served
    fake.lists = [[pod("a", 90, uid="u-1")], [pod("a", 130, uid="u-2")]]
    fake.watches = [[expired()]]
    reports = Reports()
    task = await running(pod_watch(api, reports))
    try:
        await until(lambda: "seen a/u-2@130" in reports.log, "the second list")
    finally:
        await stop(task)
    assert reports.log == ["seen a/u-1@90", "gone a/u-1", "seen a/u-2@130"]


# --- callbacks that fail -----------------------------------------------------------------


async def test_a_gone_that_fails_during_the_watch_is_reported_again_after_the_list(
    served: tuple[FakeApi, client.ApiClient],
) -> None:
    """The object is forgotten only once its going was taken: else the list, which no
    longer holds it, would not report it again, and its reader would keep it for good."""
    fake, api = served
    fake.lists = [[pod("a", 90), pod("b", 91)], [pod("a", 90)]]
    fake.watches = [[{"type": "DELETED", "object": pod("b", 101)}], hold]
    reports = Reports()
    reports.failing["gone b/uid-b"] = 1
    task = await running(pod_watch(api, reports, retry_initial_seconds=0.01))
    try:
        await until(lambda: "gone b/uid-b" in reports.log, "b reported gone")
    finally:
        await stop(task)
    assert reports.log.count("gone b/uid-b") == 1
    assert fake.listed == 2


async def test_a_seen_that_fails_does_not_end_the_loop_and_is_reported_again(
    served: tuple[FakeApi, client.ApiClient], caplog: pytest.LogCaptureFixture
) -> None:
    fake, api = served
    fake.lists = [[], [pod("a", 101)]]
    fake.watches = [[{"type": "ADDED", "object": pod("a", 101)}], hold]
    reports = Reports()
    reports.failing["seen a/uid-a@101"] = 1
    task = await running(pod_watch(api, reports, retry_initial_seconds=0.01))
    try:
        await until(lambda: reports.log, "a seen after the failure")
    finally:
        await stop(task)
    assert reports.log == ["seen a/uid-a@101"]
    assert fake.listed == 2
    (warning,) = warnings_of(caplog)
    assert "RuntimeError: could not take seen a/uid-a@101" in warning.getMessage()
    assert warning.exc_info  # a callback's failure is a bug: its traceback


async def test_a_gone_that_fails_during_a_list_is_reported_on_the_next_list(
    served: tuple[FakeApi, client.ApiClient],
) -> None:
    fake, api = served
    fake.lists = [[pod("a", 90)], [], []]
    fake.watches = [[expired()]]
    reports = Reports()
    reports.failing["gone a/uid-a"] = 1
    task = await running(pod_watch(api, reports, retry_initial_seconds=0.01))
    try:
        await until(lambda: "gone a/uid-a" in reports.log, "a reported gone")
    finally:
        await stop(task)
    assert reports.log == ["seen a/uid-a@90", "gone a/uid-a"]
    assert fake.listed == 3


# --- cancellation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "where", ["listing", "watch-headers", "streaming", "in-a-callback", "pausing"]
)
async def test_cancelling_at_any_wait_ends_the_task_and_leaves_no_connection_open(
    served: tuple[FakeApi, client.ApiClient], where: str
) -> None:
    fake, api = served
    fake.lists = [[pod("a", 90)]]
    reached = asyncio.Event()
    reports = Reports()
    seen = reports.seen

    async def headers_never(fake: FakeApi, request: web.Request) -> web.StreamResponse:
        reached.set()
        await fake.closing.wait()
        return web.Response()

    async def streamed(fake: FakeApi, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(LINE)
        reached.set()
        await fake.closing.wait()
        return response

    async def stuck(body: Mapping[str, Any]) -> None:
        if body["metadata"]["resourceVersion"] == "101":
            reached.set()
            await asyncio.Event().wait()
        await seen(body)

    reports.seen = stuck  # type: ignore[method-assign]
    if where == "listing":
        fake.list_gate = asyncio.Event()
    elif where == "watch-headers":
        fake.watches = [headers_never]
    elif where == "streaming":
        fake.watches = [streamed]
    elif where == "in-a-callback":
        fake.watches = [raw(LINE)]
    else:
        fake.watches = [500]
    task = await running(pod_watch(api, reports, retry_initial_seconds=60.0))
    if where == "listing":
        await until(lambda: fake.listed == 0 and _busy(api), "the list sent")
    elif where == "pausing":
        await until(lambda: fake.watched_from and not _busy(api), "the pause")
    else:
        await asyncio.wait_for(reached.wait(), 1.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert not _busy(api)


def _busy(api: client.ApiClient) -> bool:
    """Whether a connection of `api` is in use (not back in the pool, nor closed)."""
    connector = api.rest_client.pool_manager.connector
    assert connector is not None
    return bool(connector._acquired)


# --- pauses and what is logged -----------------------------------------------------------


async def test_the_pause_doubles_on_each_failure_up_to_the_cap_and_resets_after_a_good_watch(
    served: tuple[FakeApi, client.ApiClient], caplog: pytest.LogCaptureFixture
) -> None:
    fake, api = served
    fake.lists = [[pod("a", 90)]]
    good = [{"type": "MODIFIED", "object": pod("a", 101)}]
    fake.watches = [500, 500, 500, 500, 500, good, 500, hold]
    reports = Reports()
    watch = pod_watch(api, reports, retry_initial_seconds=0.01, retry_max_seconds=0.05)
    task = await running(watch)
    try:
        await until(lambda: len(fake.watched_from) == 8, "the last watch")
    finally:
        await stop(task)
    pauses = [record.args[-1] for record in warnings_of(caplog)]  # type: ignore[index]
    assert pauses == [0.01, 0.02, 0.04, 0.05, 0.05, 0.01]


async def test_a_watch_that_worked_a_good_while_starts_the_pauses_over_however_it_ended(
    served: tuple[FakeApi, client.ApiClient], caplog: pytest.LogCaptureFixture
) -> None:
    """A proxy that drops each watch before the server would end it: the watches work, so
    the pauses between them must not grow to the most (a list, half a minute blind)."""
    fake, api = served
    expiry = json.dumps(expired()).encode() + b"\n"
    fake.watches = [500, 500, 500, slow(LINE, 0.15, abort=True), slow(LINE, 0.15, expiry), hold]
    reports = Reports()
    watch = pod_watch(
        api,
        reports,
        retry_initial_seconds=0.01,
        retry_max_seconds=0.05,
        long_watch_seconds=0.1,
    )
    task = await running(watch)
    try:
        await until(lambda: len(fake.watched_from) == 6, "the last watch")
    finally:
        await stop(task)
    pauses = [record.args[-1] for record in warnings_of(caplog)]  # type: ignore[index]
    assert pauses == [0.01, 0.02, 0.04, 0.01]  # the expiry after a long watch: no pause


async def test_each_failure_is_one_escaped_line_saying_what_failed(
    served: tuple[FakeApi, client.ApiClient], caplog: pytest.LogCaptureFixture
) -> None:
    fake, api = served
    fake.watches = [status(500, "etcd is\nunwell"), hold]
    reports = Reports()
    task = await running(pod_watch(api, reports, retry_initial_seconds=0.01))
    try:
        await until(lambda: len(fake.watched_from) == 2, "the second watch")
    finally:
        await stop(task)
    (warning,) = warnings_of(caplog)
    message = warning.getMessage()
    assert "module pods" in message and "500" in message and "etcd is\\nunwell" in message
    assert "\n" not in message
    assert not warning.exc_info  # the API server's answer is no bug of ours


@pytest.mark.parametrize(
    "answer",
    [[], [{"kind": "Status", "status": "Failure", "message": "no"}]],
    ids=["nothing", "no-event"],
)
async def test_a_watch_that_ends_at_once_with_nothing_is_paused_not_hammered(
    served: tuple[FakeApi, client.ApiClient], answer: Answer
) -> None:
    """A proxy that closes each watch at once (saying nothing, or something that is no
    event): without a pause the loop would spin, asking the API server as fast as it
    answers."""
    fake, api = served
    fake.then = answer
    reports = Reports()
    task = await running(pod_watch(api, reports, retry_initial_seconds=0.05))
    try:
        await asyncio.sleep(0.4)
    finally:
        await stop(task)
    assert 2 <= len(fake.watched_from) <= 6


async def test_a_version_expired_again_and_again_is_paused_not_hammered(
    served: tuple[FakeApi, client.ApiClient],
) -> None:
    fake, api = served
    fake.then = [expired()]
    reports = Reports()
    task = await running(pod_watch(api, reports, retry_initial_seconds=0.05))
    try:
        await asyncio.sleep(0.4)
    finally:
        await stop(task)
    assert 2 <= fake.listed <= 6


# --- odd events --------------------------------------------------------------------------


async def test_events_without_metadata_are_passed_over_and_bookmarks_move_the_version(
    served: tuple[FakeApi, client.ApiClient],
) -> None:
    fake, api = served
    fake.watches = [
        [
            {"type": "ADDED"},
            {"type": "ADDED", "object": {}},
            {"type": "ADDED", "object": None},
            {"type": "MODIFIED", "object": {"metadata": {"resourceVersion": "105"}}},
            {"type": "DELETED", "object": {"metadata": {}}},
            {"type": "BOOKMARK"},
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "150"}}},
        ],
        [{"type": "ADDED", "object": pod("a", 151)}],
    ]
    reports = Reports()
    task = await running(pod_watch(api, reports))
    try:
        await until(lambda: reports.log, "the second watch's event")
    finally:
        await stop(task)
    assert reports.log == ["seen a/uid-a@151"]
    assert fake.watched_from[:2] == ["100", "150"]
    assert fake.listed == 1
