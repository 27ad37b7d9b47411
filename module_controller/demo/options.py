"""The demo's settings: constants, defaults, and the checked options of one run."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from module_controller.simulator.config import MqttSettings
from module_controller.testbed.mosquitto import BrokerInfo

BASE_NAME = "base"  # the seed's base, which the sample's node affinity asks for
BASE_VERSION = "1.1.1"
DEFAULT_BASES = 3
DEFAULT_REPLICAS = 1
DEFAULT_ENV = "dev"
DEFAULT_REFRESH_SECONDS = 1.5
DEFAULT_ONCE_TIMEOUT_SECONDS = 300.0
OPERATOR_READY_TIMEOUT_SECONDS = 60.0
BASES_CONNECT_TIMEOUT_SECONDS = 30.0
CLEANUP_WAIT_SECONDS = 20.0
KUBECTL_TIMEOUT_SECONDS = 60
STATE_FILE = "demo.json"
LOCK_FILE = "demo.lock"
ARKLET_QUERY = "queryAllBiz"

EXIT_OK = 0
EXIT_NOT_READY = 1
EXIT_SETUP_FAILED = 2
EXIT_INTERRUPTED = 130  # --once stopped by Ctrl-C (or SIGTERM) before the pod was Ready


def default_state_dir() -> Path:
    # Beside the testbed's own default: tmpfs keeps etcd fast.
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm / f"module-controller-demo-{os.getuid()}"
    return Path.home() / ".cache" / "module-controller" / "demo"


def default_sample() -> Path:
    return Path(__file__).resolve().parents[2] / "samples" / "module-deployment.yaml"


@dataclass(frozen=True)
class Options:
    state_dir: Path
    kubeconfig: Path | None
    broker: BrokerInfo | None
    env: str
    bases: int
    replicas: int
    first_ip: str
    sample: Path
    namespace: str | None
    once: bool
    timeout: float | None
    refresh: float


def options_from_args(args: argparse.Namespace) -> Options:
    """Check the arguments; raises ValueError with a sentence for the user."""
    if args.bases < 0:
        raise ValueError("--bases cannot be negative")
    if args.replicas < 1:
        raise ValueError("--replicas must be at least 1")
    if args.refresh <= 0:
        raise ValueError("--refresh must be positive")
    if args.timeout is not None and args.timeout <= 0:
        raise ValueError("--timeout must be positive")
    broker = None
    if args.kubeconfig is not None:
        if not args.kubeconfig.is_file():
            raise ValueError(f"--kubeconfig {args.kubeconfig}: no such file")
        if not args.mqtt_broker:
            raise ValueError("--kubeconfig needs a broker: --mqtt-broker HOST (or MQTT_BROKER)")
        broker = BrokerInfo(
            host=args.mqtt_broker,
            port=args.mqtt_port,
            username=args.mqtt_username,
            password=args.mqtt_password,
        )
    if not args.sample.is_file():
        raise ValueError(f"--sample {args.sample}: no such file")
    once = args.once or args.timeout is not None
    return Options(
        state_dir=(args.state_dir or default_state_dir()).absolute(),
        kubeconfig=args.kubeconfig.absolute() if args.kubeconfig else None,
        broker=broker,
        env=args.env.lower(),
        bases=args.bases,
        replicas=args.replicas,
        first_ip=args.first_ip,
        sample=args.sample,
        namespace=args.namespace,
        once=once,
        timeout=(args.timeout or DEFAULT_ONCE_TIMEOUT_SECONDS) if once else None,
        refresh=args.refresh,
    )


def bases_mqtt_settings(broker: BrokerInfo, *, own_testbed: bool) -> MqttSettings:
    """How the simulated bases reach the broker: the testbed's plainly, another one as the
    operator does (MQTT_CLIENT_PREFIX and the TLS files of its environment)."""

    def from_environment(name: str) -> str | None:
        return None if own_testbed else os.environ.get(name) or None

    return MqttSettings(
        host=broker.host,
        port=broker.port,
        username=broker.username,
        password=broker.password,
        client_prefix=os.environ.get("MQTT_CLIENT_PREFIX", "koupleless"),
        ca_path=from_environment("MQTT_CA_PATH"),
        client_crt_path=from_environment("MQTT_CLIENT_CRT_PATH"),
        client_key_path=from_environment("MQTT_CLIENT_KEY_PATH"),
    )
