"""ListWatch against a small stand-in for the API server's list and watch of node Leases and
module pods: what it reports, how it goes on after the server ends a watch, a 410 and an
error, what it asks of the server, what it reads, and what a list after a gap reports."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from kubernetes_asyncio import client

from module_controller.kube_watch import ListWatch
from tests.unit.kube_watch_support import (
    FakeApi,
    Reports,
    expired,
    hold,
    holding,
    lease_watch,
    pod,
    pod_watch,
    until,
    watching,
)


def lease(name: str, version: int, holder: str = "replica-a") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "resourceVersion": str(version)},
        "spec": {"holderIdentity": holder},
    }


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


async def test_it_reports_the_list_then_each_event_of_the_watch(
    watch_server: tuple[FakeApi, client.ApiClient],
) -> None:
    fake, api = watch_server
    fake.lists = [[lease("node-a", 90)]]
    fake.watches = [
        holding(
            {"type": "ADDED", "object": lease("node-b", 101)},
            {"type": "MODIFIED", "object": lease("node-a", 102, holder="replica-b")},
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "103"}}},
            {"type": "DELETED", "object": lease("node-b", 104)},
        )
    ]
    seen = Seen()
    async with watching(lease_watch(api, seen)):
        await seen.until(("gone", "node-b"))
    assert seen.log == [
        ("seen", "node-a@90"),
        ("seen", "node-b@101"),
        ("seen", "node-a@102"),
        ("gone", "node-b"),
    ]
    assert fake.watched_from == ["100"]  # from the list's version
    assert set(fake.selectors) == {"component=vnode-lease"}


async def test_a_watch_the_server_ends_goes_on_from_the_last_version_seen(
    watch_server: tuple[FakeApi, client.ApiClient],
) -> None:
    fake, api = watch_server
    fake.lists = [[]]
    fake.watches = [
        [
            {"type": "ADDED", "object": lease("node-a", 101)},
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "150"}}},
        ],
        holding({"type": "MODIFIED", "object": lease("node-a", 151)}),
    ]
    seen = Seen()
    async with watching(lease_watch(api, seen)):
        await seen.until(("seen", "node-a@151"))
    assert fake.watched_from == ["100", "150"]
    assert fake.listed == 1  # no list again for a watch that simply ended


async def test_an_expired_version_lists_again_and_reports_what_went_meanwhile(
    watch_server: tuple[FakeApi, client.ApiClient],
) -> None:
    fake, api = watch_server
    fake.lists = [[lease("node-a", 90), lease("node-b", 91)], [lease("node-b", 120)]]
    fake.watches = [[{"type": "ERROR", "object": {"kind": "Status", "code": 410}}], hold]
    seen = Seen()
    async with watching(lease_watch(api, seen)):
        await seen.until(("seen", "node-b@120"), ("gone", "node-a"))
    assert fake.listed == 2


async def test_an_error_answer_lists_again_after_a_pause(
    watch_server: tuple[FakeApi, client.ApiClient],
) -> None:
    fake, api = watch_server
    fake.lists = [[lease("node-a", 90)], [lease("node-a", 130)]]
    fake.watches = [500, hold]
    seen = Seen()
    async with watching(lease_watch(api, seen, retry_initial_seconds=0.05)) as task:
        await seen.until(("seen", "node-a@130"))
    assert not task.done() or task.cancelled()  # the failure did not end the watch
    assert fake.listed == 2


async def test_what_went_between_two_lists_is_reported_with_what_finds_it_again(
    watch_server: tuple[FakeApi, client.ApiClient],
) -> None:
    """A module pod deleted while the watch was down: the dispatcher needs its uid, the
    rollouts its namespace and labels; the second list no longer shows it at all."""
    fake, api = watch_server
    module_pod = {
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
    fake.lists = [[module_pod], []]
    fake.watches = [[{"type": "ERROR", "object": {"kind": "Status", "code": 410}}], hold]
    gone: list[Mapping[str, Any]] = []
    seen = Seen()
    report_gone = seen.gone

    async def remember(body: Mapping[str, Any]) -> None:
        gone.append(body)
        await report_gone(body)

    seen.gone = remember  # type: ignore[method-assign]
    async with watching(pod_watch(api, seen)):
        await seen.until(("gone", "biz1-abc"))
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
    watch_server: tuple[FakeApi, client.ApiClient],
) -> None:
    """The runtime lists module pods into its state before the dispatcher runs; the watch
    then goes on from that list (one list at start, not two)."""
    fake, api = watch_server
    fake.lists = [[lease("node-a", 90)]]
    fake.watches = [holding({"type": "MODIFIED", "object": lease("node-a", 101)})]
    first = Seen()
    seen = Seen()
    watch = lease_watch(api, seen)
    assert await watch.list_first(first.seen) == 1
    async with watching(watch):
        await seen.until(("seen", "node-a@101"))
    assert first.log == [("seen", "node-a@90")]
    assert seen.log == [("seen", "node-a@101")]
    assert fake.listed == 1 and fake.watched_from == ["100"]


# --- what the client asks of the server --------------------------------------------------


async def test_the_client_gives_a_watch_more_time_than_the_server_is_asked_to_take(
    watch_server: tuple[FakeApi, client.ApiClient],
) -> None:
    """The server ends a watch at timeoutSeconds; the client's own deadline must come later,
    or every quiet watch would end as a failure (a pause and a list) instead of going on."""
    fake, api = watch_server
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
    async with watching(watch):
        await until(lambda: asked and fake.watch_timeouts, "a watch at the server")
    assert asked[0]["timeout_seconds"] == 60
    assert asked[0]["_request_timeout"] >= 60 + 10
    assert fake.watch_timeouts == ["60"]


# --- what a watch reads ------------------------------------------------------------------


async def test_an_event_as_big_as_etcd_allows_is_read(
    watch_server: tuple[FakeApi, client.ApiClient],
) -> None:
    """aiohttp refuses a line longer than twice its read buffer (128 KiB by default); a pod
    may be 1.5 MiB (etcd's limit), and kubernetes-asyncio's session reads 2 MiB at a time."""
    fake, api = watch_server
    big = pod("a", 101)
    big["metadata"]["annotations"] = {"big": "x" * (3 << 19)}
    fake.watches = [[{"type": "MODIFIED", "object": big}], hold]
    reports = Reports()
    async with watching(pod_watch(api, reports)):
        await until(lambda: reports.log, "the big event")
    assert reports.log == ["seen a/uid-a@101"]
    assert fake.listed == 1


async def test_events_without_metadata_are_passed_over_and_bookmarks_move_the_version(
    watch_server: tuple[FakeApi, client.ApiClient],
) -> None:
    fake, api = watch_server
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
    async with watching(pod_watch(api, reports)):
        await until(lambda: reports.log, "the second watch's event")
    assert reports.log == ["seen a/uid-a@151"]
    assert fake.watched_from[:2] == ["100", "150"]
    assert fake.listed == 1


# --- what went while the watch was down --------------------------------------------------


async def test_an_object_deleted_while_down_is_reported_gone_once_with_its_metadata(
    watch_server: tuple[FakeApi, client.ApiClient],
) -> None:
    fake, api = watch_server
    fake.lists = [[pod("a", 90, uid="u-1", app="biz1")], [], []]
    fake.watches = [[expired()], [expired()]]
    reports = Reports()
    async with watching(pod_watch(api, reports, retry_initial_seconds=0.01)):
        await until(lambda: fake.listed == 3 and len(fake.watched_from) == 3, "a third list")
    assert reports.log == ["seen a/u-1@90", "gone a/u-1"]
    assert reports.bodies[1] == {
        "metadata": {"name": "a", "namespace": "default", "uid": "u-1", "labels": {"app": "biz1"}}
    }


async def test_an_object_made_again_under_its_name_while_down_is_reported_gone_then_seen(
    watch_server: tuple[FakeApi, client.ApiClient],
) -> None:
    """A pod deleted and made again (a new uid) between two lists: the old one is gone (its
    readers hold it by uid), and is said to be before the new one is seen (readers holding
    objects by name, as the node Leases are, must not lose the new one)."""
    fake, api = watch_server
    fake.lists = [[pod("a", 90, uid="u-1")], [pod("a", 130, uid="u-2")]]
    fake.watches = [[expired()]]
    reports = Reports()
    async with watching(pod_watch(api, reports)):
        await until(lambda: "seen a/u-2@130" in reports.log, "the second list")
    assert reports.log == ["seen a/u-1@90", "gone a/u-1", "seen a/u-2@130"]
