"""A frozen broker is a broker fault, not the death of every base.

`kill -STOP` on the testbed's Mosquitto keeps every TCP connection open and answers
nothing: the operator must notice through its own probe, pause base liveness, say so on
/readyz, in a metric and in Events, and after `kill -CONT` carry on with the same nodes and
pods, having sent no install and no uninstall.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from kubernetes_asyncio import client

from module_controller.testbed.kube_reads import is_ready, ready_condition
from module_controller.testbed.process import free_port
from tests.e2e.conftest import BaseFactory, OperatorFactory
from tests.e2e.modules_support import deployment, manifest, wait_pods
from tests.e2e.test_observability import fetch, sample
from tests.private_broker import PrivateBroker
from tests.waiting import wait_for

pytestmark = pytest.mark.usefixtures("env_nodes_cleanup")

FREEZE_SECONDS = 20  # longer than BASE_DEAD_SECONDS below: every node would be deleted today
COMMANDS = ("installBiz", "uninstallBiz")


async def test_a_frozen_broker_deletes_no_node_and_touches_no_module(
    k8s_api: client.ApiClient,
    namespace: str,
    run_operator: OperatorFactory,
    start_base: BaseFactory,
    private_broker: PrivateBroker,
    test_env: str,
) -> None:
    core = client.CoreV1Api(k8s_api)
    apps = client.AppsV1Api(k8s_api)
    metrics_port, health_port = free_port(), free_port()
    operator = run_operator(
        broker=private_broker.info,
        METRICS_PORT=str(metrics_port),
        HEALTH_PORT=str(health_port),
        BASE_NOT_READY_SECONDS="8",
        BASE_DEAD_SECONDS="12",
        BROKER_PROBE_SECONDS="1",
        BROKER_SUSPECT_SECONDS="3",
        MQTT_KEEPALIVE_SECONDS="5",
    )
    bases = [await start_base(broker=private_broker.info) for _ in range(3)]
    node_names = [f"virtual-node-{base.identity}" for base in bases]
    body = deployment("frozen", test_env, 3, [("biz1", "1.0.0")], spread=True)
    await apps.create_namespaced_deployment(namespace, manifest(body))

    async def describe() -> str:
        lines = [f"{base.identity}: {[c.command for c in base.received()][-8:]}" for base in bases]
        lines.append(f"/readyz: {fetch(health_port, '/readyz')}")
        return "\n".join(lines) + "\n" + operator.tail(40)

    pods = await wait_pods(
        core,
        namespace,
        "app=frozen",
        lambda found: len(found) == 3 and all(is_ready(p) for p in found),
        "3 module pods Ready",
        timeout=90,
        diagnose=describe,
    )
    pod_uids = {p.metadata.uid for p in pods}
    node_uids = {name: (await core.read_node(name)).metadata.uid for name in node_names}
    sent_before = {
        base.identity: len([c for c in base.received() if c.command in COMMANDS]) for base in bases
    }

    problems: list[str] = []
    readyz_seen: list[str] = []

    async def watch_truth() -> None:
        """Every half second: every node there, Ready, the same; every pod Ready, the same.

        It runs through the freeze and after the thaw, so its sleep is the period of
        what it looks at, not a wait for something to happen."""
        while True:
            for name in node_names:
                nodes = await core.list_node(field_selector=f"metadata.name={name}")
                if not nodes.items or nodes.items[0].metadata.uid != node_uids[name]:
                    problems.append(f"node {name} deleted or replaced")
                    continue
                ready = ready_condition(nodes.items[0])
                if not is_ready(nodes.items[0]):
                    state = f"{ready.status}: {ready.message}" if ready else "without Ready"
                    problems.append(f"node {name} went {state}")
            found = (await core.list_namespaced_pod(namespace, label_selector="app=frozen")).items
            if {p.metadata.uid for p in found} != pod_uids:
                problems.append(f"pods replaced: {[p.metadata.name for p in found]}")
            problems.extend(f"pod {p.metadata.name} not Ready" for p in found if not is_ready(p))
            readyz_seen.append(fetch(health_port, "/readyz")[1])
            await asyncio.sleep(0.5)

    watcher = asyncio.create_task(watch_truth())
    try:
        private_broker.freeze()
        frozen_at = time.monotonic()

        async def suspect() -> str | None:
            status, text = fetch(health_port, "/readyz")
            return text if status != 200 and "no message through the broker for" in text else None

        text = await wait_for(
            suspect, timeout=8, what="/readyz to say the broker delivers nothing", diagnose=describe
        )
        assert "[-]mqtt" in text
        metrics = fetch(metrics_port, "/metrics")[1]
        assert sample(metrics, "module_controller_mqtt_broker_delivering") == 0
        assert (sample(metrics, "module_controller_mqtt_broker_suspect_total") or 0) >= 1
        # The broker stays frozen for FREEZE_SECONDS whatever happens: that is the fault.
        await asyncio.sleep(max(0.0, FREEZE_SECONDS - (time.monotonic() - frozen_at)))
        private_broker.thaw()

        async def ready_again() -> bool:
            return fetch(health_port, "/readyz")[0] == 200

        await wait_for(
            ready_again, timeout=30, what="/readyz 200 after the thaw", diagnose=describe
        )
        for base in bases:
            await base.wait_connected(timeout=30)
        # A few heartbeat periods after the thaw: still nothing may have changed. A
        # deliberate wait, for watch_truth to show that nothing happens.
        await asyncio.sleep(6)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)

    assert not problems, "\n".join(sorted(set(problems))) + "\n" + await describe()
    sent_after = {
        base.identity: len([c for c in base.received() if c.command in COMMANDS]) for base in bases
    }
    assert sent_after == sent_before, "the thaw must not reinstall or uninstall anything"
    events = await core.list_namespaced_event(
        "default", field_selector="reason=BrokerSuspect,source=module-controller"
    )
    warned = {e.involved_object.name for e in events.items}
    assert set(node_names) <= warned, f"BrokerSuspect Events on {warned}"
    assert any("no message through the broker" in text for text in readyz_seen)
