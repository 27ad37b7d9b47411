"""End-to-end fixtures: the real operator process, simulated bases, a private env per test.

Each test gets its own ENV (MQTT topics `koupleless_<env>/...`, node label env=<env>), so
tests sharing the cluster and broker never see each other's bases or nodes.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller.simulator.base import SimulatedBase
from module_controller.simulator.config import BaseConfig, MqttSettings
from module_controller.testbed import process
from module_controller.testbed.mosquitto import BrokerInfo
from module_controller.testbed.operator_process import (
    OperatorProcess,
    operator_environment,
)
from tests.e2e.modules_scene import INVENTORY_POLL_SECONDS, ORPHAN_GRACE_SECONDS, Scene
from tests.e2e.rbac_support import Restricted, restricted_kubeconfig
from tests.private_broker import PrivateBroker

# Short timers so liveness tests take seconds; the bases beat every 2 s to match.
OPERATOR_TIMINGS = {
    "BASE_NOT_READY_SECONDS": "6",
    "BASE_DEAD_SECONDS": "12",
    "LEASE_RENEW_SECONDS": "5",
    "HEALTH_POLL_SECONDS": "3",
    "MQTT_RECONNECT_MAX_SECONDS": "2",
    "MQTT_KEEPALIVE_SECONDS": "5",
    "BROKER_PROBE_SECONDS": "1",
    "BROKER_SUSPECT_SECONDS": "3",
    "BASE_HEARTBEAT_SECONDS": "2",
    "REPLICA_LEASE_SECONDS": "6",
    "REPLICA_RENEW_DEADLINE_SECONDS": "4",
    "REPLICA_RETRY_SECONDS": "1",
}
BASE_HEARTBEAT_SECONDS = 2.0
OPERATOR_STOP_GRACE_SECONDS = 15.0

_ips = (f"127.0.{third}.{fourth}" for third in itertools.count(10) for fourth in range(1, 255))


class OperatorFactory(Protocol):
    def __call__(self, broker: BrokerInfo | None = None, **settings: str) -> OperatorProcess: ...


class BaseFactory(Protocol):
    async def __call__(
        self,
        *,
        name: str = "base",
        version: str = "1.1.1",
        broker: BrokerInfo | None = None,
        start: bool = True,
        **config: Any,
    ) -> SimulatedBase: ...


def free_port() -> int:
    """A port free now on all interfaces (the HTTP tunnel listens on all of them)."""
    return process.free_port("")


@dataclass
class Tunnel:
    """How one test's operator and bases talk: MQTT, MQTT with mutual TLS, or HTTP.

    `operator` goes into the operator's settings, `base` into each base's config; `broker`
    is the one both use (None: the session's)."""

    kind: str
    operator: dict[str, str] = field(default_factory=dict)
    base: dict[str, Any] = field(default_factory=dict)
    broker: BrokerInfo | None = None


TUNNELS = ("mqtt", "mqtt-tls", "http")


@pytest.fixture(scope="session")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerInfo]:
    """A broker whose second listener requires a client certificate (made with openssl)."""
    broker = PrivateBroker(tmp_path_factory.mktemp("tls-broker"), with_tls=True)
    try:
        yield broker.info
    finally:
        broker.stop()


@pytest.fixture
def tunnel(request: pytest.FixtureRequest) -> Tunnel:
    """The tunnel of a test, `mqtt` unless parametrized indirectly with another of TUNNELS."""
    kind = getattr(request, "param", "mqtt")
    if kind == "mqtt":
        return Tunnel(kind)
    if kind == "http":
        port = free_port()
        return Tunnel(
            kind,
            operator={
                "ENABLE_MQTT_TUNNEL": "false",
                "ENABLE_HTTP_TUNNEL": "true",
                "HTTP_TUNNEL_LISTEN_PORT": str(port),
                "ARKLET_HTTP_TIMEOUT_SECONDS": "3",
            },
            base={
                "mqtt": None,
                "http_api": True,
                "http_heartbeat_endpoint": f"http://127.0.0.1:{port}",
                "http_heartbeat_period_s": BASE_HEARTBEAT_SECONDS,
            },
        )
    if kind == "mqtt-tls":
        broker: BrokerInfo = request.getfixturevalue("tls_broker")
        assert broker.tls is not None and broker.tls_port is not None
        files = broker.tls
        return Tunnel(
            kind,
            operator={
                "MQTT_PORT": str(broker.tls_port),
                "MQTT_CA_PATH": str(files.ca),
                "MQTT_CLIENT_CRT_PATH": str(files.client_crt),
                "MQTT_CLIENT_KEY_PATH": str(files.client_key),
            },
            base={
                "mqtt": MqttSettings(
                    host=broker.host,
                    port=broker.tls_port,
                    username=broker.username,
                    password=broker.password,
                    ca_path=str(files.ca),
                    client_crt_path=str(files.client_crt),
                    client_key_path=str(files.client_key),
                )
            },
            broker=broker,
        )
    raise ValueError(f"unknown tunnel {kind!r}; one of {TUNNELS}")


@pytest.fixture
def test_env() -> str:
    """A private ENV for one test: its topics and nodes are its own."""
    return f"e2e{uuid.uuid4().hex[:8]}"


@pytest.fixture
def run_operator(
    kubeconfig: Path, mqtt_broker: BrokerInfo, test_env: str, tmp_path: Path
) -> Iterator[OperatorFactory]:
    started: list[OperatorProcess] = []

    def start(broker: BrokerInfo | None = None, **settings: str) -> OperatorProcess:
        """Started, not yet ready: each test waits for what it needs (a node, /readyz)."""
        environment = operator_environment(
            kubeconfig, test_env, broker or mqtt_broker, {**OPERATOR_TIMINGS, **settings}
        )
        operator = OperatorProcess(environment, tmp_path / f"operator-{len(started)}.log")
        operator.start()
        started.append(operator)
        return operator

    yield start
    for operator in started:
        operator.stop(OPERATOR_STOP_GRACE_SECONDS)


@pytest.fixture
async def start_base(mqtt_broker: BrokerInfo, test_env: str) -> AsyncIterator[BaseFactory]:
    bases: list[SimulatedBase] = []

    async def start(
        *,
        name: str = "base",
        version: str = "1.1.1",
        broker: BrokerInfo | None = None,
        start: bool = True,
        **config: Any,
    ) -> SimulatedBase:
        broker = broker or mqtt_broker
        settings = MqttSettings(
            host=broker.host, port=broker.port, username=broker.username, password=broker.password
        )
        config.setdefault("http_api", False)
        config.setdefault("mqtt_heartbeat_period_s", BASE_HEARTBEAT_SECONDS)
        config.setdefault("mqtt", settings)
        base = SimulatedBase(
            BaseConfig(name=name, version=version, env=test_env, ip=next(_ips), **config)
        )
        bases.append(base)
        if start:
            await base.start()
        return base

    yield start
    for base in bases:
        await base.stop()


@pytest.fixture
async def env_nodes_cleanup(k8s_api: client.ApiClient, test_env: str) -> AsyncIterator[None]:
    """Whatever a test leaves, its nodes (cluster-scoped) do not outlive it."""
    yield
    core = client.CoreV1Api(k8s_api)
    nodes = await core.list_node(label_selector=f"virtual-kubelet.koupleless.io/env={test_env}")
    for node in nodes.items:
        try:
            await core.delete_node(node.metadata.name)
        except ApiException as error:
            if error.status != 404:
                raise


@pytest.fixture
async def restricted(
    k8s_api: client.ApiClient, kubeconfig: Path, namespace: str, tmp_path: Path
) -> AsyncIterator[Restricted]:
    """A kubeconfig with only the shipped ClusterRole's rights (tests/e2e/rbac_support.py)."""
    async with restricted_kubeconfig(k8s_api, kubeconfig, namespace, tmp_path) as made:
        yield made


@pytest.fixture
async def scene(
    k8s_api: client.ApiClient,
    namespace: str,
    run_operator: OperatorFactory,
    start_base: BaseFactory,
    tunnel: Tunnel,
    request: pytest.FixtureRequest,
) -> Scene:
    """The module tests' scene (modules_scene.py): the operator, then the bases (three, or a
    test's `bases(n)`), every node Ready. Modules with a scene of their own (the rollouts',
    the module failures') override it."""
    marker = request.node.get_closest_marker("bases")
    count = marker.args[0] if marker else 3
    extra = request.node.get_closest_marker("operator_settings")
    operator = run_operator(
        tunnel.broker,
        ORPHAN_GRACE_SECONDS=str(ORPHAN_GRACE_SECONDS),
        INVENTORY_POLL_SECONDS=str(INVENTORY_POLL_SECONDS),
        **tunnel.operator,
        **(extra.kwargs if extra else {}),
    )
    bases = [await start_base(broker=tunnel.broker, **tunnel.base) for _ in range(count)]
    made = Scene(k8s_api, namespace, operator, bases)
    await made.nodes_ready()
    return made
