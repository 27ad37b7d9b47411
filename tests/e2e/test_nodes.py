"""Bases become virtual Nodes, kept Ready by the real node-lifecycle controller, and go away.

The operator runs as its own process against the testbed; bases are simulated over the
real broker. Every wait has a deadline and prints the node, the bases and the operator log.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiomqtt
import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller.protocol import BaseMetadata, BaseStatus, encode, wrap
from module_controller.simulator.base import SimulatedBase
from module_controller.testbed import mosquitto, process, testbed
from module_controller.testbed.kube_reads import is_ready_and_untainted, ready_condition
from module_controller.testbed.mosquitto import BrokerInfo
from module_controller.testbed.operator_process import OperatorProcess
from tests.e2e.conftest import BaseFactory, OperatorFactory
from tests.waiting import wait_for

pytestmark = pytest.mark.usefixtures("env_nodes_cleanup")

NodeGetter = Callable[[str], Awaitable[client.V1Node | None]]


def node_name(base: SimulatedBase) -> str:
    return f"virtual-node-{base.identity}"


def taint_keys(node: client.V1Node) -> set[str]:
    return {f"{t.key}={t.value}:{t.effect}" for t in node.spec.taints or []}


class Cluster:
    """Reads for assertions and diagnoses."""

    def __init__(self, api: client.ApiClient, operator: OperatorProcess | None = None) -> None:
        self.core = client.CoreV1Api(api)
        self.coordination = client.CoordinationV1Api(api)
        self.operator = operator

    async def node(self, name: str) -> client.V1Node | None:
        try:
            return await self.core.read_node(name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    async def lease(self, name: str) -> client.V1Lease | None:
        try:
            return await self.coordination.read_namespaced_lease(name, "kube-node-lease")
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    async def describe(self, *names: str) -> str:
        lines = []
        for name in names:
            node = await self.node(name)
            if node is None:
                lines.append(f"node {name}: absent")
                continue
            ready = ready_condition(node)
            lease = await self.lease(name)
            lines.append(
                f"node {name}: uid={node.metadata.uid} "
                f"Ready={ready.status if ready else None}/{ready.reason if ready else None} "
                f"taints={sorted(taint_keys(node))} "
                f"lease={'absent' if lease is None else lease.spec.holder_identity}"
            )
        if self.operator is not None:
            lines.append(f"operator alive={self.operator.alive}")
            lines.append(self.operator.tail())
        return "\n".join(lines)

    async def wait_ready(self, name: str, timeout: float = 30) -> client.V1Node:
        """Ready, and schedulable: the lifecycle controller lifted its not-ready taint."""

        async def ready() -> client.V1Node | None:
            node = await self.node(name)
            return node if node is not None and is_ready_and_untainted(node) else None

        return await wait_for(
            ready,
            timeout=timeout,
            what=f"node {name} Ready",
            diagnose=lambda: self.describe(name),
        )

    async def wait_gone(self, name: str, timeout: float) -> None:
        async def gone() -> bool:
            return await self.node(name) is None

        await wait_for(
            gone, timeout=timeout, what=f"node {name} deleted", diagnose=lambda: self.describe(name)
        )

    async def wait_lease(self, name: str, timeout: float = 15) -> client.V1Lease:
        """The node's Lease, which the operator may write just after the Node."""
        return await wait_for(
            lambda: self.lease(name),
            timeout=timeout,
            what=f"the Lease of node {name}",
            diagnose=lambda: self.describe(name),
        )

    async def wait_lease_gone(self, name: str, timeout: float = 15) -> None:
        async def gone() -> bool:
            return await self.lease(name) is None

        await wait_for(
            gone,
            timeout=timeout,
            what=f"the Lease of node {name} deleted",
            diagnose=lambda: self.describe(name),
        )


async def test_a_base_becomes_a_ready_node_and_stays_ready(
    k8s_api: client.ApiClient,
    run_operator: OperatorFactory,
    start_base: BaseFactory,
    node_monitor_grace_period: int,
    test_env: str,
) -> None:
    cluster = Cluster(k8s_api, run_operator())
    base = await start_base(name="base", version="1.1.1", cluster_name="cluster-a")
    name = node_name(base)
    node = await cluster.wait_ready(name)

    labels = node.metadata.labels
    assert labels["base.koupleless.io/name"] == "base"
    assert labels["base.koupleless.io/version"] == "1.1.1"
    assert labels["base.koupleless.io/cluster-name"] == "cluster-a"
    assert labels["base.koupleless.io/host-name"] == base.config.resolved_host_name
    assert labels["kubernetes.io/hostname"] == name
    assert labels["virtual-kubelet.koupleless.io/component"] == "vnode"
    assert labels["virtual-kubelet.koupleless.io/env"] == test_env
    assert "schedule.koupleless.io/virtual-node=True:NoExecute" in taint_keys(node)
    addresses = {a.type: a.address for a in node.status.addresses}
    assert addresses["InternalIP"] == base.config.ip
    assert int(node.status.allocatable["pods"]) > 0
    lease = await cluster.wait_lease(name)
    assert lease.spec.lease_duration_seconds == 40

    # Several node-monitor grace periods: the lifecycle controller must never doubt it. A
    # deliberate stretch of time, looked at every 2 s, to show that nothing goes wrong.
    uid = node.metadata.uid
    until = time.monotonic() + 2.5 * node_monitor_grace_period
    while time.monotonic() < until:
        seen = await cluster.node(name)
        assert seen is not None and seen.metadata.uid == uid, await cluster.describe(name)
        condition = ready_condition(seen)
        assert condition is not None and condition.status == "True", await cluster.describe(name)
        assert not any("unreachable" in t or "not-ready" in t for t in taint_keys(seen)), (
            await cluster.describe(name)
        )
        await asyncio.sleep(2)


async def test_a_crashed_base_goes_not_ready_then_its_node_and_lease_are_deleted(
    k8s_api: client.ApiClient, run_operator: OperatorFactory, start_base: BaseFactory
) -> None:
    cluster = Cluster(k8s_api, run_operator())
    base = await start_base()
    name = node_name(base)
    await cluster.wait_ready(name)
    await base.crash()

    async def not_ready() -> bool:
        node = await cluster.node(name)
        condition = ready_condition(node) if node else None
        return condition is not None and condition.status == "False"

    await wait_for(
        not_ready,
        timeout=20,
        what=f"{name} NotReady after the crash",
        diagnose=lambda: cluster.describe(name),
    )
    node = await cluster.node(name)
    assert node is not None
    condition = ready_condition(node)
    assert condition is not None and condition.reason == "BaseSilent"
    assert base.identity in condition.message
    await cluster.wait_gone(name, timeout=20)
    await cluster.wait_lease_gone(name)


async def test_a_deactivated_heartbeat_deletes_the_node_promptly(
    k8s_api: client.ApiClient, run_operator: OperatorFactory, start_base: BaseFactory
) -> None:
    cluster = Cluster(k8s_api, run_operator())
    base = await start_base()
    name = node_name(base)
    await cluster.wait_ready(name)
    began = time.monotonic()
    await base.graceful_exit()
    await cluster.wait_gone(name, timeout=5)
    assert time.monotonic() - began < 5, "far sooner than the NotReady time"


async def test_a_base_restarted_with_a_new_identity_gets_a_new_node(
    k8s_api: client.ApiClient, run_operator: OperatorFactory, start_base: BaseFactory
) -> None:
    cluster = Cluster(k8s_api, run_operator())
    base = await start_base()
    old = node_name(base)
    await cluster.wait_ready(old)
    await base.restart(new_identity=True)
    new = node_name(base)
    assert new != old
    await cluster.wait_ready(new)
    await cluster.wait_gone(old, timeout=25)


async def test_a_node_deleted_by_hand_is_recreated_while_its_base_lives(
    k8s_api: client.ApiClient, run_operator: OperatorFactory, start_base: BaseFactory
) -> None:
    cluster = Cluster(k8s_api, run_operator())
    base = await start_base()
    name = node_name(base)
    first = await cluster.wait_ready(name)
    await cluster.core.delete_node(name)

    async def recreated() -> client.V1Node | None:
        node = await cluster.node(name)
        return node if node is not None and node.metadata.uid != first.metadata.uid else None

    await wait_for(
        recreated, timeout=20, what=f"{name} recreated", diagnose=lambda: cluster.describe(name)
    )
    await cluster.wait_ready(name)


async def test_a_broker_outage_longer_than_the_dead_time_deletes_no_node(
    k8s_api: client.ApiClient,
    run_operator: OperatorFactory,
    start_base: BaseFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    state_dir = tmp_path_factory.mktemp("private-broker")
    state = testbed.up(state_dir, with_cluster=False)
    assert state.broker is not None
    broker = state.broker
    try:
        cluster = Cluster(k8s_api, run_operator(broker=broker))
        bases = [await start_base(broker=broker) for _ in range(2)]
        names = [node_name(base) for base in bases]
        uids = {name: (await cluster.wait_ready(name)).metadata.uid for name in names}

        for record in state.processes:
            process.stop(record)
        # Longer than BASE_DEAD_SECONDS (12 s): silence the operator cannot interpret. A
        # deliberate stretch of time, looked at every second, to show no node is deleted.
        outage_until = time.monotonic() + 16
        while time.monotonic() < outage_until:
            for name in names:
                node = await cluster.node(name)
                assert node is not None, f"{name} deleted during the broker outage\n" + (
                    await cluster.describe(*names)
                )
            await asyncio.sleep(1)
        child, _ = process.start(
            "mosquitto", mosquitto.command(state_dir), state_dir / "logs" / "mosquitto-2.log"
        )
        try:
            process.wait_ready(
                child, _, process.ReadyProbe(lambda: mosquitto.accepts_connections(broker))
            )
            for base in bases:
                await base.wait_connected(timeout=30)
            for name in names:
                node = await cluster.wait_ready(name)
                assert node.metadata.uid == uids[name], "the node was replaced"
            # And the grace period after reconnecting does not delete them either: a deliberate
            # wait, past the operator's grace, to show that nothing happens.
            await asyncio.sleep(8)
            for name in names:
                node = await cluster.node(name)
                assert node is not None and node.metadata.uid == uids[name], await cluster.describe(
                    *names
                )
        finally:
            child.terminate()
            child.wait(timeout=10)
    finally:
        testbed.down(state_dir)


async def test_a_restarted_operator_adopts_its_nodes_and_drops_only_silent_ones(
    k8s_api: client.ApiClient, run_operator: OperatorFactory, start_base: BaseFactory
) -> None:
    first = run_operator(CLIENT_ID="first")
    cluster = Cluster(k8s_api, first)
    alive = await start_base()
    doomed = await start_base()
    alive_name, doomed_name = node_name(alive), node_name(doomed)
    alive_uid = (await cluster.wait_ready(alive_name)).metadata.uid
    await cluster.wait_ready(doomed_name)

    first.kill()
    await doomed.crash()
    second = run_operator(CLIENT_ID="second")
    cluster.operator = second
    await cluster.wait_gone(doomed_name, timeout=30)
    node = await cluster.node(alive_name)
    assert node is not None and node.metadata.uid == alive_uid, await cluster.describe(alive_name)

    async def renewed_by_second() -> bool:
        lease = await cluster.lease(alive_name)
        return lease is not None and lease.spec.holder_identity == "second"

    await wait_for(
        renewed_by_second,
        timeout=15,
        what="the new operator to renew the lease",
        diagnose=lambda: cluster.describe(alive_name),
    )


async def test_garbage_and_identity_floods_do_not_hurt_the_operator(
    k8s_api: client.ApiClient,
    run_operator: OperatorFactory,
    start_base: BaseFactory,
    mqtt_broker: BrokerInfo,
    test_env: str,
) -> None:
    operator = run_operator(MAX_BASES="3")
    cluster = Cluster(k8s_api, operator)
    base = await start_base()
    name = node_name(base)
    await cluster.wait_ready(name)

    root = f"koupleless_{test_env}"

    def attacker_client() -> aiomqtt.Client:
        return aiomqtt.Client(
            mqtt_broker.host,
            mqtt_broker.port,
            username=mqtt_broker.username,
            password=mqtt_broker.password,
        )

    async with attacker_client() as attacker:
        for payload in (b"{", b"\xff\xfe", b"[]", b'{"publishTimestamp":"x"}', b"x" * 2_000_000):
            await attacker.publish(f"{root}/{base.identity}/base/heart", payload, qos=1)
            await attacker.publish(f"{root}/{base.identity}/base/simpleBiz", payload, qos=1)
    async with attacker_client() as attacker:
        for number in range(20):
            identity = f"fake-{number}"
            status = BaseStatus(
                base_metadata=BaseMetadata(identity=identity, name="fake", version="6.6.6"),
                local_ip="127.0.9.9",
            )
            await attacker.publish(f"{root}/{identity}/base/heart", encode(wrap(status)), qos=1)

    async def capped() -> bool:
        nodes = await cluster.core.list_node(
            label_selector=f"virtual-kubelet.koupleless.io/env={test_env}"
        )
        return len(nodes.items) == 3

    await wait_for(
        capped, timeout=20, what="MAX_BASES=3 nodes", diagnose=lambda: cluster.describe(name)
    )
    # A deliberate wait: the floods are processed by now (the cap held), and a crash they
    # caused would show within a few seconds.
    await asyncio.sleep(3)
    assert operator.alive, operator.tail()
    nodes = await cluster.core.list_node(
        label_selector=f"virtual-kubelet.koupleless.io/env={test_env}"
    )
    assert len(nodes.items) == 3, "the cap held"
    await cluster.wait_ready(name)
    text = operator.log.read_text()
    assert "Dropped an MQTT message" in text
    assert "Refused base" in text
