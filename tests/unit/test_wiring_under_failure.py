"""The wiring under failure: a base retired while its worker is mid-plan, a slow API
server, a baseline asked for while a list is in flight, a stop during a list, a client
queue that overflows. Found by an adversarial review of the one-way data path; each test
failed on its first version."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from paho.mqtt.client import MQTTMessage

from module_controller.inbox import Inbox, ModulePodChanged
from module_controller.modules.baseline import BaselineAnswers
from module_controller.observability.metrics import Metrics
from module_controller.protocol import BizModel
from module_controller.protocol.states import BizState
from module_controller.settings import Settings
from module_controller.tunnels.decoder import DropReason
from module_controller.tunnels.events import (
    BaseInventory,
    BaselineQuery,
    BizOperationResult,
)
from module_controller.tunnels.mqtt import MqttTunnel
from tests.unit.modules_support import container, install_reply, simple
from tests.unit.wiring_support import IDENTITY, MODULE_LABEL, Wired, heartbeat, module_pod


def _other_module_pod(name: str, module: str, node: str) -> dict[str, Any]:
    body = module_pod(name, "1", node)
    body["metadata"]["uid"] = f"uid-{name}"
    body["spec"]["containers"] = [container(module, "1")]
    return body


async def _base_dies_while_its_worker_is_sending_an_install(wired: Wired) -> asyncio.Event:
    """p1 (biz1:1, already ACTIVATED on the base, not yet shown Ready), p2 (biz2:1) and p3
    (biz3:1) to install, on one base: the plan is 'install biz2:1 and biz3:1, then write p1
    Ready'. The first install publish is held; meanwhile the base dies (a tick past
    BASE_DEAD_SECONDS) and is retired. Returns the event that lets the held install go on."""
    node = wired.registry.node_name_for(IDENTITY)
    release = asyncio.Event()
    sent = asyncio.Event()

    async def slow_install(identity: str, biz: BizModel) -> None:
        wired.log.append(("install", biz.key))
        if not sent.is_set():
            sent.set()
            await release.wait()  # a slow broker (PUBACK late)

    wired.tunnel.install_biz = slow_install  # type: ignore[method-assign]
    await wired.say(
        heartbeat(),
        BaseInventory(IDENTITY, simple(("biz1:1", BizState.ACTIVATED))),
        ModulePodChanged("ADDED", module_pod("p1", "1", node)),
        ModulePodChanged("ADDED", _other_module_pod("p2", "biz2", node)),
        ModulePodChanged("ADDED", _other_module_pod("p3", "biz3", node)),
    )
    await asyncio.wait_for(sent.wait(), 5)
    wired.clock.now += 65  # past BASE_DEAD_SECONDS (60)
    await wired.say(wired.tick())
    await wired.until_logged(("delete node", node))
    return release


async def test_send_times_are_forgotten_with_their_base_even_mid_sync(
    wired: Wired,
) -> None:
    """Commit message: 'send-time bookkeeping is pruned and forgotten with its base'.
    forget_base runs while the base's worker is inside sync_base; the worker then records
    the send time of the install it is sending, for a base that is gone for good, and no
    later sync of that base prunes it (sync_base returns early for an unknown base)."""
    release = await _base_dies_while_its_worker_is_sending_an_install(wired)
    assert not wired.sync._install_sent.get(IDENTITY), "forget_base dropped them"
    release.set()
    await wired.until("the base's worker done", lambda: len(wired.sync.queue) == 0)
    assert IDENTITY not in wired.sync._install_sent, (
        f"send times of a gone base are kept for ever: {wired.sync._install_sent}"
    )


async def test_no_pod_is_written_ready_after_its_base_was_retired(wired: Wired) -> None:
    """sync.py: 'nothing here may write them Ready again' once the base is gone; base_gone's
    docstring: 'no pod on it shows Ready while its base no longer exists'. A sync that
    planned while the base was alive goes on writing its plan after the retirement
    (pre-existing in the old controller too; the refactor did not close it)."""
    release = await _base_dies_while_its_worker_is_sending_an_install(wired)
    node = wired.registry.node_name_for(IDENTITY)
    release.set()
    await wired.until("the base's worker done", lambda: len(wired.sync.queue) == 0)
    deleted = wired.position(("delete node", node))
    after = [call for call in wired.log[deleted:] if call == ("pod status", "p1 Ready=True")]
    assert not after, f"p1 written Ready after its node was deleted: {wired.log}"


async def test_a_baseline_answer_uses_a_list_made_after_the_query() -> None:
    """The old controller listed Deployments after each query arrived. Sharing a list that
    was already in flight answers a query with data older than the query: a Deployment
    created between the list's start and the query is missing from the answer."""
    deployments: list[dict[str, Any]] = []
    started = asyncio.Event()
    finish = asyncio.Event()

    async def list_deployments() -> list[dict[str, Any]]:
        snapshot = list(deployments)  # what the API server had when the list was made
        started.set()
        await finish.wait()
        return snapshot

    answers: dict[str, list[str]] = {}

    async def send(identity: str, modules: list[BizModel]) -> None:
        answers[identity] = [m.key for m in modules]

    settings = Settings()
    baseline = BaselineAnswers(settings, list_deployments, send)
    metadata = heartbeat("b0").status.base_metadata
    try:
        baseline.answer(BaselineQuery("b0", metadata))
        await asyncio.wait_for(started.wait(), 5)
        deployments.append(
            {
                "metadata": {"name": "biz1", "creationTimestamp": "2026-11-28T10:00:00Z"},
                "spec": {
                    "template": {
                        "metadata": {"labels": {MODULE_LABEL: "module"}},
                        "spec": module_pod("t", "1", None)["spec"],
                    }
                },
            }
        )
        # b1 asks after biz1's Deployment exists; the list in flight predates it.
        baseline.answer(BaselineQuery("b1", heartbeat("b1").status.base_metadata))
        await asyncio.sleep(0)
        finish.set()
        for _ in range(50):
            if len(answers) == 2:
                break
            await asyncio.sleep(0.01)
        assert answers.get("b1") == ["biz1:1"], f"b1 answered from a stale list: {answers}"
    finally:
        finish.set()
        await baseline.stop()


def _paho_message(n: int) -> MQTTMessage:
    message = MQTTMessage(mid=n, topic=b"koupleless_dev/b/base/heart")
    message.payload = b"{}"
    message.qos = 1
    return message


async def test_what_the_client_queue_cannot_hold_is_counted_acknowledged_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The broker's in-flight window keeps QoS 1 messages from overflowing the client queue
    (tests/integration/test_mqtt_tunnel_backpressure.py); QoS 0 floods, or an
    EVENT_QUEUE_SIZE below the broker's window, still can. What is discarded then is
    counted, acknowledged (an unacknowledged message would hold a slot of the broker's
    window for the rest of the connection) and logged once, not once per message."""
    settings = Settings(event_queue_size=10)
    tunnel = MqttTunnel(settings, Inbox(settings.event_queue_size, Metrics()).put)
    mqtt_client = tunnel._new_client()
    acknowledged: list[int] = []
    mqtt_client._client.ack = lambda mid, qos: acknowledged.append(mid)  # type: ignore[method-assign, assignment, return-value]
    with caplog.at_level(logging.WARNING):
        for n in range(1010):  # the reader is blocked on the full inbox: nothing is taken out
            mqtt_client._on_message(mqtt_client._client, None, _paho_message(n))
    assert tunnel.decoder.dropped[DropReason.CLIENT_QUEUE_FULL] == 1000
    # The ten taken were acknowledged on arrival (few waited: mqtt_incoming.py).
    assert acknowledged == list(range(1010)), "the discarded messages were not acked"
    lines = [r for r in caplog.records if "queue is full" in r.getMessage().lower()]
    assert len(lines) <= 2, f"{len(lines)} warning lines for 1000 discarded messages"


async def test_the_inventory_query_after_an_answer_does_not_wait_for_a_busy_worker(
    wired: Wired,
) -> None:
    """The old controller sent the inventory query as soon as an install answer came in.
    Now it goes from the base's worker: while that worker is inside a sync (here a status
    patch held by a slow API server), the query waits for the whole sync to end, and the
    pod goes Ready that much later. A slow API server now delays MQTT commands."""
    node = wired.registry.node_name_for(IDENTITY)
    release = asyncio.Event()
    patching = asyncio.Event()
    patch = wired.cluster.patch_namespaced_pod_status

    async def slow_patch(
        name: str, namespace: str, body: dict[str, Any], **_: Any
    ) -> dict[str, Any]:
        patching.set()
        await release.wait()
        return await patch(name, namespace, body)

    wired.cluster.patch_namespaced_pod_status = slow_patch  # type: ignore[method-assign]
    # Told NotReady before (its base went silent): it is told ModuleInstalling with the
    # install, not after a wait for the answer as a new pod is.
    told = module_pod("p1", "1", node)
    told["status"]["conditions"] = [{"type": "Ready", "status": "False", "reason": "BaseDown"}]
    try:
        await wired.say(
            heartbeat(),
            BaseInventory(IDENTITY, ()),
            ModulePodChanged("ADDED", told),
        )
        await wired.until_logged(("install", "biz1:1"))
        await asyncio.wait_for(patching.wait(), 5)  # the worker now waits on the API server
        queries = wired.log.count(("query inventory", IDENTITY))
        await wired.say(BizOperationResult(IDENTITY, install_reply("biz1", "1")))
        await wired.until(
            "the inventory query after the answer, while the base's worker waits on the API",
            lambda: wired.log.count(("query inventory", IDENTITY)) > queries,
            timeout=2,
        )
    finally:
        release.set()


async def test_baseline_stop_waits_for_the_deployment_list() -> None:
    """BaselineAnswers.stop cancels the shared list but does not wait for it: stop returns
    (and lifecycle._undo goes on to close the API client) while the list's request is
    still unwinding. Any listing that needs an await to clean up is left running."""
    started = asyncio.Event()
    cleaned_up = asyncio.Event()

    async def list_deployments() -> list[dict[str, Any]]:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.05)  # e.g. an HTTP connection being released
            cleaned_up.set()
        return []

    async def send(identity: str, modules: list[BizModel]) -> None:
        return None

    baseline = BaselineAnswers(Settings(), list_deployments, send)
    baseline.answer(BaselineQuery("b0", heartbeat("b0").status.base_metadata))
    await asyncio.wait_for(started.wait(), 5)
    await baseline.stop()
    stopped_clean = cleaned_up.is_set()
    await asyncio.wait_for(cleaned_up.wait(), 5)  # leave nothing running for the next test
    assert stopped_clean, "stop() returned while the Deployment list was still running"


async def test_a_bug_applying_one_event_costs_that_event_not_the_operator(
    wired: Wired, caplog: pytest.LogCaptureFixture
) -> None:
    real = wired.registry.heartbeat
    calls: list[str] = []

    def heartbeat_once_broken(identity: str, status: Any, tunnel: Any = "mqtt") -> list[str]:
        calls.append(identity)
        if len(calls) == 1:
            raise KeyError("a bug")
        return real(identity, status, tunnel)

    wired.registry.heartbeat = heartbeat_once_broken  # type: ignore[method-assign]
    await wired.say(heartbeat("b0"), heartbeat("b1"))
    node = wired.registry.node_name_for("b1")
    await wired.until_logged(("create node", node))
    assert wired.running is not None and not wired.running.done()
    assert any("Applying BaseHeartbeat failed" in r.getMessage() for r in caplog.records)
