"""The wiring of the data paths, driven as plain coroutines with fakes at the seams.

The parts are wired as the runtime wires them (inbox -> dispatcher -> registry and module
state -> node syncer / module sync / baseline answers), with the tunnel's commands
(`ModuleCommands` and `send_baseline`), the Event recorder and the Kubernetes API
(CoreV1Api, CoordinationV1Api) replaced by fakes that record every call in one ordered log.
Each test puts events in the inbox and waits, with a deadline, for what must come out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller.dispatcher import Dispatcher
from module_controller.inbox import Inbox, ModulePodChanged, NodeDeleted, Tick
from module_controller.modules.baseline import BaselineAnswers
from module_controller.modules.state import ModuleState
from module_controller.modules.sync import ModuleSync, RecordedPodEvents
from module_controller.observability.metrics import Metrics
from module_controller.observability.server import HealthChecks
from module_controller.protocol import BaseMetadata, BaseStatus, BizModel
from module_controller.protocol.states import BizState
from module_controller.registry import BaseRegistry
from module_controller.runtime import Runtime
from module_controller.settings import Settings
from module_controller.tunnels.events import (
    BaseHeartbeat,
    BaseInventory,
    BaselineQuery,
    BizOperationResult,
    BrokerConnected,
    TunnelEvent,
)
from module_controller.vnodes import NodeSyncer
from tests.unit.modules_support import install_reply, jar, simple
from tests.waiting import wait_for

IDENTITY = "base-1"
MODULE_LABEL = "module-controller.koupleless.io/component"

Call = tuple[str, str]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeCluster:
    """CoreV1Api and CoordinationV1Api as the parts use them; one ordered log of calls."""

    def __init__(self, log: list[Call]) -> None:
        self.log = log
        self.nodes: dict[str, dict[str, Any]] = {}
        self.leases: set[str] = set()

    async def create_node(self, body: dict[str, Any]) -> Any:
        name = body["metadata"]["name"]
        self.log.append(("create node", name))
        self.nodes[name] = body
        return SimpleNamespace(metadata=SimpleNamespace(uid=f"uid-{name}"))

    async def patch_node_status(self, name: str, body: dict[str, Any]) -> None:
        ready = body["status"]["conditions"][0]["status"]
        self.log.append(("node status", f"{name} Ready={ready}"))

    async def patch_node(self, name: str, body: dict[str, Any]) -> None:
        self.log.append(("patch node", name))

    async def read_node(self, name: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": "1"}}

    async def delete_node(self, name: str) -> None:
        self.log.append(("delete node", name))
        self.nodes.pop(name, None)

    async def patch_namespaced_lease(self, name: str, namespace: str, body: Any) -> None:
        if name not in self.leases:
            raise ApiException(status=404)
        self.log.append(("renew lease", name))

    async def create_namespaced_lease(self, namespace: str, body: dict[str, Any]) -> None:
        self.leases.add(body["metadata"]["name"])
        self.log.append(("create lease", body["metadata"]["name"]))

    async def delete_namespaced_lease(self, name: str, namespace: str) -> None:
        self.leases.discard(name)

    async def patch_namespaced_pod_status(
        self, name: str, namespace: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        ready = next(c for c in body["status"]["conditions"] if c["type"] == "Ready")
        self.log.append(("pod status", f"{name} Ready={ready['status']}"))
        return {"metadata": {"resourceVersion": "1000"}, "status": body["status"]}

    async def delete_namespaced_pod(self, name: str, namespace: str, **_: Any) -> None:
        self.log.append(("delete pod", name))


class FakeTunnel:
    """The commands out (ModuleCommands and the baseline answer), into the same log."""

    def __init__(self, log: list[Call]) -> None:
        self.log = log
        self.baselines: dict[str, list[str]] = {}

    async def install_biz(self, identity: str, biz: BizModel) -> None:
        self.log.append(("install", biz.key))

    async def uninstall_biz(self, identity: str, biz: BizModel) -> None:
        self.log.append(("uninstall", biz.key))

    async def query_all_biz(self, identity: str) -> None:
        self.log.append(("query inventory", identity))

    async def send_baseline(self, identity: str, modules: list[BizModel]) -> None:
        self.log.append(("baseline", identity))
        self.baselines[identity] = [m.key for m in modules]


class FakeRecorder:
    def __init__(self) -> None:
        self.recorded: list[tuple[str, str]] = []

    def record(self, involved: Any, type: str, reason: str, message: str) -> None:
        self.recorded.append((involved.name, reason))


class Wired:
    """The runtime's wiring, with fakes at the seams and a fake clock."""

    def __init__(self, api: client.ApiClient, deployments: list[dict[str, Any]]) -> None:
        self.log: list[Call] = []
        self.clock = Clock()
        self.settings = Settings(base_not_ready_seconds=20, base_dead_seconds=60)
        self.metrics = Metrics()
        self.health = HealthChecks(["kubernetes", "mqtt"])
        self.cluster = FakeCluster(self.log)
        self.tunnel = FakeTunnel(self.log)
        self.recorder = FakeRecorder()
        self.deployment_lists = 0
        self.registry = BaseRegistry(self.settings, clock=self.clock)
        self.state = ModuleState()
        self.state.listed = True
        self.nodes = NodeSyncer(self.settings, self.registry, api)
        self.nodes.core = self.cluster  # type: ignore[assignment]
        self.nodes.coordination = self.cluster  # type: ignore[assignment]
        self.sync = ModuleSync(
            self.settings,
            self.registry,
            self.state,
            self.tunnel,
            api,
            self.metrics,
            RecordedPodEvents(self.recorder),  # type: ignore[arg-type]
            clock=self.clock,
        )
        self.sync.core = self.cluster  # type: ignore[assignment]
        self.deployments = deployments
        self.baseline = BaselineAnswers(self.settings, self._list, self.tunnel.send_baseline)
        self.dispatcher = Dispatcher(
            self.settings,
            self.registry,
            self.state,
            self.nodes,
            self.sync,
            self.baseline,
            self.recorder,  # type: ignore[arg-type]
            self.health,
            self.metrics,
        )
        self.inbox = Inbox(100, self.metrics)
        self.running: asyncio.Task[None] | None = None

    async def _list(self) -> list[dict[str, Any]]:
        self.deployment_lists += 1
        await asyncio.sleep(0.05)  # a list takes a while: queries arriving meanwhile share it
        return self.deployments

    def start(self) -> None:
        self.nodes.start()
        self.sync.start()
        self.running = asyncio.create_task(self.dispatcher.run(self.inbox), name="dispatcher")

    async def stop(self) -> None:
        if self.running is not None:
            self.running.cancel()
            await asyncio.gather(self.running, return_exceptions=True)
        await self.dispatcher.stop()
        await self.baseline.stop()
        await self.sync.stop()
        await self.nodes.stop()

    async def say(self, *events: TunnelEvent | ModulePodChanged | NodeDeleted | Tick) -> None:
        for event in events:
            await self.inbox.put(event)

    async def until(self, what: str, seen: Callable[[], bool], timeout: float = 5) -> None:
        async def check() -> bool:
            return seen()

        async def diagnose() -> str:
            return "calls so far:\n" + "\n".join(f"  {kind}: {what}" for kind, what in self.log)

        await wait_for(check, timeout=timeout, what=what, diagnose=diagnose, interval=0.01)

    async def until_logged(self, *calls: Call) -> None:
        await self.until(f"{list(calls)} in the log", lambda: all(c in self.log for c in calls))

    def position(self, call: Call) -> int:
        return self.log.index(call)

    def tick(self) -> Tick:
        return Tick(broker_silence=0.0, probe_returned=True)


def heartbeat(identity: str = IDENTITY) -> BaseHeartbeat:
    metadata = BaseMetadata(identity=identity, name="base", version="1", cluster_name="default")
    return BaseHeartbeat(
        identity, BaseStatus(base_metadata=metadata, local_ip="10.0.0.9", local_host_name="h")
    )


def module_pod(
    name: str, version: str, node: str | None, *, ready: bool = False, created: str = "10:00"
) -> dict[str, Any]:
    conditions = [{"type": "Ready", "status": "True"}] if ready else []
    return {
        "metadata": {
            "namespace": "ns",
            "name": name,
            "uid": f"uid-{name}",
            "labels": {MODULE_LABEL: "module"},
            "creationTimestamp": f"2026-11-28T{created}:00Z",
            "resourceVersion": "10",
        },
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "biz1",
                    "image": jar("biz1", version),
                    "env": [{"name": "BIZ_VERSION", "value": version}],
                }
            ],
        },
        "status": {"phase": "Pending", "conditions": conditions},
    }


@pytest.fixture
async def wired() -> AsyncIterator[Wired]:
    async with client.ApiClient() as api:
        made = Wired(api, deployments=[])
        made.start()
        await made.say(BrokerConnected())
        try:
            yield made
        finally:
            await made.stop()


async def test_a_heartbeat_becomes_a_node_with_its_lease_and_an_inventory_query(
    wired: Wired,
) -> None:
    await wired.say(heartbeat())
    node = wired.registry.node_name_for(IDENTITY)
    await wired.until_logged(("create node", node), ("create lease", node))
    await wired.until_logged(("query inventory", IDENTITY))
    assert wired.position(("create node", node)) < wired.position(("create lease", node))
    assert (node, "BaseOnline") in wired.recorder.recorded


async def test_a_module_pod_is_installed_then_shown_ready_once_its_base_reports_it(
    wired: Wired,
) -> None:
    node = wired.registry.node_name_for(IDENTITY)
    await wired.say(heartbeat(), BaseInventory(IDENTITY, ()))
    await wired.say(ModulePodChanged("ADDED", module_pod("p1", "1", node)))
    await wired.until_logged(("install", "biz1:1"))
    await wired.say(BizOperationResult(IDENTITY, install_reply("biz1", "1")))
    # The answer asks for the inventory (from the base's worker, not the dispatcher).
    await wired.until(
        "a second inventory query", lambda: wired.log.count(("query inventory", IDENTITY)) >= 2
    )
    await wired.say(BaseInventory(IDENTITY, simple(("biz1:1", BizState.ACTIVATED))))
    await wired.until_logged(("pod status", "p1 Ready=True"))
    assert wired.position(("install", "biz1:1")) < wired.position(("pod status", "p1 Ready=True"))


async def test_a_rolling_update_takes_the_old_pod_out_of_ready_before_the_new_one_enters(
    wired: Wired,
) -> None:
    node = wired.registry.node_name_for(IDENTITY)
    await wired.say(heartbeat())
    await wired.say(
        BaseInventory(IDENTITY, simple(("biz1:1", BizState.ACTIVATED))),
        ModulePodChanged("ADDED", module_pod("old", "1", node, ready=True)),
    )
    old = module_pod("old", "1", node, ready=True)
    old["metadata"]["deletionTimestamp"] = "2026-11-28T11:00:00Z"
    old["metadata"]["resourceVersion"] = "11"
    await wired.say(
        ModulePodChanged("MODIFIED", old),
        ModulePodChanged("ADDED", module_pod("new", "2", node, created="11:00")),
    )
    await wired.until_logged(("install", "biz1:2"))
    await wired.say(
        BizOperationResult(IDENTITY, install_reply("biz1", "2")),
        BaseInventory(
            IDENTITY, simple(("biz1:1", BizState.DEACTIVATED), ("biz1:2", BizState.ACTIVATED))
        ),
    )
    await wired.until_logged(("pod status", "new Ready=True"), ("uninstall", "biz1:1"))
    old_out = wired.position(("pod status", "old Ready=False"))
    assert old_out < wired.position(("uninstall", "biz1:1"))
    assert old_out < wired.position(("pod status", "new Ready=True"))


async def test_a_dead_base_marks_its_pods_before_its_node_is_deleted(wired: Wired) -> None:
    node = wired.registry.node_name_for(IDENTITY)
    await wired.say(
        heartbeat(),
        BaseInventory(IDENTITY, simple(("biz1:1", BizState.ACTIVATED))),
        ModulePodChanged("ADDED", module_pod("p1", "1", node, ready=True)),
    )
    await wired.until_logged(("create node", node))
    wired.clock.now += 25  # past BASE_NOT_READY_SECONDS
    await wired.say(wired.tick())
    await wired.until_logged(("node status", f"{node} Ready=False"))
    wired.clock.now += 40  # past BASE_DEAD_SECONDS
    await wired.say(wired.tick())
    await wired.until_logged(("delete node", node))
    assert wired.position(("pod status", "p1 Ready=False")) < wired.position(("delete node", node))
    assert (node, "BaseGone") in wired.recorder.recorded
    assert IDENTITY not in wired.state.base_modules, "the gone base's modules are forgotten"


async def test_a_deleted_node_of_a_live_base_is_created_again(wired: Wired) -> None:
    node = wired.registry.node_name_for(IDENTITY)
    await wired.say(heartbeat())
    await wired.until_logged(("create node", node))
    await wired.say(NodeDeleted(node))
    await wired.until(
        "the node created a second time", lambda: wired.log.count(("create node", node)) == 2
    )


async def test_baseline_queries_arriving_together_share_one_deployment_list(
    wired: Wired,
) -> None:
    wired.deployments = [
        {
            "metadata": {"name": "biz1", "creationTimestamp": "2026-11-28T10:00:00Z"},
            "spec": {
                "template": {
                    "metadata": {"labels": {MODULE_LABEL: "module"}},
                    "spec": module_pod("t", "1", None)["spec"],
                }
            },
        }
    ]
    queries = [BaselineQuery(f"b{n}", heartbeat(f"b{n}").status.base_metadata) for n in range(5)]
    await wired.say(*queries, queries[0])  # b0 asks twice while its answer waits
    await wired.until("five baseline answers", lambda: len(wired.tunnel.baselines) == 5)
    assert wired.deployment_lists == 1
    assert wired.tunnel.baselines["b3"] == ["biz1:1"]
    assert wired.log.count(("baseline", "b0")) == 1


async def test_a_full_inbox_makes_the_reader_wait_and_loses_nothing() -> None:
    metrics = Metrics()
    inbox = Inbox(2, metrics)
    applied: list[str] = []
    await inbox.put(heartbeat("a"))
    await inbox.put(heartbeat("b"))
    blocked = asyncio.create_task(inbox.put(heartbeat("c")))
    await asyncio.sleep(0)
    assert not blocked.done(), "a full inbox must make the reader wait, not drop"
    text = metrics.exposition()[0].decode()
    assert "module_controller_event_queue_full_total 1.0" in text
    while len(applied) < 3:
        event = await inbox.get()
        assert isinstance(event, BaseHeartbeat)
        applied.append(event.identity)
        await asyncio.sleep(0)
    await blocked
    assert applied == ["a", "b", "c"]


async def test_no_part_holds_a_reference_back_to_the_runtime_or_the_dispatcher() -> None:
    """One-way wiring: the parts the runtime builds know only what they feed. A callback
    (a bound method, or a closure) counts as a reference to whatever it calls into."""
    async with client.ApiClient() as api:
        runtime = Runtime(Settings(), api)
    callers = (runtime, runtime.dispatcher)
    parts = [
        runtime.tunnel,
        runtime.registry,
        runtime.module_state,
        runtime.nodes,
        runtime.module_sync,
        runtime.baseline,
        runtime.dispatcher,
        runtime.inbox,
        runtime.events,
    ]
    for part in parts:
        for name, value in vars(part).items():
            reached = [value, getattr(value, "__self__", None)]
            reached += [cell.cell_contents for cell in getattr(value, "__closure__", None) or ()]
            for caller in callers:
                if caller is part:
                    continue
                assert all(item is not caller for item in reached), (
                    f"{type(part).__name__}.{name} refers back to {type(caller).__name__}"
                )
