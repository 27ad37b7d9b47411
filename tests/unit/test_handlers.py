"""The Kopf handlers are thin: called as plain coroutines, they only put events in the inbox.
So do the runtime's watches of module pods and nodes (kube_watch.ListWatch); the pod watch
tells its listeners too."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

import kopf
from kubernetes_asyncio import client

from module_controller.inbox import ModulePodChanged, NodeDeleted
from module_controller.operator_memo import OperatorMemo, operator_memo
from module_controller.runtime import Runtime
from module_controller.settings import Settings
from module_controller.vnode_manifest import node_manifest
from tests.unit.wiring_support import heartbeat

# Kopf's decorators retype the handlers for Kopf's calls; the test calls them as Kopf does.
Handler = Callable[..., Awaitable[None]]


def pod_body(component: str | None) -> dict[str, Any]:
    labels = {} if component is None else {Settings().module_label: component}
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": labels}}


def body_of(raw: dict[str, Any]) -> kopf.Body:
    return kopf.Body(cast(kopf.RawBody, raw))


async def test_a_module_pod_seen_or_gone_goes_into_the_inbox_and_to_the_listeners() -> None:
    async with client.ApiClient() as api:
        runtime = Runtime(Settings(), api)
        heard: list[Any] = []
        runtime.pod_listeners.append(heard.append)
        body = pod_body("module")
        await runtime.module_pods._seen(body)
        await runtime.module_pods._gone(body)
        assert runtime.inbox.get_nowait() == ModulePodChanged("MODIFIED", body)
        assert runtime.inbox.get_nowait() == ModulePodChanged("DELETED", body)
        assert heard == [body, body]


async def test_only_a_deleted_node_is_news() -> None:
    async with client.ApiClient() as api:
        runtime = Runtime(Settings(), api)
        node = {"metadata": {"name": "virtual-node-a"}}
        await runtime.vnode_watch._seen(node)
        await runtime.vnode_watch._gone(node)
        assert len(runtime.inbox) == 1
        assert runtime.inbox.get_nowait() == NodeDeleted("virtual-node-a")


def test_under_kopf_run_our_memo_lives_inside_kopfs_and_is_shared_by_its_copies() -> None:
    """`kopf run` hands every handler a shallow copy of its own kopf.Memo."""
    kopfs = kopf.Memo()
    ours = operator_memo(kopfs)
    assert operator_memo(kopfs) is ours
    per_object = kopf.Memo(kopfs)  # what Kopf makes for each object it sees
    assert operator_memo(per_object) is ours
    typed = OperatorMemo()
    assert operator_memo(typed) is typed


def test_no_handler_wants_the_diff_base_the_operator_does_not_keep() -> None:
    """lifecycle.NoDiffBase keeps no diff base: right only while every handler is an
    on.event one (an on.update, on.field, timer or daemon would see wrong diffs)."""
    import module_controller.handlers  # noqa: F401  (registers every handler)
    from module_controller.handlers.lifecycle import NoDiffBase

    registry = kopf.get_default_registry()
    assert registry._changing.get_all_handlers() == []
    assert registry._spawning.get_all_handlers() == []
    assert len(registry._watching.get_all_handlers()) >= 2  # the nodes, the rollouts
    body = body_of({"metadata": {"name": "p"}, "spec": {"x": 1}, "status": {"y": 2}})
    assert NoDiffBase().build(body=body) == {} and NoDiffBase().fetch(body=body) is None


async def test_the_rollout_controller_listens_to_the_pod_watch_while_it_runs() -> None:
    from module_controller.handlers import rollouts

    stop_rollouts = cast(Handler, rollouts.stop_rollouts)
    async with client.ApiClient() as api:
        runtime = Runtime(Settings(), api)
        memo = OperatorMemo(runtime=runtime)
        controller = rollouts.start_controller(memo)
        assert controller is not None
        assert runtime.pod_listeners == [controller.pod_event]
        await stop_rollouts(memo=memo)
        assert runtime.pod_listeners == []


async def test_another_replicas_node_tells_its_bases_memory_but_ours_does_not() -> None:
    """Only a base's owner hears its health (tunnels/mqtt_answers.py): a replica taking the
    base over must write the node with the memory it shows, not flap it to NODE_MEMORY."""
    async with client.ApiClient() as api:
        runtime = Runtime(Settings(), api)
        beat = heartbeat()
        runtime.registry.heartbeat(beat.identity, beat.status)
        name = runtime.registry.node_name_for(beat.identity)
        shown = {
            "metadata": {"name": name},
            "status": {"capacity": {"memory": "512Mi"}, "allocatable": {"memory": "409600Ki"}},
        }
        runtime.ownership.held_by_another = lambda node_name: False  # type: ignore[method-assign]
        await runtime.vnode_watch._seen(shown)  # ours (or nobody's yet): we write it
        record = runtime.registry.bases[beat.identity]

        def figures() -> tuple[int | None, int | None]:
            return record.memory_capacity_bytes, record.memory_allocatable_bytes

        assert figures()[0] is None
        runtime.ownership.held_by_another = lambda node_name: node_name == name  # type: ignore[method-assign]
        await runtime.vnode_watch._seen(shown)
        assert figures() == (512 << 20, 400 << 20)
        manifest = node_manifest(record, runtime.settings)
        assert manifest["status"]["capacity"]["memory"] == "524288Ki"
        await runtime.vnode_watch._seen({"metadata": {"name": name}, "status": {}})
        assert figures()[0] is None, "a node back at the default memory"
