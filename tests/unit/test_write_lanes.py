"""A slow API server delays pod status writes, never a command: not another base's, not
one for the same base. The writes still land in the seed's order, once each, a bounded
number at a time, and a failed one is tried again."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller.modules import sync as module_sync
from module_controller.modules import write_lanes
from module_controller.modules.state import ModuleState
from module_controller.modules.status import is_ready
from module_controller.modules.sync import ModuleSync
from module_controller.observability.metrics import Metrics
from module_controller.protocol import BaseMetadata, BaseStatus, BizModel
from module_controller.protocol.states import BizState
from module_controller.registry import BaseRegistry
from module_controller.settings import Settings
from module_controller.shards.gate import SoleOwner
from tests.unit.modules_support import NEWER, pod, simple
from tests.waiting import wait_for

# More bases waiting on a write than the module sync has workers (8).
SLOW_BASES = 12


class Hold(SoleOwner):
    """The owner gate: whether this replica holds the bases (a hand-over or a fence
    switches it off, a lost race or a settle that timed out back on). The module sync
    asks only `holds`."""

    def __init__(self) -> None:
        self.holding = True

    def holds(self, node_name: str) -> bool:
        return self.holding


class StuckApi:
    """The tunnel and the API server: commands go out at once; every pod status write
    waits until `release` is set, or its pod is let through (`let`). `log` keeps what
    was sent and when a write ended."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, str]] = []
        self.writing: set[str] = set()  # pods whose write is in flight
        self.gates: dict[str, asyncio.Event] = {}
        self.in_flight = 0
        self.peak = 0
        self.release = asyncio.Event()
        self.refusals = 0  # the next so many writes fail with a 500

    async def install_biz(self, identity: str, biz: BizModel) -> None:
        self.log.append(("install", identity, biz.key))

    async def uninstall_biz(self, identity: str, biz: BizModel) -> None:
        self.log.append(("uninstall", identity, biz.key))

    async def query_all_biz(self, identity: str) -> None:
        pass

    async def delete_namespaced_pod(self, name: str, namespace: str, **_: Any) -> None:
        self.log.append(("delete", name, ""))

    async def patch_namespaced_pod_status(
        self, name: str, namespace: str, body: dict[str, Any], **_: Any
    ) -> dict[str, Any]:
        shown = "Ready" if is_ready(body["status"]) else "NotReady"
        self.log.append(("write", name, shown))
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        self.writing.add(name)
        gate = self.gates.setdefault(name, asyncio.Event())
        waits = [asyncio.ensure_future(self.release.wait()), asyncio.ensure_future(gate.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
            self.in_flight -= 1
            self.writing.discard(name)
            gate.clear()  # the pod's next write waits again
        if self.refusals:
            self.refusals -= 1
            raise ApiException(status=500, reason="etcd timed out")
        self.log.append(("written", name, shown))
        version = str(len(self.log) + 1)
        return {"metadata": {"resourceVersion": version}, "status": body["status"]}

    def let(self, name: str) -> None:
        self.gates.setdefault(name, asyncio.Event()).set()

    def index(self, entry: tuple[str, str, str]) -> int:
        return self.log.index(entry) if entry in self.log else len(self.log)

    def writes(self, name: str) -> list[str]:
        return [shown for kind, what, shown in self.log if kind == "write" and what == name]


class Events:
    def pod_event(self, *_: Any) -> None:
        pass


class Fleet:
    """SLOW_BASES bases whose pod's module is installed (a Ready write each), and base
    'new' with no pod yet."""

    def __init__(self, api: client.ApiClient) -> None:
        settings = Settings()
        self.registry = BaseRegistry(settings)
        self.registry.broker_up()
        self.state = ModuleState(listed=True)
        self.api = StuckApi()
        self.metrics = Metrics()
        self.hold = Hold()
        self.late = 0.0  # how far the clock is ahead of the monotonic one
        self.sync = ModuleSync(
            settings,
            self.registry,
            self.state,
            self.api,
            api,
            self.metrics,
            Events(),
            clock=lambda: time.monotonic() + self.late,
            owner=self.hold,
        )
        self.sync.core = self.api  # type: ignore[assignment]
        self.slow = [f"slow-{number}" for number in range(SLOW_BASES)]
        for identity in [*self.slow, "new"]:
            metadata = BaseMetadata(identity=identity, name="base", version="1", cluster_name="c")
            status = BaseStatus(base_metadata=metadata, local_ip="127.0.0.9", local_host_name="h")
            self.registry.heartbeat(identity, status)
        for identity in self.slow:
            self.bind(f"pod-of-{identity}", identity, "biz1")
            self.state.set_inventory(identity, simple(("biz1:1", BizState.ACTIVATED)))
        self.state.set_inventory("new", ())

    def node(self, identity: str) -> str:
        return self.registry.bases[identity].node_name

    def bind(self, name: str, identity: str, module: str, **kind: Any) -> None:
        module_pod = pod(name, [(module, "1")], NEWER, **kind)
        module_pod.node_name = self.node(identity)
        self.state.add_pod(module_pod)

    def writes_begun(self) -> int:
        text = self.metrics.exposition()[0].decode()
        line = next(
            line
            for line in text.splitlines()
            if line.startswith("module_controller_pod_status_writes_total ")
        )
        return int(float(line.split()[1]))

    async def installed(self, identity: str, key: str) -> None:
        async def sent() -> bool:
            return ("install", identity, key) in self.api.log

        await wait_for(sent, timeout=5, what=f"the install of {key} on {identity}")


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    async with client.ApiClient() as api:
        made = Fleet(api)
        made.sync.start()
        try:
            yield made
        finally:
            made.api.release.set()
            await made.sync.stop()


async def writing(fleet: Fleet, count: int) -> None:
    async def begun() -> bool:
        return fleet.api.in_flight >= count

    await wait_for(begun, timeout=5, what=f"{count} status write(s) in flight")


async def writing_only(fleet: Fleet, names: set[str]) -> None:
    """Wait until exactly `names` are being written, then a little (time to go wrong)."""

    async def only() -> bool:
        return fleet.api.writing == names

    await wait_for(only, timeout=5, what=f"only {sorted(names)} being written", interval=0.01)
    await asyncio.sleep(0.05)


async def planned(fleet: Fleet) -> None:
    async def idle() -> bool:
        return len(fleet.sync.queue) == 0

    await wait_for(idle, timeout=5, what="the module sync done planning", interval=0.01)


async def test_a_pod_bound_elsewhere_is_installed_while_bases_wait_on_their_writes(
    fleet: Fleet,
) -> None:
    """Was: the 8 workers each held by a base waiting on its Ready write; a pod bound to
    any other base waited that long (seconds at 1,000 bases) for its install."""
    for identity in fleet.slow:
        fleet.sync.base_changed(identity)
    await writing(fleet, SLOW_BASES)
    fleet.bind("bound-now", "new", "biz1")
    fleet.sync.base_changed("new")
    await fleet.installed("new", "biz1:1")
    assert not fleet.api.release.is_set() and fleet.api.in_flight == SLOW_BASES


async def test_a_pod_bound_to_a_base_is_installed_while_that_base_waits_on_a_write(
    fleet: Fleet,
) -> None:
    """Was: the base's worker waited for its other pod's Ready write, then installed."""
    identity = fleet.slow[0]
    fleet.sync.base_changed(identity)
    await writing(fleet, 1)
    fleet.bind("bound-now", identity, "biz2")
    fleet.sync.base_changed(identity)
    await fleet.installed(identity, "biz2:1")
    assert fleet.api.in_flight == 1, "the Ready write is still on its way"


async def test_a_write_on_its_way_is_not_sent_again_and_a_later_not_ready_lands_after_it(
    fleet: Fleet,
) -> None:
    """A pod being written Ready is deleted meanwhile: the next plan sees it Ready (as it
    will be), so it writes it NotReady after the Ready write lands, and uninstalls its
    module after that, never under a Ready pod."""
    identity = fleet.slow[0]
    name = f"pod-of-{identity}"
    fleet.sync.base_changed(identity)
    await writing(fleet, 1)
    for _ in range(2):  # planned again while the write is on its way
        fleet.sync.base_changed(identity)
        await planned(fleet)
    assert fleet.api.writes(name) == ["Ready"], "written once"
    [shown] = fleet.state.pods_on(fleet.node(identity))
    fleet.state.add_pod(dataclasses.replace(shown, deleting=True, deletion_seen_at=0.0))
    fleet.sync.base_changed(identity)
    await asyncio.sleep(0.1)  # time to go wrong: the plan waits for the Ready write
    assert fleet.api.writes(name) == ["Ready"], "the NotReady write waits for the Ready one"
    assert not [entry for entry in fleet.api.log if entry[0] == "uninstall"]
    fleet.api.release.set()
    await fleet.sync.settled(identity, fleet.node(identity))
    ordered = [entry for entry in fleet.api.log if entry[0] in ("written", "uninstall")]
    assert ordered == [
        ("written", name, "Ready"),
        ("written", name, "NotReady"),
        ("uninstall", identity, "biz1:1"),
    ]


async def test_status_writes_in_flight_stay_bounded_over_all_bases(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(module_sync, "STATUS_WRITES_IN_FLIGHT", 4)
    fleet.sync._write_slots = asyncio.Semaphore(module_sync.STATUS_WRITES_IN_FLIGHT)
    for identity in fleet.slow:
        fleet.sync.base_changed(identity)
    await writing(fleet, 4)
    await planned(fleet)  # every base's writes queued
    await asyncio.sleep(0.1)  # time to go wrong
    assert fleet.api.peak == fleet.api.in_flight == 4
    assert fleet.writes_begun() == 4, "the others wait for a slot"
    fleet.api.release.set()

    async def all_written() -> bool:
        return all(
            fleet.state.pods_on(fleet.node(identity))[0].observed_ready for identity in fleet.slow
        )

    await wait_for(all_written, timeout=5, what="every slow base's pod written Ready")
    assert fleet.api.peak == 4


async def test_a_write_that_waited_for_a_slot_is_not_sent_for_a_base_gone_meanwhile(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked when the write gets its slot, not only when it was queued: the wait may
    outlive the base, or this replica's hold of it (a hand-over, a fenced replica)."""
    fleet.sync._write_slots = asyncio.Semaphore(1)
    first, second = fleet.slow[:2]
    fleet.sync.base_changed(first)
    await writing(fleet, 1)
    fleet.sync.base_changed(second)
    await planned(fleet)
    node = fleet.node(second)
    del fleet.registry.bases[second]  # gone while its write waited
    fleet.api.release.set()
    await fleet.sync.settled(second, node)
    assert fleet.api.writes(f"pod-of-{first}") == ["Ready"]
    assert fleet.api.writes(f"pod-of-{second}") == []


async def test_a_failed_write_is_planned_again_after_a_back_off(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(write_lanes, "RETRY_INITIAL_SECONDS", 0.2)
    identity = fleet.slow[0]
    name = f"pod-of-{identity}"
    fleet.api.refusals = 1
    fleet.api.release.set()
    fleet.sync.base_changed(identity)

    async def written() -> bool:
        return fleet.state.pods_on(fleet.node(identity))[0].observed_ready

    await wait_for(written, timeout=5, what="the Ready write, tried again")
    assert fleet.api.writes(name) == ["Ready", "Ready"]
    errors = 'module_controller_kubernetes_api_errors_total{resource="pods/status",status="500"}'
    assert f"{errors} 1.0" in fleet.metrics.exposition()[0].decode(), "counted once"


# --- a lost hold, a stop, a slow lane: what the adversary found ------------------------


async def test_a_going_down_phase_cut_short_by_a_lost_hold_uninstalls_only_after_all_written(
    fleet: Fleet,
) -> None:
    """Three leaving pods are written NotReady, two slots for them. The hold is lost while
    the third waits for its slot (it is skipped), and comes back before the second
    lands. Was: the uninstall went out with the third pod still Ready."""
    fleet.sync._write_slots = asyncio.Semaphore(2)
    leaving = ["o1", "o2", "o3"]
    for name in leaving:
        fleet.bind(name, "new", "biz1", deleting=True, deletion_seen_at=0.0, ready=True)
    fleet.state.set_inventory("new", simple(("biz1:1", BizState.ACTIVATED)))
    fleet.sync.base_changed("new")
    await writing(fleet, 2)
    first, second = sorted(fleet.api.writing)
    [third] = set(leaving) - {first, second}
    fleet.hold.holding = False  # a hand-over begins
    fleet.api.let(first)  # the third gets the slot: skipped, the base is not held
    await writing_only(fleet, {second})
    fleet.hold.holding = True  # the hand-over's settle timed out: still ours
    fleet.api.release.set()

    async def uninstalled() -> bool:
        return ("uninstall", "new", "biz1:1") in fleet.api.log

    await wait_for(uninstalled, timeout=5, what="the uninstall of biz1")
    assert fleet.api.index(("written", third, "NotReady")) < fleet.api.index(
        ("uninstall", "new", "biz1:1")
    ), f"biz1 uninstalled while {third} still showed Ready: {fleet.api.log}"


async def test_a_write_cut_short_by_a_lost_hold_is_written_when_the_hold_comes_back(
    fleet: Fleet,
) -> None:
    """Was: the skipped write's pod looked written (the lane's other write was still in
    flight), so the plan made when the hold came back left it, and nothing looked at
    the base again."""
    fleet.sync._write_slots = asyncio.Semaphore(2)
    for name in ("a", "b", "c"):
        fleet.bind(name, "new", "biz1")
    fleet.state.set_inventory("new", simple(("biz1:1", BizState.ACTIVATED)))
    fleet.sync.base_changed("new")
    await writing(fleet, 2)
    first, second = sorted(fleet.api.writing)
    [third] = {"a", "b", "c"} - {first, second}
    fleet.hold.holding = False
    fleet.api.let(first)
    await writing_only(fleet, {second})
    assert fleet.api.writes(third) == [], "skipped: the base was not held"
    fleet.hold.holding = True
    fleet.sync.base_changed("new")  # the hold is back: the base is planned again
    await planned(fleet)
    fleet.api.release.set()

    async def all_ready() -> bool:
        return all(p.observed_ready for p in fleet.state.pods_on(fleet.node("new")))

    await wait_for(all_ready, timeout=5, what=f"{third} written Ready after all")


async def test_stop_ends_every_lane_of_a_base_not_only_its_last(fleet: Fleet) -> None:
    identity = fleet.slow[0]
    fleet.sync.base_changed(identity)
    await writing(fleet, 1)
    fleet.bind("second", identity, "biz1")  # its Ready write queues a second lane
    fleet.sync.base_changed(identity)
    await planned(fleet)
    lanes = [t for t in asyncio.all_tasks() if t.get_name().startswith("status writes of")]
    assert len(lanes) == 2
    await fleet.sync.stop()
    assert all(lane.done() for lane in lanes), "a lane outlived stop()"


async def test_an_uninstall_that_waited_for_the_lane_counts_its_retry_from_when_it_was_sent(
    fleet: Fleet,
) -> None:
    """Was: stamped as sent when planned; after 6 s waiting for the base's lane, the
    next plan found it due again (retry after 5 s) and sent it twice in a row."""
    identity = fleet.slow[0]
    fleet.sync.base_changed(identity)
    await writing(fleet, 1)  # its pod's Ready write, stuck
    fleet.bind("leaving", identity, "old", deleting=True, deletion_seen_at=0.0)
    fleet.state.set_inventory(
        identity, simple(("biz1:1", BizState.ACTIVATED), ("old:1", BizState.ACTIVATED))
    )
    fleet.sync.base_changed(identity)  # plans the uninstall of old:1, waits for the lane
    await asyncio.sleep(0.05)
    fleet.late += 6  # the Ready write took 6 s
    fleet.sync.base_changed(identity)  # anything: the base is planned again after
    fleet.api.release.set()
    await fleet.sync.settled(identity, fleet.node(identity))
    await planned(fleet)
    assert fleet.api.log.count(("uninstall", identity, "old:1")) == 1, fleet.api.log
