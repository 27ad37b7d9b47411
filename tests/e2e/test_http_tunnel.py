"""The HTTP tunnel beside MQTT, end to end: one operator, bases on either tunnel.

The seed's scenarios over HTTP alone are in test_modules.py (parametrized by tunnel); here:
both tunnels at once (each base's commands on its own tunnel, also after an operator
restart), and an HTTP base whose Arklet API hangs while its heartbeats go on.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller.simulator.base import SimulatedBase
from module_controller.testbed.kube_reads import is_ready, ready_condition
from module_controller.testbed.operator_process import OperatorProcess
from module_controller.vnode_manifest import TUNNEL_ANNOTATION, TUNNEL_PORT_LABEL
from tests.e2e.conftest import BASE_HEARTBEAT_SECONDS, BaseFactory, OperatorFactory, free_port
from tests.e2e.modules_support import deployment, manifest, modules_of, set_modules, wait_pods
from tests.waiting import wait_for

pytestmark = pytest.mark.usefixtures("env_nodes_cleanup")

COMMANDS = ("installBiz", "uninstallBiz")


def node_of(base: SimulatedBase) -> str:
    return f"virtual-node-{base.identity}"


def http_base_config(port: int) -> dict[str, Any]:
    return {
        "mqtt": None,
        "http_api": True,
        "http_heartbeat_endpoint": f"http://127.0.0.1:{port}",
        "http_heartbeat_period_s": BASE_HEARTBEAT_SECONDS,
    }


def commands(base: SimulatedBase) -> list[tuple[str, str]]:
    """(transport, command) of every install and uninstall the base received."""
    return [(c.transport, c.command) for c in base.received() if c.command in COMMANDS]


def describe(bases: list[SimulatedBase], operator: OperatorProcess) -> Any:
    async def diagnosis() -> str:
        lines = [f"{node_of(b)}: {modules_of(b)} {commands(b)}" for b in bases]
        return "\n".join([*lines, operator.tail(40)])

    return diagnosis


async def test_mqtt_and_http_bases_under_one_operator_each_on_its_own_tunnel(
    k8s_api: client.ApiClient,
    namespace: str,
    run_operator: OperatorFactory,
    start_base: BaseFactory,
    test_env: str,
) -> None:
    port = free_port()
    settings = {
        "ENABLE_MQTT_TUNNEL": "true",
        "ENABLE_HTTP_TUNNEL": "true",
        "HTTP_TUNNEL_LISTEN_PORT": str(port),
        "INVENTORY_POLL_SECONDS": "3",
    }
    operator = run_operator(None, **settings)
    mqtt_bases = [await start_base() for _ in range(2)]
    http_bases = [await start_base(**http_base_config(port)) for _ in range(2)]
    bases = mqtt_bases + http_bases
    diagnose = describe(bases, operator)
    core = client.CoreV1Api(k8s_api)
    apps = client.AppsV1Api(k8s_api)

    async def nodes_ready() -> bool:
        for base in bases:
            try:
                node = await core.read_node(node_of(base))
            except ApiException:
                return False
            if not is_ready(node):
                return False
        return True

    await wait_for(nodes_ready, timeout=40, what="every base's node Ready", diagnose=diagnose)
    for base in bases:
        node = await core.read_node(node_of(base))
        kind = "http" if base in http_bases else "mqtt"
        assert node.metadata.annotations[TUNNEL_ANNOTATION] == kind
        if kind == "http":
            assert node.metadata.labels[TUNNEL_PORT_LABEL] == str(base.port)

    body = deployment("mixed", test_env, 4, [("biz1", "1.0.0")], spread=True)
    await apps.create_namespaced_deployment(namespace, manifest(body))

    def all_ready(version: str) -> Any:
        def check(pods: list[client.V1Pod]) -> bool:
            live = [p for p in pods if p.metadata.deletion_timestamp is None]
            return (
                len(pods) == 4
                and all(is_ready(p) for p in live)
                and all(modules_of(b).get(f"biz1:{version}") == "ACTIVATED" for b in bases)
            )

        return check

    await wait_pods(core, namespace, "app=mixed", all_ready("1.0.0"), "4 pods Ready", 60, diagnose)
    set_modules(body["spec"]["template"], [("biz1", "2.0.0")])
    await apps.replace_namespaced_deployment("mixed", namespace, manifest(body))
    await wait_pods(core, namespace, "app=mixed", all_ready("2.0.0"), "2.0.0 Ready", 90, diagnose)
    for base in mqtt_bases:
        assert {t for t, _ in commands(base)} == {"mqtt"}, commands(base)
    for base in http_bases:
        assert {t for t, _ in commands(base)} == {"http"}, commands(base)

    # A restarted operator reads each base's tunnel back from its node and sends nothing.
    sent_before = {base.identity: len(commands(base)) for base in bases}
    operator.stop()
    restarted = run_operator(None, **settings)
    polled_after = max((c.at for b in bases for c in b.received("queryAllBiz")), default=0.0)

    async def everyone_polled_twice() -> bool:
        return all(
            sum(1 for c in b.received("queryAllBiz") if c.at > polled_after) >= 2 for b in bases
        )

    await wait_for(
        everyone_polled_twice,
        timeout=40,
        what="two inventory polls of every base by the restarted operator",
        diagnose=describe(bases, restarted),
    )
    for base in bases:
        wanted = "http" if base in http_bases else "mqtt"
        polls = {c.transport for c in base.received("queryAllBiz") if c.at > polled_after}
        assert polls == {wanted}, (node_of(base), polls)
        assert len(commands(base)) == sent_before[base.identity], commands(base)
    await apps.delete_namespaced_deployment("mixed", namespace)


async def test_an_http_base_whose_arklet_api_hangs_goes_not_ready_and_comes_back(
    k8s_api: client.ApiClient,
    run_operator: OperatorFactory,
    start_base: BaseFactory,
) -> None:
    port = free_port()
    operator = run_operator(
        ENABLE_HTTP_TUNNEL="true",
        ENABLE_MQTT_TUNNEL="false",
        HTTP_TUNNEL_LISTEN_PORT=str(port),
        ARKLET_HTTP_TIMEOUT_SECONDS="1",
    )
    base = await start_base(**http_base_config(port))
    core = client.CoreV1Api(k8s_api)
    diagnose = describe([base], operator)

    async def condition() -> Any:
        try:
            return ready_condition(await core.read_node(node_of(base)))
        except ApiException:
            return None

    async def ready() -> bool:
        found = await condition()
        return found is not None and found.status == "True"

    await wait_for(ready, timeout=30, what="the HTTP base's node Ready", diagnose=diagnose)
    heartbeats_before = base.faults.heartbeats_stopped
    base.faults.http_api_frozen = True

    async def not_ready_for_its_api() -> bool:
        found = await condition()
        return found is not None and found.status == "False" and "Arklet" in found.message

    await wait_for(
        not_ready_for_its_api,
        timeout=30,
        what="the node NotReady because the base's Arklet API does not answer",
        diagnose=diagnose,
    )
    found = await condition()
    assert f"{base.config.ip}:{base.port}" in found.message, found.message
    assert heartbeats_before is False  # it was beating all along
    base.faults.http_api_frozen = False
    await wait_for(ready, timeout=30, what="the node Ready again", diagnose=diagnose)
