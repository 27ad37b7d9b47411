"""The runtime's wiring with fakes at the seams, for test_wiring*.py (fixture `wired` in
conftest.py): the tunnel's commands (`ModuleCommands` and `send_baseline`), the Event
recorder and the Kubernetes API (CoreV1Api, CoordinationV1Api) are fakes that record every
call in one ordered log."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

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
from module_controller.registry import BaseRegistry
from module_controller.settings import Settings
from module_controller.tunnels.events import (
    BaseHeartbeat,
    TunnelEvent,
)
from module_controller.vnodes import NodeSyncer
from tests.unit.modules_support import jar
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
        self.lease_misses = 0  # renewals of a Lease that is not there (answered 404)

    async def create_node(self, body: dict[str, Any], **_: Any) -> Any:
        name = body["metadata"]["name"]
        self.log.append(("create node", name))
        self.nodes[name] = body
        return {"metadata": {"name": name, "uid": f"uid-{name}"}}

    async def patch_node_status(self, name: str, body: dict[str, Any], **_: Any) -> None:
        ready = body["status"]["conditions"][0]["status"]
        self.log.append(("node status", f"{name} Ready={ready}"))

    async def patch_node(self, name: str, body: dict[str, Any]) -> None:
        self.log.append(("patch node", name))

    async def read_node(self, name: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": "1"}}

    async def delete_node(self, name: str) -> None:
        self.log.append(("delete node", name))
        self.nodes.pop(name, None)

    async def patch_namespaced_lease(self, name: str, namespace: str, body: Any, **_: Any) -> None:
        if name not in self.leases:
            self.lease_misses += 1
            raise ApiException(status=404)
        self.log.append(("renew lease", name))

    async def create_namespaced_lease(self, namespace: str, body: dict[str, Any], **_: Any) -> None:
        if body["metadata"]["name"] in self.leases:
            raise ApiException(status=409)
        self.leases.add(body["metadata"]["name"])
        self.log.append(("create lease", body["metadata"]["name"]))

    async def delete_namespaced_lease(self, name: str, namespace: str) -> None:
        self.leases.discard(name)

    async def patch_namespaced_pod_status(
        self, name: str, namespace: str, body: dict[str, Any], **_: Any
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
        return Tick(broker_silence=0.0, probe_returned=True, at=self.clock.now)


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
