"""ListWatch against a small stand-in for the API server's list and watch of node Leases:
what it reports, how it goes on after the server ends a watch, a 410 and an error."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import pytest
from aiohttp import web
from kubernetes_asyncio import client

from module_controller.kube_watch import ListWatch
from tests.local_server import serving

NAMESPACE = "kube-node-lease"
PATH = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases"


def lease(name: str, version: int, holder: str = "replica-a") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "resourceVersion": str(version)},
        "spec": {"holderIdentity": holder},
    }


class FakeServer:
    """Answers each list with `lists` (in turn) and each watch with `watches` (in turn):
    a list of events, or an HTTP status to answer with."""

    def __init__(self) -> None:
        self.lists: list[list[dict[str, Any]]] = []
        self.watches: list[list[dict[str, Any]] | int] = []
        self.watched_from: list[str] = []
        self.selectors: list[str] = []
        self.listed = 0
        self.closing = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.selectors.append(request.query.get("labelSelector", ""))
        if request.query.get("watch") not in ("true", "1", "True"):
            items = self.lists[min(self.listed, len(self.lists) - 1)]
            self.listed += 1
            return web.json_response({"items": items, "metadata": {"resourceVersion": "100"}})
        self.watched_from.append(request.query.get("resourceVersion", ""))
        answer = self.watches.pop(0) if self.watches else []
        if isinstance(answer, int):
            return web.json_response({"kind": "Status", "code": answer}, status=answer)
        response = web.StreamResponse()
        await response.prepare(request)
        for event in answer:
            await response.write(json.dumps(event).encode() + b"\n")
        if not self.watches:  # nothing more to say: hold the watch open, as a server does
            await self.closing.wait()
        return response


class Seen:
    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []
        self.changed = asyncio.Event()

    async def seen(self, body: Mapping[str, Any]) -> None:
        metadata = body["metadata"]
        self.log.append(("seen", f"{metadata['name']}@{metadata['resourceVersion']}"))
        self.changed.set()

    async def gone(self, body: Mapping[str, Any]) -> None:
        self.log.append(("gone", body["metadata"]["name"]))
        self.changed.set()

    async def until(self, *entries: tuple[str, str], timeout: float = 5.0) -> None:
        async def arrived() -> None:
            while not all(entry in self.log for entry in entries):
                self.changed.clear()
                await self.changed.wait()

        try:
            await asyncio.wait_for(arrived(), timeout)
        except TimeoutError:
            raise AssertionError(f"waited for {entries}; reported so far: {self.log}") from None


@pytest.fixture
async def served() -> Any:
    fake = FakeServer()
    app = web.Application()
    app.router.add_get(PATH, fake.handle)
    app.router.add_get("/api/v1/pods", fake.handle)
    async with serving(app) as url:
        api = client.ApiClient(client.Configuration(host=url))
        try:
            yield fake, api
        finally:
            fake.closing.set()
            await api.close()


def lease_watch(api: client.ApiClient, seen: Seen, **options: Any) -> ListWatch:
    """The node Lease watch; `options` as ListWatch takes them (the timeouts, the pauses)."""
    return ListWatch(
        api,
        client.CoordinationV1Api(api).list_namespaced_lease,
        NAMESPACE,
        label_selector="component=vnode-lease",
        seen=seen.seen,
        gone=seen.gone,
        what="node Leases",
        **options,
    )


async def run_watch(api: client.ApiClient, seen: Seen, **options: Any) -> asyncio.Task[None]:
    return asyncio.create_task(lease_watch(api, seen, **options).run())


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_it_reports_the_list_then_each_event_of_the_watch(
    served: tuple[FakeServer, client.ApiClient],
) -> None:
    fake, api = served
    fake.lists = [[lease("node-a", 90)]]
    fake.watches = [
        [
            {"type": "ADDED", "object": lease("node-b", 101)},
            {"type": "MODIFIED", "object": lease("node-a", 102, holder="replica-b")},
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "103"}}},
            {"type": "DELETED", "object": lease("node-b", 104)},
        ]
    ]
    seen = Seen()
    task = await run_watch(api, seen)
    try:
        await seen.until(("gone", "node-b"))
    finally:
        await stop(task)
    assert seen.log == [
        ("seen", "node-a@90"),
        ("seen", "node-b@101"),
        ("seen", "node-a@102"),
        ("gone", "node-b"),
    ]
    assert fake.watched_from == ["100"]  # from the list's version
    assert set(fake.selectors) == {"component=vnode-lease"}


async def test_a_watch_the_server_ends_goes_on_from_the_last_version_seen(
    served: tuple[FakeServer, client.ApiClient],
) -> None:
    fake, api = served
    fake.lists = [[]]
    fake.watches = [
        [
            {"type": "ADDED", "object": lease("node-a", 101)},
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "150"}}},
        ],
        [{"type": "MODIFIED", "object": lease("node-a", 151)}],
    ]
    seen = Seen()
    task = await run_watch(api, seen)
    try:
        await seen.until(("seen", "node-a@151"))
    finally:
        await stop(task)
    assert fake.watched_from == ["100", "150"]
    assert fake.listed == 1  # no list again for a watch that simply ended


async def test_an_expired_version_lists_again_and_reports_what_went_meanwhile(
    served: tuple[FakeServer, client.ApiClient],
) -> None:
    fake, api = served
    fake.lists = [[lease("node-a", 90), lease("node-b", 91)], [lease("node-b", 120)]]
    fake.watches = [[{"type": "ERROR", "object": {"kind": "Status", "code": 410}}], []]
    seen = Seen()
    task = await run_watch(api, seen)
    try:
        await seen.until(("seen", "node-b@120"), ("gone", "node-a"))
    finally:
        await stop(task)
    assert fake.listed == 2


async def test_an_error_answer_lists_again_after_a_pause(
    served: tuple[FakeServer, client.ApiClient],
) -> None:
    fake, api = served
    fake.lists = [[lease("node-a", 90)], [lease("node-a", 130)]]
    fake.watches = [500, []]
    seen = Seen()
    task = await run_watch(api, seen, retry_initial_seconds=0.05)
    try:
        await seen.until(("seen", "node-a@130"))
    finally:
        await stop(task)
    assert not task.done() or task.cancelled()  # the failure did not end the watch
    assert fake.listed == 2


async def test_what_went_between_two_lists_is_reported_with_what_finds_it_again(
    served: tuple[FakeServer, client.ApiClient],
) -> None:
    """A module pod deleted while the watch was down: the dispatcher needs its uid, the
    rollouts its namespace and labels; the second list no longer shows it at all."""
    fake, api = served
    pod = {
        "metadata": {
            "name": "biz1-abc",
            "namespace": "default",
            "uid": "u-1",
            "labels": {"app": "biz1"},
            "resourceVersion": "90",
            "annotations": {"big": "x" * 100},
        },
        "spec": {"nodeName": "virtual-node-1"},
    }
    fake.lists = [[pod], []]
    fake.watches = [[{"type": "ERROR", "object": {"kind": "Status", "code": 410}}], []]
    gone: list[Mapping[str, Any]] = []
    seen = Seen()

    async def remember(body: Mapping[str, Any]) -> None:
        gone.append(body)
        await seen.gone(body)

    watch = ListWatch(
        api,
        client.CoreV1Api(api).list_pod_for_all_namespaces,
        label_selector="module-controller.koupleless.io/component=module",
        seen=seen.seen,
        gone=remember,
        what="module pods",
    )
    task = asyncio.create_task(watch.run())
    try:
        await seen.until(("gone", "biz1-abc"))
    finally:
        await stop(task)
    assert gone == [
        {
            "metadata": {
                "name": "biz1-abc",
                "namespace": "default",
                "uid": "u-1",
                "labels": {"app": "biz1"},
            }
        }
    ]


async def test_a_first_list_made_before_the_watch_runs_is_watched_from_not_made_again(
    served: tuple[FakeServer, client.ApiClient],
) -> None:
    """The runtime lists module pods into its state before the dispatcher runs; the watch
    then goes on from that list (one list at start, not two)."""
    fake, api = served
    fake.lists = [[lease("node-a", 90)]]
    fake.watches = [[{"type": "MODIFIED", "object": lease("node-a", 101)}]]
    first = Seen()
    seen = Seen()
    watch = lease_watch(api, seen)
    assert await watch.list_first(first.seen) == 1
    task = asyncio.create_task(watch.run())
    try:
        await seen.until(("seen", "node-a@101"))
    finally:
        await stop(task)
    assert first.log == [("seen", "node-a@90")]
    assert seen.log == [("seen", "node-a@101")]
    assert fake.listed == 1 and fake.watched_from == ["100"]
