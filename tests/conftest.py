"""Session-wide fixtures: the cluster, the broker, an API client and a namespace per test.

By default the tests start the project's own testbed (real etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and Mosquitto on loopback) and stop it at the end.
`--existing-kubeconfig PATH` targets a cluster that is already running instead, and
`--kind` a kind cluster through pytest-kind (which needs a Docker engine). The broker is
the testbed's own unless MQTT_BROKER, MQTT_PORT, MQTT_USERNAME and MQTT_PASSWORD are set.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from kubernetes_asyncio import client

from module_controller.kube import new_api_client
from module_controller.testbed import testbed
from module_controller.testbed.binaries import (
    KUBERNETES_VERSION,
    KUBERNETES_VERSION_VARIABLE,
    PINNED_KUBERNETES_VERSION,
    ensure_binaries,
)
from module_controller.testbed.mosquitto import BrokerInfo
from tests.private_broker import PrivateBroker
from tests.waiting import wait_for

# Shorter than Kubernetes' 50 s default so node-health tests finish sooner; the operator
# renews leases every 10 s, well inside it.
TEST_NODE_MONITOR_GRACE_PERIOD = 20


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("module-controller")
    group.addoption(
        "--existing-kubeconfig",
        default=os.environ.get("MODULE_CONTROLLER_TEST_KUBECONFIG"),
        metavar="PATH",
        help="run cluster tests against this cluster instead of starting the testbed",
    )
    group.addoption(
        "--kind",
        action="store_true",
        help="run cluster tests against a kind cluster made by pytest-kind (needs Docker)",
    )


def pytest_report_header(config: pytest.Config) -> str:
    # Which release the testbed runs: `./dev e2e-matrix` runs the suite on several.
    if KUBERNETES_VERSION == PINNED_KUBERNETES_VERSION:
        return f"testbed Kubernetes: v{KUBERNETES_VERSION} (pinned)"
    return f"testbed Kubernetes: v{KUBERNETES_VERSION} (from {KUBERNETES_VERSION_VARIABLE})"


def pytest_configure(config: pytest.Config) -> None:
    # A run stopped with SIGTERM (CI limits, `kill`) must still stop the testbed it started:
    # as an interrupt, session fixtures are torn down; as a bare signal, nothing would be.
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def _docker_engine_reachable() -> bool:
    if shutil.which("docker") is None:
        return False
    result = subprocess.run(["docker", "info"], capture_output=True, check=False)
    return result.returncode == 0


@pytest.fixture(scope="session")
def node_monitor_grace_period(request: pytest.FixtureRequest) -> int:
    """The cluster's node-monitor grace period (only known for the testbed)."""
    if request.config.getoption("--existing-kubeconfig") or request.config.getoption("--kind"):
        return testbed.DEFAULT_NODE_MONITOR_GRACE_PERIOD
    return TEST_NODE_MONITOR_GRACE_PERIOD


@pytest.fixture(scope="session")
def kubeconfig(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    node_monitor_grace_period: int,
) -> Iterator[Path]:
    existing = request.config.getoption("--existing-kubeconfig")
    if existing:
        yield Path(existing)
        return
    if request.config.getoption("--kind"):
        if not _docker_engine_reachable():
            pytest.skip("the kind layer needs a Docker engine and none is reachable here")
        from pytest_kind import KindCluster

        kind = KindCluster("module-controller-tests")
        kind.create()
        try:
            assert kind.kubeconfig_path is not None
            yield Path(kind.kubeconfig_path)
        finally:
            kind.delete()
        return
    state_dir = tmp_path_factory.mktemp("cluster")
    state = testbed.up(
        state_dir, with_broker=False, node_monitor_grace_period=node_monitor_grace_period
    )
    try:
        assert state.kubeconfig is not None
        yield Path(state.kubeconfig)
    finally:
        testbed.down(state_dir)


@pytest.fixture(scope="session")
def kubectl(kubeconfig: Path) -> Iterator[list[str]]:
    """argv prefix for the kubectl matching the cluster (the testbed's own build)."""
    binary = ensure_binaries().kubectl
    yield [str(binary), f"--kubeconfig={kubeconfig}"]


@pytest.fixture(scope="session")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerInfo]:
    names = ("MQTT_BROKER", "MQTT_PORT", "MQTT_USERNAME", "MQTT_PASSWORD")
    if all(os.environ.get(name) for name in names):
        yield BrokerInfo(
            host=os.environ["MQTT_BROKER"],
            port=int(os.environ["MQTT_PORT"]),
            username=os.environ["MQTT_USERNAME"],
            password=os.environ["MQTT_PASSWORD"],
        )
        return
    state_dir = tmp_path_factory.mktemp("broker")
    state = testbed.up(state_dir, with_cluster=False)
    try:
        assert state.broker is not None
        yield state.broker
    finally:
        testbed.down(state_dir)


@pytest.fixture(scope="session")
async def k8s_api(kubeconfig: Path) -> AsyncIterator[client.ApiClient]:
    api = await new_api_client(str(kubeconfig))
    try:
        yield api
    finally:
        await api.close()


@pytest.fixture
async def namespace(k8s_api: client.ApiClient) -> AsyncIterator[str]:
    """A fresh namespace for one test, ready for pods (its default ServiceAccount exists)."""
    core = client.CoreV1Api(k8s_api)
    name = f"test-{uuid.uuid4().hex[:10]}"
    await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))

    async def default_service_account() -> bool:
        accounts = await core.list_namespaced_service_account(name)
        return any(account.metadata.name == "default" for account in accounts.items)

    await wait_for(
        default_service_account,
        timeout=30,
        what=f"the default ServiceAccount of namespace {name}",
    )
    try:
        yield name
    finally:
        await core.delete_namespace(name)


@pytest.fixture
def private_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    """A broker of the test's own (it may be frozen), stopped with the test."""
    broker = PrivateBroker(tmp_path_factory.mktemp("private-broker"))
    try:
        yield broker
    finally:
        broker.stop()
