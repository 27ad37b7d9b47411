"""ListWatch against a stand-in API server that misbehaves: watches that stall, end at once,
break mid-line or answer 410; callbacks that fail; cancellation at each wait; the pauses
between tries and what is logged. What must hold: the loop goes on (listing again), nothing
is lost or reported twice, nothing is leaked."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

import pytest
from aiohttp import web
from kubernetes_asyncio import client

from tests.unit.kube_watch_support import (
    Answer,
    FakeApi,
    Handler,
    Reports,
    expired,
    hold,
    pod,
    pod_watch,
    status,
    until,
    watching,
)

LOGGER = "module_controller.kube_watch"


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


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


# --- a watch that stalls -----------------------------------------------------------------


async def test_a_silent_watch_is_given_up_and_listed_again_within_the_client_timeout(
    watch_server: tuple[FakeApi, client.ApiClient], caplog: pytest.LogCaptureFixture
) -> None:
    fake, api = watch_server
    fake.lists = [[pod("a", 90)], [pod("a", 130)]]
    fake.watches = [hold]
    reports = Reports()
    watch = pod_watch(
        api, reports, watch_seconds=0, client_grace_seconds=0.3, retry_initial_seconds=0.01
    )
    async with watching(watch):
        await until(lambda: "seen a/uid-a@130" in reports.log, "a list after the stall")
    assert fake.listed == 2
    (warning,) = warnings_of(caplog)
    assert "timed out" in warning.getMessage()


# --- 410 and errors ----------------------------------------------------------------------


@pytest.mark.parametrize("answer", [410, [expired()]], ids=["http-status", "error-event"])
async def test_an_expired_version_lists_again_at_once_without_a_warning(
    watch_server: tuple[FakeApi, client.ApiClient], caplog: pytest.LogCaptureFixture, answer: Answer
) -> None:
    """A 410 is routine (the version was compacted away), whether the server says so as the
    watch's HTTP status or as an ERROR event: list again now, not after an error's pause."""
    fake, api = watch_server
    fake.lists = [[pod("a", 90)], [pod("a", 130)]]
    fake.watches = [answer]
    reports = Reports()
    async with watching(pod_watch(api, reports, retry_initial_seconds=5.0)):
        await until(lambda: "seen a/uid-a@130" in reports.log, "a list after the 410")
    assert warnings_of(caplog) == []


async def test_an_expiry_mid_stream_keeps_what_came_before_and_the_list_tells_the_rest(
    watch_server: tuple[FakeApi, client.ApiClient],
) -> None:
    fake, api = watch_server
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
    async with watching(pod_watch(api, reports)):
        await until(
            lambda: "gone d/uid-d" in reports.log and len(fake.watched_from) == 2,
            "the watch after the list after the expiry",
        )
    assert sorted(reports.log[:2]) == ["seen a/uid-a@90", "seen b/uid-b@91"]
    assert reports.log[2:5] == ["seen a/uid-a@101", "gone b/uid-b", "seen d/uid-d@103"]
    assert sorted(reports.log[5:]) == ["gone d/uid-d", "seen a/uid-a@130", "seen c/uid-c@131"]
    assert fake.watched_from == ["100", "200"]


@pytest.mark.parametrize("answer", [410, 500, [expired()]], ids=["410", "500", "error-event"])
async def test_a_failure_right_after_list_first_lists_again_and_reports_what_went(
    watch_server: tuple[FakeApi, client.ApiClient], answer: Answer
) -> None:
    fake, api = watch_server
    fake.lists = [[pod("a", 90), pod("b", 91)], [pod("b", 120)]]
    fake.watches = [answer]
    first, reports = Reports(), Reports()
    watch = pod_watch(api, reports, retry_initial_seconds=0.01)
    assert await watch.list_first(first.seen) == 2
    async with watching(watch):
        await until(
            lambda: len(reports.log) == 2 and len(fake.watched_from) == 2, "the watch after"
        )
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
    watch_server: tuple[FakeApi, client.ApiClient], caplog: pytest.LogCaptureFixture, answer: Answer
) -> None:
    fake, api = watch_server
    fake.lists = [[pod("a", 90), pod("b", 91)], [pod("a", 130)]]
    fake.watches = [answer]
    reports = Reports()
    async with watching(pod_watch(api, reports, retry_initial_seconds=0.01)):
        await until(lambda: "seen a/uid-a@130" in reports.log, "the list after the break")
    assert "seen a/uid-a@101" in reports.log  # what came whole before the break counts
    assert reports.log[-2:] == ["gone b/uid-b", "seen a/uid-a@130"]
    assert fake.listed == 2
    (warning,) = warnings_of(caplog)
    assert "The watch of module pods failed" in warning.getMessage()
    assert not warning.exc_info  # the stream's fault, not a bug of ours: no traceback


# --- callbacks that fail -----------------------------------------------------------------


async def test_a_gone_that_fails_during_the_watch_is_reported_again_after_the_list(
    watch_server: tuple[FakeApi, client.ApiClient],
) -> None:
    """The object is forgotten only once its going was taken: else the list, which no
    longer holds it, would not report it again, and its reader would keep it for good."""
    fake, api = watch_server
    fake.lists = [[pod("a", 90), pod("b", 91)], [pod("a", 90)]]
    fake.watches = [[{"type": "DELETED", "object": pod("b", 101)}], hold]
    reports = Reports()
    reports.failing["gone b/uid-b"] = 1
    async with watching(pod_watch(api, reports, retry_initial_seconds=0.01)):
        await until(lambda: "gone b/uid-b" in reports.log, "b reported gone")
    assert reports.log.count("gone b/uid-b") == 1
    assert fake.listed == 2


async def test_a_seen_that_fails_does_not_end_the_loop_and_is_reported_again(
    watch_server: tuple[FakeApi, client.ApiClient], caplog: pytest.LogCaptureFixture
) -> None:
    fake, api = watch_server
    fake.lists = [[], [pod("a", 101)]]
    fake.watches = [[{"type": "ADDED", "object": pod("a", 101)}], hold]
    reports = Reports()
    reports.failing["seen a/uid-a@101"] = 1
    async with watching(pod_watch(api, reports, retry_initial_seconds=0.01)):
        await until(lambda: reports.log, "a seen after the failure")
    assert reports.log == ["seen a/uid-a@101"]
    assert fake.listed == 2
    (warning,) = warnings_of(caplog)
    assert "RuntimeError: could not take seen a/uid-a@101" in warning.getMessage()
    assert warning.exc_info  # a callback's failure is a bug: its traceback


async def test_a_gone_that_fails_during_a_list_is_reported_on_the_next_list(
    watch_server: tuple[FakeApi, client.ApiClient],
) -> None:
    fake, api = watch_server
    fake.lists = [[pod("a", 90)], [], []]
    fake.watches = [[expired()]]
    reports = Reports()
    reports.failing["gone a/uid-a"] = 1
    async with watching(pod_watch(api, reports, retry_initial_seconds=0.01)):
        await until(lambda: "gone a/uid-a" in reports.log, "a reported gone")
    assert reports.log == ["seen a/uid-a@90", "gone a/uid-a"]
    assert fake.listed == 3


# --- cancellation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "where", ["listing", "watch-headers", "streaming", "in-a-callback", "pausing"]
)
async def test_cancelling_at_any_wait_ends_the_task_and_leaves_no_connection_open(
    watch_server: tuple[FakeApi, client.ApiClient], where: str
) -> None:
    fake, api = watch_server
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
    task = asyncio.create_task(pod_watch(api, reports, retry_initial_seconds=60.0).run())
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
    watch_server: tuple[FakeApi, client.ApiClient], caplog: pytest.LogCaptureFixture
) -> None:
    fake, api = watch_server
    fake.lists = [[pod("a", 90)]]
    good = [{"type": "MODIFIED", "object": pod("a", 101)}]
    fake.watches = [500, 500, 500, 500, 500, good, 500, hold]
    reports = Reports()
    watch = pod_watch(api, reports, retry_initial_seconds=0.01, retry_max_seconds=0.05)
    async with watching(watch):
        await until(lambda: len(fake.watched_from) == 8, "the last watch")
    pauses = [record.args[-1] for record in warnings_of(caplog)]  # type: ignore[index]
    assert pauses == [0.01, 0.02, 0.04, 0.05, 0.05, 0.01]


async def test_a_watch_that_worked_a_good_while_starts_the_pauses_over_however_it_ended(
    watch_server: tuple[FakeApi, client.ApiClient], caplog: pytest.LogCaptureFixture
) -> None:
    """A proxy that drops each watch before the server would end it: the watches work, so
    the pauses between them must not grow to the most (a list, half a minute blind)."""
    fake, api = watch_server
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
    async with watching(watch):
        await until(lambda: len(fake.watched_from) == 6, "the last watch")
    pauses = [record.args[-1] for record in warnings_of(caplog)]  # type: ignore[index]
    assert pauses == [0.01, 0.02, 0.04, 0.01]  # the expiry after a long watch: no pause


async def test_each_failure_is_one_escaped_line_saying_what_failed(
    watch_server: tuple[FakeApi, client.ApiClient], caplog: pytest.LogCaptureFixture
) -> None:
    fake, api = watch_server
    fake.watches = [status(500, "etcd is\nunwell"), hold]
    reports = Reports()
    async with watching(pod_watch(api, reports, retry_initial_seconds=0.01)):
        await until(lambda: len(fake.watched_from) == 2, "the second watch")
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
    watch_server: tuple[FakeApi, client.ApiClient], answer: Answer
) -> None:
    """A proxy that closes each watch at once (saying nothing, or something that is no
    event): without a pause the loop would spin, asking the API server as fast as it
    answers."""
    fake, api = watch_server
    fake.then = answer
    reports = Reports()
    async with watching(pod_watch(api, reports, retry_initial_seconds=0.05)):
        await asyncio.sleep(0.4)
    assert 2 <= len(fake.watched_from) <= 6


async def test_a_version_expired_again_and_again_is_paused_not_hammered(
    watch_server: tuple[FakeApi, client.ApiClient],
) -> None:
    fake, api = watch_server
    fake.then = [expired()]
    reports = Reports()
    async with watching(pod_watch(api, reports, retry_initial_seconds=0.05)):
        await asyncio.sleep(0.4)
    assert 2 <= fake.listed <= 6
