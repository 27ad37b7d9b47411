"""`module-controller run` as a child process, for the demo, the end-to-end tests and the
benchmarks: how it is started, how to know it serves, how it is stopped, where its log is.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from module_controller.testbed import cluster, process
from module_controller.testbed.mosquitto import BrokerInfo

# This interpreter, so the child runs the code of this checkout and virtualenv.
COMMAND = (sys.executable, "-m", "module_controller.cli", "run")
DEFAULT_STOP_GRACE_SECONDS = 10.0


def operator_environment(
    kubeconfig: str | Path,
    env: str,
    broker: BrokerInfo,
    settings: Mapping[str, str] | None = None,
    *,
    inherited: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of an operator for this cluster, ENV and broker.

    `inherited` (this process's environment by default) comes first, `settings` last, so
    they win. METRICS_PORT and HEALTH_PORT are 0 unless `settings` say otherwise: free
    ports, so that operators side by side never clash on the defaults.
    """
    return {
        **(os.environ if inherited is None else inherited),
        "KUBECONFIG": str(kubeconfig),
        "ENV": env,
        "MQTT_BROKER": broker.host,
        "MQTT_PORT": str(broker.port),
        "MQTT_USERNAME": broker.username,
        "MQTT_PASSWORD": broker.password,
        "METRICS_PORT": "0",
        "HEALTH_PORT": "0",
        **(settings or {}),
    }


class OperatorProcess:
    """One operator started with `environment`, its output appended to `log`.

    `own_session` puts it in a session of its own: a Ctrl-C in the terminal then reaches
    only the caller, which stops the operator when it sees fit (the demo: after its bases
    said goodbye). Without it, that Ctrl-C stops the operator together with the caller.
    """

    def __init__(
        self, environment: Mapping[str, str], log: Path, *, own_session: bool = False
    ) -> None:
        self.environment = dict(environment)
        self.log = log
        self.own_session = own_session
        self.child: subprocess.Popen[bytes] | None = None
        self.record: process.ProcessRecord | None = None

    def start(self) -> None:
        self.child, self.record = process.start(
            "operator", COMMAND, self.log, self.environment, own_session=self.own_session
        )

    @property
    def pid(self) -> int:
        assert self.child is not None, "the operator was not started"
        return self.child.pid

    @property
    def exit_code(self) -> int | None:
        """None while it runs (or before it was started)."""
        return None if self.child is None else self.child.poll()

    @property
    def alive(self) -> bool:
        return self.child is not None and self.child.poll() is None

    @property
    def readyz_url(self) -> str:
        port = int(self.environment.get("HEALTH_PORT", "0"))
        if port == 0:
            raise ValueError("the operator has no known HEALTH_PORT: set one to probe /readyz")
        return f"http://127.0.0.1:{port}/readyz"

    def wait_ready(self, timeout: float, interval: float = 0.2) -> float:
        """Block until /readyz answers 200 (connected to the cluster and the broker); the
        seconds it took. Raises ComponentFailed with the log tail if the operator exits
        first or is not ready within `timeout` seconds."""
        assert self.child is not None and self.record is not None, "the operator was not started"
        url = self.readyz_url
        probe = process.ReadyProbe(lambda: cluster.http_ok(url), timeout, interval)
        return process.wait_ready(self.child, self.record, probe)

    def stop(self, grace: float = DEFAULT_STOP_GRACE_SECONDS) -> None:
        """SIGTERM (as a kubelet stops a pod), then SIGKILL if it is still there after
        `grace` seconds. An operator already gone is fine."""
        if self.child is None or self.child.poll() is not None:
            return
        self.child.terminate()
        try:
            self.child.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.child.kill()
            self.child.wait()

    def kill(self) -> None:
        """Die at once, as a crashed or evicted operator pod would."""
        if self.child is not None and self.child.poll() is None:
            self.child.kill()
            self.child.wait()

    def tail(self, lines: int = 60) -> str:
        """The last lines of its log, headed with where the whole log is."""
        return f"--- operator log ({self.log}) ---\n{process.log_tail(self.log, lines)}"
