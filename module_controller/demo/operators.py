"""The demo's operator replicas: `--replicas N` processes of one ENV that share its bases,
each with a CLIENT_ID (the holder of its bases' node Leases), ports and a log of its own."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from module_controller.testbed import process
from module_controller.testbed.mosquitto import BrokerInfo
from module_controller.testbed.operator_process import OperatorProcess, operator_environment


@dataclass(frozen=True)
class Replica:
    client_id: str
    process: OperatorProcess
    metrics_url: str

    @property
    def log(self) -> Path:
        return self.process.log


def client_ids(env: str, count: int, *, own_broker: bool) -> list[str]:
    """replica-1..N. The MQTT client id is <prefix>@@@<CLIENT_ID>: on a broker others use,
    two demos with the same ids would disconnect each other, so there the (private) ENV
    comes first."""
    prefix = "" if own_broker else f"{env}-"
    return [f"{prefix}replica-{number}" for number in range(1, count + 1)]


def log_path(state_dir: Path, client_id: str, count: int) -> Path:
    # One replica keeps the name the README and the end-to-end tests know.
    return state_dir / ("operator.log" if count == 1 else f"operator-{client_id}.log")


def start_replica(
    client_id: str,
    *,
    count: int,
    kubeconfig: Path,
    env: str,
    broker: BrokerInfo,
    members_namespace: str,
    state_dir: Path,
    inherited: Mapping[str, str],
) -> Replica:
    """Start one replica (not ready yet); its log starts empty."""
    metrics_port, health_port = process.free_port(), process.free_port()
    environment = operator_environment(
        kubeconfig,
        env,
        broker,
        {
            "CLIENT_ID": client_id,
            # Set, not left to the operator's default, so the view reads its membership
            # Leases where the replicas write them.
            "NAMESPACE": members_namespace,
            "METRICS_PORT": str(metrics_port),
            "HEALTH_PORT": str(health_port),
        },
        inherited=inherited,
    )
    log = log_path(state_dir, client_id, count)
    log.unlink(missing_ok=True)  # this run's log only
    # In a session of its own: Ctrl-C reaches only the demo, which stops the operator
    # after the bases said goodbye, so that their nodes are removed.
    operator = OperatorProcess(environment, log, own_session=True)
    operator.start()
    return Replica(client_id, operator, f"http://127.0.0.1:{metrics_port}/metrics")


def stop_leftovers(records: list[process.ProcessRecord]) -> list[int]:
    """Stop the operators a demo killed outright (SIGKILL) left running; their pids."""
    running = [record for record in records if process.is_running(record)]
    for record in running:
        process.stop(record)
    return [record.pid for record in running]


async def wait_ready(replicas: list[Replica], timeout: float) -> None:
    """All at once: each waits in a thread, so Ctrl-C is heard meanwhile. Raises
    ComponentFailed (with its log tail) for the first that exits or is late."""
    await asyncio.gather(
        *(asyncio.to_thread(replica.process.wait_ready, timeout) for replica in replicas)
    )


async def stop_all(replicas: list[Replica]) -> None:
    # Together: each may take its grace period to release its Leases and leave.
    await asyncio.gather(*(asyncio.to_thread(replica.process.stop) for replica in replicas))


def first_exit(replicas: list[Replica]) -> tuple[str, int] | None:
    """The first replica found exited, and its code; None while all run."""
    for replica in replicas:
        code = replica.process.exit_code
        if code is not None:
            return replica.client_id, code
    return None


def any_running(replicas: list[Replica]) -> bool:
    return any(replica.process.alive for replica in replicas)


def _state(replica: Replica) -> str:
    code = replica.process.exit_code
    return f"pid {replica.process.pid}" if code is None else f"EXITED ({code})"


def header_lines(replicas: list[Replica], state_dir: Path) -> list[str]:
    if not replicas:
        return ["  operator: not started"]
    if len(replicas) == 1:
        (replica,) = replicas
        return [
            f"  operator: {_state(replica)} (CLIENT_ID {replica.client_id}), log {replica.log}",
            f"  metrics: {replica.metrics_url}   readiness: {replica.process.readyz_url}",
        ]
    lines = [f"  operators: {len(replicas)} replicas, logs {state_dir}/operator-<CLIENT_ID>.log"]
    lines += [
        f"    {replica.client_id}: {_state(replica)}   metrics: {replica.metrics_url}"
        for replica in replicas
    ]
    return lines


def log_tails(replicas: list[Replica], lines: int = 30) -> list[str]:
    """The last lines of each replica's log, for a diagnosis (shared out among them)."""
    each = max(10, lines // max(1, len(replicas)))
    out: list[str] = []
    for replica in replicas:
        out.append(f"Last lines of the operator log of {replica.client_id} ({replica.log}):")
        out += ["  " + line for line in process.log_tail(replica.log, each).splitlines()]
    return out
