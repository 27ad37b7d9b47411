"""The EventRecorder against the testbed's real API server: Events are accepted, read back
the way `kubectl describe` finds them, and repeats are aggregated into one Event."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio import client

from module_controller.k8s_events import EventRecorder, ObjectRef
from tests.waiting import wait_for


@pytest.fixture
async def recorder(k8s_api: client.ApiClient) -> AsyncIterator[EventRecorder]:
    recorder = EventRecorder(k8s_api, instance="events-test")
    recorder.start()
    yield recorder
    await recorder.stop()


async def _events_about(core: client.CoreV1Api, namespace: str, uid: str) -> list[Any]:
    """Our Events about the object (the scheduler posts its own about unscheduled pods)."""
    listed = await core.list_namespaced_event(namespace, field_selector=f"involvedObject.uid={uid}")
    return [event for event in listed.items if event.source.component == "module-controller"]


async def test_events_on_a_pod_are_posted_aggregated_and_described(
    k8s_api: client.ApiClient, namespace: str, recorder: EventRecorder, kubectl: list[str]
) -> None:
    core = client.CoreV1Api(k8s_api)
    pod = await core.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="biz1"),
            spec=client.V1PodSpec(
                containers=[client.V1Container(name="biz1", image="file:///biz1.jar")],
                # Never scheduled: no node carries this label.
                node_selector={"events-test": "nowhere"},
            ),
        ),
    )
    involved = ObjectRef(kind="Pod", name="biz1", namespace=namespace, uid=pod.metadata.uid)

    recorder.record(involved, "Normal", "ModuleInstalled", "biz1:0.0.1 is installed.")
    for _ in range(3):
        recorder.record(involved, "Warning", "ModuleUninstallFailed", "biz1: stop failed")

    async def both_events() -> list[Any] | None:
        events = await _events_about(core, namespace, pod.metadata.uid)
        counts = {event.reason: event.count for event in events}
        return events if counts == {"ModuleInstalled": 1, "ModuleUninstallFailed": 3} else None

    async def diagnose() -> str:
        events = await _events_about(core, namespace, pod.metadata.uid)
        return (
            f"posted={recorder.posted} failed={recorder.failed} dropped={recorder.dropped}\n"
            + "\n".join(f"{e.reason} x{e.count}: {e.message}" for e in events)
        )

    events = await wait_for(
        both_events, timeout=15, what="two events on the pod", diagnose=diagnose
    )
    failed = next(e for e in events if e.reason == "ModuleUninstallFailed")
    assert failed.type == "Warning"
    assert failed.source.component == "module-controller"
    assert failed.reporting_component == "module-controller"
    assert failed.involved_object.kind == "Pod"
    assert failed.involved_object.name == "biz1"
    assert recorder.failed == 0

    # `kubectl describe pod` lists them (it finds Events by the involved object).
    described = subprocess.run(
        [*kubectl, "describe", "pod", "biz1", "-n", namespace],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "ModuleInstalled" in described
    assert "biz1: stop failed" in described

    # A later repeat, outside the merged batch, patches the same Event.
    recorder.record(involved, "Warning", "ModuleUninstallFailed", "biz1: stop failed")

    async def counted_four() -> bool:
        events = await _events_about(core, namespace, pod.metadata.uid)
        return [e.count for e in events if e.reason == "ModuleUninstallFailed"] == [4]

    await wait_for(counted_four, timeout=15, what="count 4 on one event", diagnose=diagnose)


async def test_events_on_a_node_go_to_the_default_namespace(
    k8s_api: client.ApiClient, recorder: EventRecorder, kubectl: list[str]
) -> None:
    core = client.CoreV1Api(k8s_api)
    name = f"virtual-node-events-{uuid.uuid4().hex[:8]}"
    uid = str(uuid.uuid4())
    node = ObjectRef(kind="Node", name=name, namespace=None, uid=uid)
    recorder.record(node, "Warning", "BaseNotReady", f"No heartbeat from {name} for 25s.")
    try:

        async def posted() -> list[Any]:
            return await _events_about(core, "default", uid)

        (event,) = await wait_for(
            posted,
            timeout=15,
            what="the node event in namespace default",
            diagnose=lambda: _recorder_state(recorder),
        )
        assert event.involved_object.kind == "Node"
        assert event.involved_object.namespace in (None, "")
        # As README's `kubectl get events -A --field-selector source=module-controller` finds
        # them.
        listed = subprocess.run(
            [
                *kubectl,
                "get",
                "events",
                "-A",
                "--field-selector",
                f"source=module-controller,involvedObject.name={name}",
                "-o",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        assert [item["reason"] for item in json.loads(listed)["items"]] == ["BaseNotReady"]
    finally:
        await core.delete_collection_namespaced_event(
            "default", field_selector=f"involvedObject.uid={uid}"
        )


async def _recorder_state(recorder: EventRecorder) -> str:
    return f"posted={recorder.posted} failed={recorder.failed} dropped={recorder.dropped}"
