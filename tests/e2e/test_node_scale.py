"""Fifty bases come online at the same moment: fifty Ready nodes, each with its own Lease."""

from __future__ import annotations

import pytest
from kubernetes_asyncio import client

from module_controller.simulator.base import SimulatedBase
from module_controller.simulator.config import BaseConfig, MqttSettings
from module_controller.simulator.fleet import Fleet
from module_controller.testbed.kube_reads import is_ready_and_untainted, ready_condition
from module_controller.testbed.mosquitto import BrokerInfo
from tests.e2e.conftest import BASE_HEARTBEAT_SECONDS, OperatorFactory
from tests.e2e.test_nodes import Cluster, taint_keys
from tests.waiting import wait_for

pytestmark = pytest.mark.usefixtures("env_nodes_cleanup")

BASES = 50
# Addresses of their own, away from the e2e fixture's 127.0.10.x and up.
FIRST_IP = "127.0.200.1"


def describe_node(node: client.V1Node) -> str:
    condition = ready_condition(node)
    state = f"{condition.status}/{condition.reason}" if condition else "no Ready condition"
    return f"{node.metadata.name}: Ready={state} taints={sorted(taint_keys(node))}"


async def test_fifty_bases_online_together_become_fifty_ready_nodes(
    k8s_api: client.ApiClient,
    run_operator: OperatorFactory,
    mqtt_broker: BrokerInfo,
    test_env: str,
) -> None:
    operator = run_operator()
    cluster = Cluster(k8s_api, operator)
    template = BaseConfig(
        name="scale",
        version="1.0.0",
        env=test_env,
        http_api=False,
        mqtt_heartbeat_period_s=BASE_HEARTBEAT_SECONDS,
        mqtt=MqttSettings(
            host=mqtt_broker.host,
            port=mqtt_broker.port,
            username=mqtt_broker.username,
            password=mqtt_broker.password,
        ),
    )
    fleet = Fleet(template, first_ip=FIRST_IP)
    selector = f"virtual-kubelet.koupleless.io/env={test_env}"
    try:
        await fleet.start(BASES)  # all at once: the fleet's start concurrency is 50
        by_name: dict[str, SimulatedBase] = {
            f"virtual-node-{base.identity}": base for base in fleet.bases
        }
        assert len(by_name) == BASES, "every base has an identity of its own"

        async def nodes() -> dict[str, client.V1Node]:
            listed = await cluster.core.list_node(label_selector=selector)
            return {node.metadata.name: node for node in listed.items}

        async def all_ready() -> dict[str, client.V1Node] | None:
            seen = await nodes()
            ready = {name for name, node in seen.items() if is_ready_and_untainted(node)}
            return seen if ready == set(by_name) and set(seen) == set(by_name) else None

        async def diagnose() -> str:
            seen = await nodes()
            absent = sorted(set(by_name) - set(seen))
            not_ready = [
                describe_node(n) for _, n in sorted(seen.items()) if not is_ready_and_untainted(n)
            ]
            strangers = sorted(set(seen) - set(by_name))
            connected = sum(1 for base in fleet.bases if base.connected)
            return "\n".join(
                [
                    f"{len(seen)} nodes, {len(seen) - len(not_ready)} Ready; "
                    f"{connected}/{BASES} bases connected to the broker",
                    f"absent ({len(absent)}): {absent}",
                    f"not Ready ({len(not_ready)}):",
                    *not_ready,
                    f"not ours: {strangers}",
                    f"operator alive={operator.alive}",
                    operator.tail(),
                ]
            )

        seen = await wait_for(
            all_ready, timeout=60, what=f"{BASES} Ready nodes", diagnose=diagnose, interval=1
        )

        # Each node carries its own base's address, and each has its own Lease (which the
        # operator may write just after its node).
        for name, node in seen.items():
            addresses = {a.type: a.address for a in node.status.addresses}
            assert addresses["InternalIP"] == by_name[name].config.ip, describe_node(node)

        async def lease_names() -> set[str]:
            leases = await cluster.coordination.list_namespaced_lease(
                "kube-node-lease", label_selector=selector
            )
            return {lease.metadata.name for lease in leases.items}

        async def every_lease() -> bool:
            return await lease_names() == set(by_name)

        async def missing_leases() -> str:
            names = await lease_names()
            return f"no Lease for {sorted(set(by_name) - names)}; strangers {names - set(by_name)}"

        await wait_for(
            every_lease, timeout=15, what=f"{BASES} Leases, one per node", diagnose=missing_leases
        )
        assert operator.alive, operator.tail()
    finally:
        await fleet.stop()
