"""The EventRecorder against a fake Kubernetes API server over real loopback HTTP.

The fake serves only the two calls the recorder makes (create and patch a core/v1 Event),
records every request, and can be told to fail or to hold requests, so queueing,
aggregation and error handling are seen from the API server's side.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from kubernetes_asyncio import client

from module_controller import k8s_events
from module_controller.k8s_events import (
    COMPONENT,
    MAX_MESSAGE_LENGTH,
    EventRecorder,
    ObjectRef,
)
from module_controller.observability.metrics import Metrics
from module_controller.testbed.process import free_port
from tests.waiting import wait_for

POD = ObjectRef(kind="Pod", name="biz1-7d9f", namespace="shop", uid="uid-pod-1")
NODE = ObjectRef(kind="Node", name="virtual-node-abc", namespace=None, uid="uid-node-1")


@dataclass
class Request:
    method: str
    namespace: str
    name: str | None
    content_type: str
    body: dict[str, Any]


@dataclass
class FakeApiServer:
    """Stores Events by (namespace, name); `fail_with` and `gate` shape its answers."""

    port: int = 0
    requests: list[Request] = field(default_factory=list)
    events: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    fail_with: int | None = None
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.gate.set()

    async def create(self, request: web.Request) -> web.Response:
        namespace = request.match_info["namespace"]
        body = await request.json()
        self.requests.append(Request("POST", namespace, None, request.content_type, body))
        await self.gate.wait()
        if self.fail_with is not None:
            return self._status(self.fail_with)
        self.events[namespace, body["metadata"]["name"]] = body
        return web.json_response(body, status=201)

    async def patch(self, request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        body = await request.json()
        self.requests.append(Request("PATCH", namespace, name, request.content_type, body))
        await self.gate.wait()
        if self.fail_with is not None:
            return self._status(self.fail_with)
        stored = self.events.get((namespace, name))
        if stored is None:
            return self._status(404)
        stored.update(body)
        return web.json_response(stored)

    @staticmethod
    def _status(code: int) -> web.Response:
        status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code}
        return web.json_response(status, status=code)

    def stored(self) -> list[dict[str, Any]]:
        return list(self.events.values())


@pytest.fixture
async def fake_api() -> AsyncIterator[FakeApiServer]:
    fake = FakeApiServer()
    app = web.Application()
    app.router.add_post("/api/v1/namespaces/{namespace}/events", fake.create)
    app.router.add_patch("/api/v1/namespaces/{namespace}/events/{name}", fake.patch)
    runner = web.AppRunner(app)
    await runner.setup()
    fake.port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", fake.port)
    await site.start()
    try:
        yield fake
    finally:
        fake.gate.set()
        await runner.cleanup()


async def _api_client(port: int) -> client.ApiClient:
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{port}"
    return client.ApiClient(configuration=configuration)


@pytest.fixture
async def api(fake_api: FakeApiServer) -> AsyncIterator[client.ApiClient]:
    api_client = await _api_client(fake_api.port)
    try:
        yield api_client
    finally:
        await api_client.close()


class FakeTime:
    """A monotonic clock and a wall clock that only move when told to."""

    def __init__(self) -> None:
        self.monotonic = 1000.0
        self.wall = datetime.datetime(2026, 5, 4, 10, 0, 0, tzinfo=datetime.UTC)

    def advance(self, seconds: float) -> None:
        self.monotonic += seconds
        self.wall += datetime.timedelta(seconds=seconds)


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def recorder(api: client.ApiClient, fake_time: FakeTime) -> Iterator[EventRecorder]:
    yield EventRecorder(
        api,
        instance="controller-1",
        clock=lambda: fake_time.monotonic,
        now=lambda: fake_time.wall,
    )


async def _settled(recorder: EventRecorder, fake: FakeApiServer, requests: int) -> None:
    async def done() -> bool:
        return recorder.pending == 0 and len(fake.requests) >= requests

    await wait_for(
        done,
        timeout=5,
        what=f"{requests} requests at the fake API server",
        diagnose=lambda: _describe(recorder, fake),
        interval=0.02,
    )
    await asyncio.sleep(0.05)  # and nothing more follows


async def _describe(recorder: EventRecorder, fake: FakeApiServer) -> str:
    return (
        f"pending={recorder.pending} posted={recorder.posted} failed={recorder.failed} "
        f"dropped={recorder.dropped}\nrequests={[(r.method, r.name) for r in fake.requests]}"
    )


async def test_an_event_on_a_pod_is_posted_in_its_namespace(
    recorder: EventRecorder, fake_api: FakeApiServer
) -> None:
    recorder.start()
    began = time.monotonic()
    recorder.record(POD, "Normal", "ModuleInstalled", "biz1:0.0.1 is installed on base-1.")
    assert time.monotonic() - began < 0.01, "record() only queues"
    await _settled(recorder, fake_api, 1)
    await recorder.stop()

    (request,) = fake_api.requests
    assert (request.method, request.namespace) == ("POST", "shop")
    event = request.body
    assert event["metadata"]["namespace"] == "shop"
    assert event["metadata"]["name"].startswith("biz1-7d9f.")
    assert event["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "biz1-7d9f",
        "namespace": "shop",
        "uid": "uid-pod-1",
    }
    assert (event["type"], event["reason"]) == ("Normal", "ModuleInstalled")
    assert event["message"] == "biz1:0.0.1 is installed on base-1."
    assert event["source"] == {"component": COMPONENT, "host": "controller-1"}
    assert event["source"]["component"] == "module-controller"
    assert (event["reportingComponent"], event["reportingInstance"]) == (
        "module-controller",
        "controller-1",
    )
    assert event["count"] == 1
    assert event["firstTimestamp"] == event["lastTimestamp"] == "2026-05-04T10:00:00Z"
    assert recorder.posted == 1


async def test_an_event_on_a_node_goes_to_the_default_namespace(
    recorder: EventRecorder, fake_api: FakeApiServer
) -> None:
    recorder.start()
    recorder.record(NODE, "Warning", "BaseNotReady", "No heartbeat from base-1 for 25s.")
    await _settled(recorder, fake_api, 1)
    await recorder.stop()
    (request,) = fake_api.requests
    assert request.namespace == "default"
    assert "namespace" not in request.body["involvedObject"]
    assert request.body["involvedObject"]["kind"] == "Node"


async def test_a_repeat_within_the_window_patches_count_and_last_timestamp(
    recorder: EventRecorder, fake_api: FakeApiServer, fake_time: FakeTime
) -> None:
    recorder.start()
    recorder.record(POD, "Warning", "InstallFailed", "biz1: jar not found")
    await _settled(recorder, fake_api, 1)
    fake_time.advance(60)
    recorder.record(POD, "Warning", "InstallFailed", "biz1: jar not found")
    await _settled(recorder, fake_api, 2)
    fake_time.advance(60)
    recorder.record(POD, "Warning", "InstallFailed", "biz1: jar not found")
    await _settled(recorder, fake_api, 3)
    await recorder.stop()

    assert [r.method for r in fake_api.requests] == ["POST", "PATCH", "PATCH"]
    patch = fake_api.requests[-1]
    assert patch.content_type == "application/strategic-merge-patch+json"
    assert patch.name == fake_api.requests[0].body["metadata"]["name"]
    (stored,) = fake_api.stored()
    assert stored["count"] == 3
    assert stored["firstTimestamp"] == "2026-05-04T10:00:00Z"
    assert stored["lastTimestamp"] == "2026-05-04T10:02:00Z"


async def test_different_messages_reasons_or_objects_are_separate_events(
    recorder: EventRecorder, fake_api: FakeApiServer
) -> None:
    recorder.start()
    recorder.record(POD, "Warning", "InstallFailed", "biz1: jar not found")
    recorder.record(POD, "Warning", "InstallFailed", "biz1: out of metaspace")
    recorder.record(POD, "Normal", "ModuleInstalled", "biz1: jar not found")
    recorder.record(NODE, "Warning", "InstallFailed", "biz1: jar not found")
    await _settled(recorder, fake_api, 4)
    await recorder.stop()
    assert [r.method for r in fake_api.requests] == ["POST"] * 4
    assert len(fake_api.stored()) == 4


async def test_a_repeat_after_the_window_is_a_new_event(
    recorder: EventRecorder, fake_api: FakeApiServer, fake_time: FakeTime
) -> None:
    recorder.start()
    recorder.record(NODE, "Normal", "BaseOnline", "base-1 is online.")
    await _settled(recorder, fake_api, 1)
    fake_time.advance(301)
    recorder.record(NODE, "Normal", "BaseOnline", "base-1 is online.")
    await _settled(recorder, fake_api, 2)
    await recorder.stop()
    assert [r.method for r in fake_api.requests] == ["POST", "POST"]
    assert len(fake_api.stored()) == 2


async def test_repeats_waiting_in_the_queue_merge_into_one_request(
    recorder: EventRecorder, fake_api: FakeApiServer
) -> None:
    recorder.start()
    fake_api.gate.clear()  # the API server is slow: requests wait
    recorder.record(POD, "Warning", "InstallFailed", "boom")

    async def first_request_arrived() -> bool:
        return len(fake_api.requests) == 1

    await wait_for(first_request_arrived, timeout=5, what="the first request")
    for _ in range(5):
        recorder.record(POD, "Warning", "InstallFailed", "boom")
    fake_api.gate.set()
    await _settled(recorder, fake_api, 2)
    await recorder.stop()

    assert [r.method for r in fake_api.requests] == ["POST", "PATCH"]
    (stored,) = fake_api.stored()
    assert stored["count"] == 6


async def test_distinct_events_waiting_go_out_together_a_bounded_number_at_a_time(
    recorder: EventRecorder, fake_api: FakeApiServer
) -> None:
    """Was: one request at a time; a release on 1,000 bases dropped thousands of Events."""
    fake_api.gate.clear()  # the API server is slow: requests wait
    count = k8s_events.POSTS_IN_FLIGHT + 4
    for number in range(count):
        recorder.record(POD, "Normal", f"Reason{number}", "one of many")
    recorder.start()

    async def all_slots_busy() -> bool:
        return len(fake_api.requests) == k8s_events.POSTS_IN_FLIGHT

    await wait_for(all_slots_busy, timeout=5, what="requests in flight together")
    await asyncio.sleep(0.05)  # time to go wrong: the others wait for a slot
    assert len(fake_api.requests) == k8s_events.POSTS_IN_FLIGHT
    fake_api.gate.set()
    await _settled(recorder, fake_api, count)
    await recorder.stop()
    assert len(fake_api.stored()) == count


async def test_a_full_queue_drops_and_counts_and_says_so(
    api: client.ApiClient, fake_api: FakeApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = EventRecorder(api, queue_size=3)
    recorder.start()
    fake_api.gate.clear()
    recorder.record(POD, "Normal", "Reason0", "taken by the poster, then held")

    async def first_request_arrived() -> bool:
        return len(fake_api.requests) == 1

    await wait_for(first_request_arrived, timeout=5, what="the first request")
    with caplog.at_level(logging.WARNING, logger="module_controller.k8s_events"):
        began = time.monotonic()
        for number in range(1, 6):
            recorder.record(POD, "Normal", f"Reason{number}", "queued or dropped")
        assert time.monotonic() - began < 0.01, "a full queue does not block the caller"
    assert recorder.dropped == 2
    assert recorder.pending == 3
    assert "Dropped event Reason4 on pod shop/biz1-7d9f" in caplog.text
    assert caplog.text.count("Dropped event") == 1, "the warning is rate-limited"

    fake_api.gate.set()
    await _settled(recorder, fake_api, 4)
    await recorder.stop()
    assert sorted(event["reason"] for event in fake_api.stored()) == [
        "Reason0",
        "Reason1",
        "Reason2",
        "Reason3",
    ]


async def test_api_errors_are_logged_and_counted_not_raised(
    api: client.ApiClient, fake_api: FakeApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics()
    recorder = EventRecorder(api, metrics=metrics)
    recorder.start()
    fake_api.fail_with = 403
    with caplog.at_level(logging.WARNING, logger="module_controller.k8s_events"):
        recorder.record(POD, "Normal", "ModuleInstalled", "ok")
        await _settled(recorder, fake_api, 1)
    assert recorder.failed == 1
    assert "Could not post event ModuleInstalled on pod shop/biz1-7d9f: 403" in caplog.text
    exposition = metrics.exposition()[0].decode()
    assert 'module_controller_kubernetes_api_errors_total{resource="events",status="403"} 1.0' in (
        exposition
    )

    # The poster lives on: the next event goes through once the server accepts it.
    fake_api.fail_with = None
    recorder.record(POD, "Normal", "ModuleInstalled", "ok")
    await _settled(recorder, fake_api, 2)
    await recorder.stop()
    assert recorder.posted == 1
    assert len(fake_api.stored()) == 1


async def test_an_unreachable_api_server_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    api = await _api_client(free_port())  # nothing listens there
    try:
        recorder = EventRecorder(api)
        recorder.start()
        with caplog.at_level(logging.WARNING, logger="module_controller.k8s_events"):
            recorder.record(NODE, "Warning", "BaseGone", "base-1 is gone.")

            async def failed() -> bool:
                return recorder.failed == 1

            await wait_for(failed, timeout=15, what="the connection failure")
        await recorder.stop()
    finally:
        await api.close()
    assert "Could not post event BaseGone on node virtual-node-abc" in caplog.text


async def test_an_event_deleted_on_the_server_is_created_again(
    recorder: EventRecorder, fake_api: FakeApiServer
) -> None:
    recorder.start()
    recorder.record(POD, "Normal", "ModuleInstalled", "ok")
    await _settled(recorder, fake_api, 1)
    fake_api.events.clear()  # expired (events live an hour) or deleted by someone
    recorder.record(POD, "Normal", "ModuleInstalled", "ok")
    await _settled(recorder, fake_api, 3)
    await recorder.stop()
    assert [r.method for r in fake_api.requests] == ["POST", "PATCH", "POST"]
    (stored,) = fake_api.stored()
    assert stored["count"] == 1


async def test_stop_posts_what_is_queued_and_later_records_are_dropped(
    recorder: EventRecorder, fake_api: FakeApiServer
) -> None:
    for number in range(3):
        recorder.record(POD, "Normal", f"Queued{number}", "before start")
    recorder.start()
    await recorder.stop()
    assert len(fake_api.stored()) == 3
    recorder.record(POD, "Normal", "TooLate", "after stop")
    assert recorder.dropped == 1
    await asyncio.sleep(0.05)
    assert len(fake_api.requests) == 3


async def test_stop_gives_up_on_a_hung_api_server(
    recorder: EventRecorder, fake_api: FakeApiServer
) -> None:
    recorder.start()
    fake_api.gate.clear()
    recorder.record(POD, "Normal", "Hung", "the server never answers")
    began = time.monotonic()
    await recorder.stop(flush_timeout=0.5)
    assert time.monotonic() - began < 3


async def test_long_messages_and_names_fit_the_api(
    recorder: EventRecorder, fake_api: FakeApiServer
) -> None:
    long_pod = ObjectRef(kind="Pod", name="p" * 253, namespace="shop", uid="u")
    recorder.start()
    recorder.record(long_pod, "Warning", "InstallFailed", "at java.lang." * 500)
    await _settled(recorder, fake_api, 1)
    await recorder.stop()
    (event,) = fake_api.stored()
    assert len(event["metadata"]["name"]) <= 253
    assert len(event["message"]) == MAX_MESSAGE_LENGTH
    assert event["message"].endswith("...")


def test_an_object_ref_from_a_manifest() -> None:
    pod = json.loads(
        '{"apiVersion": "v1", "kind": "Pod",'
        ' "metadata": {"name": "m", "namespace": "ns", "uid": "u-1"}}'
    )
    assert ObjectRef.from_manifest(pod) == ObjectRef("Pod", "m", "ns", "u-1")
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n", "uid": "u-2"}}
    assert ObjectRef.from_manifest(node) == ObjectRef("Node", "n", None, "u-2")
    assert str(ObjectRef.from_manifest(node)) == "node n"
