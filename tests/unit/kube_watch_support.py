"""A stand-in for the API server's list and watch of pods and node Leases, for the ListWatch
tests (tests/unit/test_kube_watch*.py; the fixture `watch_server` in conftest.py serves it),
and what they build on it: the watches, a record of what a watch reported, waits."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Protocol

from aiohttp import web
from kubernetes_asyncio import client

from module_controller.kube_watch import ListWatch

PODS_PATH = "/api/v1/pods"
LEASE_NAMESPACE = "kube-node-lease"
LEASES_PATH = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases"

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


def expired() -> dict[str, Any]:
    return {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}


def holding(*events: dict[str, Any]) -> Handler:
    """A watch that writes `events`, then has nothing more to say: open until the test ends,
    as a quiet server's is."""

    async def answer(fake: FakeApi, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for event in events:
            await response.write(json.dumps(event).encode() + b"\n")
        await fake.closing.wait()
        return response

    return answer


hold = holding()  # a watch with nothing to say


def status(code: int, message: str) -> Handler:
    async def answer(fake: FakeApi, request: web.Request) -> web.StreamResponse:
        body = {"kind": "Status", "code": code, "message": message}
        return web.json_response(body, status=code)

    return answer


class FakeApi:
    """Answers each list with `lists` (in turn, the last one again and again; list n is at
    resourceVersion 100 * n) and each watch with `watches` (in turn, then `then`): events
    (the watch then ends), an HTTP status, or a handler of its own."""

    def __init__(self) -> None:
        self.lists: list[list[dict[str, Any]]] = [[]]
        self.watches: list[Answer] = []
        self.then: Answer = hold
        self.listed = 0
        self.watched_from: list[str] = []
        self.watch_timeouts: list[str] = []
        self.selectors: list[str] = []  # each request's labelSelector
        self.list_gate: asyncio.Event | None = None  # a list waits for it when set
        self.closing = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(PODS_PATH, self.handle)
        app.router.add_get(LEASES_PATH, self.handle)
        return app

    def close(self) -> None:
        """Let every answer still waiting end (the test is over)."""
        self.closing.set()
        if self.list_gate is not None:
            self.list_gate.set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.selectors.append(request.query.get("labelSelector", ""))
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


class Reporter(Protocol):
    """What a watch reports to (ListWatch's `seen` and `gone`)."""

    async def seen(self, body: Mapping[str, Any]) -> None: ...

    async def gone(self, body: Mapping[str, Any]) -> None: ...


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


def pod_watch(api: client.ApiClient, reports: Reporter, **options: Any) -> ListWatch:
    """The module pod watch; `options` as ListWatch takes them (the timeouts, the pauses)."""
    return ListWatch(
        api,
        client.CoreV1Api(api).list_pod_for_all_namespaces,
        label_selector="module-controller.koupleless.io/component=module",
        seen=reports.seen,
        gone=reports.gone,
        what="module pods",
        **options,
    )


def lease_watch(api: client.ApiClient, reports: Reporter, **options: Any) -> ListWatch:
    """The node Lease watch; `options` as ListWatch takes them."""
    return ListWatch(
        api,
        client.CoordinationV1Api(api).list_namespaced_lease,
        LEASE_NAMESPACE,
        label_selector="component=vnode-lease",
        seen=reports.seen,
        gone=reports.gone,
        what="node Leases",
        **options,
    )


@asynccontextmanager
async def watching(watch: ListWatch) -> AsyncIterator[asyncio.Task[None]]:
    """`watch` running as a task for the block; cancelled and awaited after it."""
    task = asyncio.create_task(watch.run())
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def until(condition: Callable[[], object], what: str, timeout: float = 1.5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout}s for {what}")
        await asyncio.sleep(0.005)
