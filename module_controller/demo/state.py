"""What a running demo remembers in its state directory, and the shell exports it prints."""

from __future__ import annotations

import shlex
from pathlib import Path

from pydantic import BaseModel

from module_controller.demo.options import STATE_FILE
from module_controller.testbed.mosquitto import BrokerInfo
from module_controller.testbed.process import ProcessRecord

# --- what a running demo remembers -------------------------------------------------------------


class DemoState(BaseModel):
    """What `--exports` prints and what the next demo must clean up if this one was killed."""

    kubeconfig: str
    broker: BrokerInfo
    path: list[str]  # directories holding kubectl and module-controller
    env: str
    namespace: str
    operators: list[ProcessRecord] = []
    # What a demo from before --replicas wrote: read, so that its leftover is stopped too.
    operator: ProcessRecord | None = None
    testbed_dir: str | None = None

    def operator_records(self) -> list[ProcessRecord]:
        return [*self.operators, *([self.operator] if self.operator else [])]


def load_state(state_dir: Path) -> DemoState | None:
    path = state_dir / STATE_FILE
    if not path.is_file():
        return None
    return DemoState.model_validate_json(path.read_text())


def shell_exports(state: DemoState) -> str:
    path = ":".join(shlex.quote(directory) for directory in state.path)
    return "\n".join(
        [
            f"export KUBECONFIG={shlex.quote(state.kubeconfig)}",
            f"export MQTT_BROKER={shlex.quote(state.broker.host)}",
            f"export MQTT_PORT={state.broker.port}",
            f"export MQTT_USERNAME={shlex.quote(state.broker.username)}",
            f"export MQTT_PASSWORD={shlex.quote(state.broker.password)}",
            f'export PATH={path}:"$PATH"',
        ]
    )
