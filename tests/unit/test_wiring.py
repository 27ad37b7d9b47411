"""The wiring of the data paths, driven as plain coroutines with fakes at the seams.

The parts are wired as the runtime wires them (inbox -> dispatcher -> registry and module
state -> node syncer / module sync / baseline answers), with fakes at the seams
(tests/unit/wiring_support.py). Each test puts events in the inbox and waits, with a
deadline, for what must come out.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

import pytest
from kubernetes_asyncio import client

from module_controller.inbox import Inbox, ModulePodChanged, NodeDeleted
from module_controller.observability.metrics import Metrics
from module_controller.protocol.states import BizState
from module_controller.runtime import Runtime
from module_controller.settings import Settings
from module_controller.tunnels.events import (
    ArkletCallFailed,
    BaseHeartbeat,
    BaseInventory,
    BaselineQuery,
    BizOperationResult,
)
from tests.unit.modules_support import install_reply, simple
from tests.unit.wiring_support import IDENTITY, MODULE_LABEL, Wired, heartbeat, module_pod


async def test_a_heartbeat_becomes_a_node_with_its_lease_and_an_inventory_query(
    wired: Wired,
) -> None:
    await wired.say(heartbeat())
    node = wired.registry.node_name_for(IDENTITY)
    await wired.until_logged(("create node", node), ("create lease", node))
    await wired.until_logged(("query inventory", IDENTITY))
    assert wired.position(("create node", node)) < wired.position(("create lease", node))
    assert wired.cluster.lease_misses == 0  # a new node's Lease is created, not renewed first
    assert (node, "BaseOnline") in wired.recorder.recorded


async def test_a_lease_left_by_an_earlier_node_of_that_name_is_renewed(wired: Wired) -> None:
    node = wired.registry.node_name_for(IDENTITY)
    wired.cluster.leases.add(node)  # the earlier node's Lease, not yet garbage-collected
    await wired.say(heartbeat())
    await wired.until_logged(("create node", node), ("renew lease", node))
    assert ("create lease", node) not in wired.log


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


async def test_the_module_pods_gauge_is_counted_every_few_seconds_not_every_tick(
    wired: Wired,
) -> None:
    counted = 0
    count = wired.sync.pod_states

    def counting() -> Any:
        nonlocal counted
        counted += 1
        return count()

    wired.sync.pod_states = counting  # type: ignore[method-assign]
    for _ in range(5):  # a tick a second, as the runtime sends them
        wired.dispatcher.dispatch(wired.tick())
        wired.clock.now += 1
    assert counted == 1
    wired.dispatcher.dispatch(wired.tick())
    assert counted == 2


async def test_a_lease_made_while_its_node_is_deleted_goes_with_the_node(
    wired: Wired, caplog: pytest.LogCaptureFixture
) -> None:
    """A new node's Lease is written apart from the node sync: when the node is deleted
    while that write is in flight, the Lease must not outlive it, not even until the
    write's answer comes (an e2e test reads the Lease as soon as the node is gone)."""
    caplog.set_level(logging.INFO, logger="module_controller.vnodes")
    node = wired.registry.node_name_for(IDENTITY)
    create = wired.cluster.create_namespaced_lease
    writing, commit, answer = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def slow_create(namespace: str, body: dict[str, Any], **_: Any) -> None:
        writing.set()
        await commit.wait()
        await create(namespace, body)  # the API server has it now...
        await answer.wait()  # ...and says so only later

    def deleted_logged() -> bool:
        return any(f"Deleted node {node}" in r.getMessage() for r in caplog.records)

    wired.cluster.create_namespaced_lease = slow_create  # type: ignore[method-assign]
    await wired.say(heartbeat())
    await asyncio.wait_for(writing.wait(), 5)
    wired.clock.now += 70  # past BASE_NOT_READY_SECONDS and BASE_DEAD_SECONDS
    await wired.say(wired.tick())
    await wired.say(wired.tick())
    await wired.until_logged(("delete node", node))
    commit.set()
    await wired.until_logged(("create lease", node))  # it was made after all
    assert not deleted_logged(), "the node's deletion was done while its Lease was there"
    answer.set()
    await wired.until("the node's deletion done", deleted_logged)
    assert node not in wired.cluster.leases


async def test_liveness_is_judged_as_of_when_the_tick_was_made(wired: Wired) -> None:
    """A tick waits in the inbox behind what was read before it; a heartbeat read after it
    waits behind it. Judged when handled (here 10 s after it was made), the base had been
    silent past BASE_NOT_READY_SECONDS, and its node went NotReady with its heartbeat next
    in the queue."""
    node = wired.registry.node_name_for(IDENTITY)
    await wired.say(heartbeat())
    await wired.until_logged(("create node", node))
    made = wired.clock.now + wired.settings.base_not_ready_seconds - 5
    wired.clock.now = made + 10
    wired.dispatcher.dispatch(replace(wired.tick(), at=made))
    assert wired.registry.bases[IDENTITY].ready, wired.registry.bases[IDENTITY].not_ready_reason


async def test_pods_go_ready_again_when_the_arklet_api_of_an_http_base_answers_again(
    wired: Wired,
) -> None:
    """An HTTP base that beats while its Arklet API is silent goes NotReady with its pods;
    when the API answers again with the modules it had, the pods go Ready again. The
    inventory is the same as before, so only the base's readiness can bring them back
    (found by review of aa24ed4, which stopped planning again on an unchanged inventory)."""
    node = wired.registry.node_name_for(IDENTITY)
    beat = replace(heartbeat(), tunnel="http")
    listed = simple(("biz1:1", BizState.ACTIVATED))
    await wired.say(beat, BaseInventory(IDENTITY, listed, "http"))
    await wired.say(ModulePodChanged("ADDED", module_pod("p1", "1", node)))
    await wired.until_logged(("pod status", "p1 Ready=True"))
    record = wired.registry.bases[IDENTITY]
    await wired.say(ArkletCallFailed(IDENTITY, "queryAllBiz", "no answer within 5s"))
    await wired.until("the failure heard", lambda: record.arklet_failing_since is not None)
    for _ in range(2):  # it beats every 10 s; its API stays silent for 20 s
        wired.clock.now += 10
        await wired.say(beat)
        await wired.until("the beat heard", lambda: record.last_seen == wired.clock.now)
    wired.clock.now += 5
    await wired.say(wired.tick())
    await wired.until_logged(
        ("node status", f"{node} Ready=False"), ("pod status", "p1 Ready=False")
    )
    await wired.say(BaseInventory(IDENTITY, listed, "http"))
    await wired.until(
        "p1 written Ready again",
        lambda: wired.log.count(("pod status", "p1 Ready=True")) == 2,
    )
    assert wired.registry.bases[IDENTITY].ready
