"""Bring the whole testbed up and down: a Kubernetes control plane and a Mosquitto broker.

Everything runs on loopback and free ports, from binaries the testbed built itself, as
processes it owns. `up` records them in `<state-dir>/state.json`, so `down` stops them
from any shell, by pid. A component that fails to start stops everything started before
it and reports the tail of its log.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import time
from pathlib import Path

from pydantic import BaseModel

from module_controller.testbed import cluster, mosquitto, process
from module_controller.testbed.binaries import (
    ETCD_VERSION,
    KUBERNETES_VERSION,
    Binaries,
    ensure_binaries,
)
from module_controller.testbed.mosquitto import BrokerInfo

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
# The controller manager's own default; tests may shorten it to see node health sooner.
DEFAULT_NODE_MONITOR_GRACE_PERIOD = 50


class TestbedState(BaseModel):
    """Everything a client or `down` needs to know about a running testbed."""

    __test__ = False  # not a pytest test class, despite the name

    state_dir: str
    kubeconfig: str | None
    admin_token: str | None
    bin_dir: str | None
    broker: BrokerInfo | None
    kubernetes_version: str
    etcd_version: str
    processes: list[process.ProcessRecord]
    startup_seconds: float


def default_state_dir() -> Path:
    # tmpfs keeps etcd fast; fall back to the cache directory where there is none.
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm / f"module-controller-testbed-{os.getuid()}"
    return Path.home() / ".cache" / "module-controller" / "testbed"


def load_state(state_dir: Path) -> TestbedState | None:
    path = state_dir / STATE_FILE
    if not path.is_file():
        return None
    return TestbedState.model_validate_json(path.read_text())


def is_alive(state: TestbedState) -> bool:
    return bool(state.processes) and all(process.is_running(p) for p in state.processes)


class _Starter:
    """Starts components in order and remembers them, so a failure can undo the lot."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.records: list[process.ProcessRecord] = []

    def run(self, name: str, argv: list[str], ready: process.ReadyProbe) -> None:
        child, record = process.start(name, argv, self.state_dir / "logs" / f"{name}.log")
        self.records.append(record)
        seconds = process.wait_ready(child, record, ready)
        log.info("%s is ready after %.1fs (pid %d)", name, seconds, record.pid)

    def stop_all(self) -> None:
        for record in reversed(self.records):
            process.stop(record)


def up(
    state_dir: Path | None = None,
    *,
    with_cluster: bool = True,
    with_broker: bool = True,
    with_tls: bool = False,
    node_monitor_grace_period: int = DEFAULT_NODE_MONITOR_GRACE_PERIOD,
    timeout: float = 90.0,
) -> TestbedState:
    """Start what is asked for and return once all of it is ready.

    A testbed already running in `state_dir` is returned as it is; leftovers of a dead
    one are stopped and wiped first.
    """
    state_dir = (state_dir or default_state_dir()).absolute()
    existing = load_state(state_dir)
    if existing is not None:
        if is_alive(existing):
            log.info("The testbed in %s is already running.", state_dir)
            return existing
        down(state_dir)
    shutil.rmtree(state_dir, ignore_errors=True)
    state_dir.mkdir(parents=True)
    state_dir.chmod(0o700)

    binaries = ensure_binaries() if with_cluster else None
    began = time.monotonic()
    starter = _Starter(state_dir)
    try:
        broker = _start_broker(starter, timeout, with_tls) if with_broker else None
        token = None
        if binaries is not None:
            token = _start_cluster(starter, binaries, node_monitor_grace_period, timeout)
    except BaseException:
        starter.stop_all()
        raise
    state = TestbedState(
        state_dir=str(state_dir),
        kubeconfig=str(state_dir / "kubeconfig") if binaries else None,
        admin_token=token,
        bin_dir=str(binaries.directory) if binaries else None,
        broker=broker,
        kubernetes_version=KUBERNETES_VERSION,
        etcd_version=ETCD_VERSION,
        processes=starter.records,
        startup_seconds=round(time.monotonic() - began, 1),
    )
    (state_dir / STATE_FILE).write_text(state.model_dump_json(indent=2))
    log.info("The testbed is ready after %.1fs in %s", state.startup_seconds, state_dir)
    return state


def _start_broker(starter: _Starter, timeout: float, with_tls: bool) -> BrokerInfo:
    tls_port = process.free_port() if with_tls else None
    broker = mosquitto.write_config(starter.state_dir, process.free_port(), tls_port)
    starter.run(
        "mosquitto",
        mosquitto.command(starter.state_dir),
        process.ReadyProbe(lambda: mosquitto.accepts_connections(broker), timeout),
    )
    return broker


def _start_cluster(
    starter: _Starter, binaries: Binaries, node_monitor_grace_period: int, timeout: float
) -> str:
    state_dir = starter.state_dir
    ports = cluster.ClusterPorts(
        etcd_client=process.free_port(),
        etcd_peer=process.free_port(),
        apiserver=process.free_port(),
        controller_manager=process.free_port(),
        scheduler=process.free_port(),
    )
    credentials = cluster.write_credentials(state_dir)
    starter.run(
        "etcd",
        cluster.etcd_command(binaries, state_dir, ports),
        process.ReadyProbe(lambda: cluster.etcd_healthy(ports), timeout),
    )
    api = f"https://127.0.0.1:{ports.apiserver}"
    starter.run(
        "kube-apiserver",
        cluster.apiserver_command(binaries, state_dir, ports),
        process.ReadyProbe(
            lambda: cluster.http_ok(f"{api}/readyz", credentials.admin_token), timeout
        ),
    )
    cluster.write_kubeconfig(state_dir, ports, credentials)
    grace = node_monitor_grace_period
    starter.run(
        "kube-controller-manager",
        cluster.controller_manager_command(binaries, state_dir, ports, grace),
        process.ReadyProbe(
            lambda: cluster.http_ok(f"https://127.0.0.1:{ports.controller_manager}/healthz"),
            timeout,
        ),
    )
    starter.run(
        "kube-scheduler",
        cluster.scheduler_command(binaries, state_dir, ports),
        process.ReadyProbe(
            lambda: cluster.http_ok(f"https://127.0.0.1:{ports.scheduler}/healthz"), timeout
        ),
    )
    return credentials.admin_token


def down(state_dir: Path | None = None) -> list[str]:
    """Stop every process of the testbed in `state_dir`; returns the names stopped."""
    state_dir = (state_dir or default_state_dir()).absolute()
    state = load_state(state_dir)
    if state is None:
        return []
    stopped = []
    for record in reversed(state.processes):
        if process.is_running(record):
            process.stop(record)
            stopped.append(record.name)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    shutil.rmtree(state_dir / "etcd", ignore_errors=True)
    return stopped


def shell_exports(state: TestbedState) -> str:
    """The shell lines that point kubectl, the operator and the simulator at the testbed."""
    lines = []
    if state.kubeconfig:
        lines.append(f"export KUBECONFIG={shlex.quote(state.kubeconfig)}")
    broker = state.broker
    if broker:
        tls = broker.tls
        # With TLS, the TLS listener (a client certificate required) is the one to use.
        port = broker.tls_port if tls is not None else broker.port
        lines += [
            f"export MQTT_BROKER={shlex.quote(broker.host)}",
            f"export MQTT_PORT={port}",
            f"export MQTT_USERNAME={shlex.quote(broker.username)}",
            f"export MQTT_PASSWORD={shlex.quote(broker.password)}",
        ]
        if tls is not None:
            lines += [
                f"export MQTT_CA_PATH={shlex.quote(tls.ca)}",
                f"export MQTT_CLIENT_CRT_PATH={shlex.quote(tls.client_crt)}",
                f"export MQTT_CLIENT_KEY_PATH={shlex.quote(tls.client_key)}",
            ]
    if state.bin_dir:
        lines.append(f'export PATH={shlex.quote(state.bin_dir)}:"$PATH"')
    return "\n".join(lines)
