"""`module-controller demo`: the whole product running on this machine, in one command.

It starts the testbed (a real control plane and Mosquitto on loopback), the operator as a
child process, a few simulated bases of the seed's base (`base`, `1.1.1`), applies the
seed's sample Deployment, and then redraws bases, nodes and module pods every couple of
seconds, with the kubectl lines to try next. Ctrl-C stops everything it started, in order:
the sample (on an existing cluster), the bases, the operator, the testbed.

With `--kubeconfig` and a broker it runs against a cluster and broker that already exist
instead. `--once` (or `--timeout`) exits as soon as the sample's pod is Running and Ready,
with a diagnosis when it is not in time: tests and timing runs use that.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import yaml
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import BaseModel

from module_controller.settings import SEED_MODULE_LABEL
from module_controller.simulator.addresses import DEFAULT_FIRST_IP
from module_controller.simulator.config import BaseConfig, MqttSettings
from module_controller.simulator.fleet import Fleet
from module_controller.testbed import cluster, process, testbed
from module_controller.testbed.binaries import BuildFailed, ensure_binaries
from module_controller.testbed.mosquitto import BrokerInfo
from module_controller.testbed.process import ComponentFailed, ProcessRecord
from module_controller.vnodes import COMPONENT_LABEL, ENV_LABEL, LEASE_NAMESPACE

log = logging.getLogger(__name__)
T = TypeVar("T")

BASE_NAME = "base"  # the seed's base, which the sample's node affinity asks for
BASE_VERSION = "1.1.1"
DEFAULT_BASES = 3
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
    return Path(__file__).resolve().parents[1] / "samples" / "module-deployment.yaml"


# --- the command line ------------------------------------------------------------------------


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "demo",
        help="run the whole product locally and watch it: cluster, broker, operator, bases",
        description=(
            "Start the testbed (a real Kubernetes control plane and a Mosquitto broker on\n"
            "loopback), the operator, and simulated bases of the seed's base (name "
            f"'{BASE_NAME}',\nversion {BASE_VERSION}); apply the seed's sample module "
            "Deployment; then show bases,\nnodes and module pods live, with the kubectl "
            "lines to try next. Ctrl-C stops\neverything the demo started.\n\n"
            "With --kubeconfig it uses that cluster, and the broker of --mqtt-broker (or\n"
            "MQTT_BROKER), instead of the testbed; on leaving it also deletes the sample\n"
            "Deployment it created and the nodes of its ENV.\n\n"
            "Logs (the operator's, the bases') are in the state directory."
        ),
        epilog=(
            "examples:\n"
            "  module-controller demo                     # everything local, until Ctrl-C\n"
            "  module-controller demo --once              # exit 0 once the sample's pod is "
            "Ready\n"
            '  eval "$(module-controller demo --exports)"  # another shell: kubectl and '
            "the broker of the running demo\n"
            "  module-controller demo --kubeconfig ~/.kube/config --mqtt-broker mqtt.local "
            "--env demo"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = parser.add_argument_group("where it runs")
    where.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"logs, the testbed and what --exports reads (default: {default_state_dir()})",
    )
    where.add_argument(
        "--kubeconfig",
        type=Path,
        default=None,
        metavar="PATH",
        help="use this cluster instead of starting the testbed (also needs a broker)",
    )
    where.add_argument(
        "--mqtt-broker",
        default=os.environ.get("MQTT_BROKER"),
        metavar="HOST",
        help="broker host with --kubeconfig (default: $MQTT_BROKER)",
    )
    where.add_argument(
        "--mqtt-port",
        type=int,
        default=os.environ.get("MQTT_PORT") or "1883",
        metavar="PORT",
        help="broker port (default: $MQTT_PORT, else 1883)",
    )
    where.add_argument(
        "--mqtt-username",
        default=os.environ.get("MQTT_USERNAME", ""),
        metavar="USER",
        help="broker user (default: $MQTT_USERNAME)",
    )
    where.add_argument(
        "--mqtt-password",
        default=os.environ.get("MQTT_PASSWORD", ""),
        metavar="PASSWORD",
        help="broker password (default: $MQTT_PASSWORD)",
    )
    what = parser.add_argument_group("what it runs")
    what.add_argument(
        "--env",
        default=DEFAULT_ENV,
        metavar="ENV",
        help="the operator's and the bases' ENV (MQTT topics koupleless_<ENV>/...); pick a "
        "private one on a broker that real bases use (default: %(default)s)",
    )
    what.add_argument(
        "--bases",
        type=int,
        default=DEFAULT_BASES,
        metavar="N",
        help=f"simulated bases '{BASE_NAME}' {BASE_VERSION} to start (default: %(default)s)",
    )
    what.add_argument(
        "--first-ip",
        default=DEFAULT_FIRST_IP,
        metavar="IP",
        help="loopback address of the first base; the next ones count up (default: %(default)s)",
    )
    what.add_argument(
        "--sample",
        type=Path,
        default=default_sample(),
        metavar="PATH",
        help="the module Deployment to apply (default: the seed's samples/module-deployment.yaml)",
    )
    what.add_argument(
        "--namespace",
        default=None,
        metavar="NS",
        help="apply the sample in this namespace instead of its own (must exist)",
    )
    how = parser.add_argument_group("how it shows and ends")
    how.add_argument(
        "--once",
        action="store_true",
        help="exit 0 as soon as the sample's pod is Running and Ready (no live view); "
        "non-zero with a diagnosis when --timeout passes first",
    )
    how.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"implies --once: give up after this long (default with --once: "
        f"{DEFAULT_ONCE_TIMEOUT_SECONDS:.0f})",
    )
    how.add_argument(
        "--refresh",
        type=float,
        default=DEFAULT_REFRESH_SECONDS,
        metavar="SECONDS",
        help="redraw interval of the live view (default: %(default)s)",
    )
    how.add_argument(
        "--exports",
        action="store_true",
        help="print the shell exports (KUBECONFIG, MQTT_*, PATH) of the demo running in "
        "--state-dir, and exit",
    )
    parser.set_defaults(handler=run)


@dataclass(frozen=True)
class Options:
    state_dir: Path
    kubeconfig: Path | None
    broker: BrokerInfo | None
    env: str
    bases: int
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
        first_ip=args.first_ip,
        sample=args.sample,
        namespace=args.namespace,
        once=once,
        timeout=(args.timeout or DEFAULT_ONCE_TIMEOUT_SECONDS) if once else None,
        refresh=args.refresh,
    )


def run(args: argparse.Namespace) -> int:
    began = time.monotonic()
    if args.exports:
        return print_exports(args.state_dir or default_state_dir())
    try:
        options = options_from_args(args)
    except ValueError as error:
        print(f"module-controller demo: {error}", file=sys.stderr)
        return EXIT_SETUP_FAILED
    options.state_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(options.state_dir) as locked:
        if not locked:
            print(
                f"module-controller demo: a demo is already running with state in "
                f"{options.state_dir}; stop it with Ctrl-C in its terminal, or give another "
                "--state-dir.",
                file=sys.stderr,
            )
            return EXIT_SETUP_FAILED
        _log_to_file(options.state_dir / "demo.log")
        return asyncio.run(Demo(options, began).main())


@contextlib.contextmanager
def _exclusive(state_dir: Path) -> Iterator[bool]:
    """Hold the state directory's lock while the demo runs (released when it dies)."""
    with (state_dir / LOCK_FILE).open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def _demo_running(state_dir: Path) -> bool:
    path = state_dir / LOCK_FILE
    if not path.is_file():
        return False
    with path.open("r") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False


def _log_to_file(path: Path) -> None:
    """The simulated bases and the demo log here; the terminal is the live view's."""
    handler = logging.FileHandler(path, mode="w")  # this run's, not the last one's too
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


# --- what a running demo remembers -------------------------------------------------------------


class DemoState(BaseModel):
    """What `--exports` prints and what the next demo must clean up if this one was killed."""

    kubeconfig: str
    broker: BrokerInfo
    path: list[str]  # directories holding kubectl and module-controller
    env: str
    namespace: str
    operator: ProcessRecord | None = None
    testbed_dir: str | None = None


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


def print_exports(state_dir: Path) -> int:
    state = load_state(state_dir)
    if state is None or not _demo_running(state_dir):
        print(
            f"No demo is running with state in {state_dir}; start one with "
            "`module-controller demo` (or ./dev demo).",
            file=sys.stderr,
        )
        return EXIT_NOT_READY
    print(shell_exports(state))
    return EXIT_OK


# --- what the live view shows ---------------------------------------------------------------


@dataclass(frozen=True)
class BaseRow:
    identity: str
    ip: str
    arklet: str
    connected: bool


@dataclass(frozen=True)
class NodeRow:
    name: str
    base: str
    ip: str
    ready: str
    reason: str


@dataclass(frozen=True)
class PodRow:
    name: str
    node: str
    pod_ip: str
    phase: str
    ready: bool
    detail: str


@dataclass(frozen=True)
class Sample:
    """What the live view and the hints need to know about the applied Deployment."""

    name: str
    namespace: str
    selector: dict[str, str]
    container: str
    image: str
    biz_version: str

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], namespace: str | None) -> Sample:
        if manifest.get("kind") != "Deployment":
            raise ValueError("the sample must be one Deployment")
        spec = manifest["spec"]
        container = spec["template"]["spec"]["containers"][0]
        version = next(
            (e.get("value", "") for e in container.get("env", []) if e["name"] == "BIZ_VERSION"),
            "",
        )
        return cls(
            name=manifest["metadata"]["name"],
            namespace=namespace or manifest["metadata"].get("namespace") or "default",
            selector=dict(spec["selector"]["matchLabels"]),
            container=container["name"],
            image=container["image"],
            biz_version=version,
        )

    def owns(self, labels: dict[str, str] | None) -> bool:
        return self.selector.items() <= (labels or {}).items()


@dataclass
class Snapshot:
    bases: list[BaseRow]
    nodes: list[NodeRow]
    pods: list[PodRow]
    error: str = ""


def next_version(version: str) -> str:
    """0.0.1-SNAPSHOT -> 0.0.2-SNAPSHOT: the last number counts up, the rest stays."""
    match = re.search(r"(\d+)(?!.*\d)", version)
    if match is None:
        return f"{version}-2"
    number = str(int(match.group(1)) + 1).zfill(len(match.group(1)))  # 05 -> 06
    return f"{version[: match.start()]}{number}{version[match.end() :]}"


def update_patch(sample: Sample) -> str:
    """One strategic-merge patch that changes jar and BIZ_VERSION together (one rollout)."""
    version = next_version(sample.biz_version)
    image = sample.image.replace(sample.biz_version, version) if sample.biz_version else ""
    if not image or image == sample.image:
        image = f"{sample.image}?version={version}"
    container = {
        "name": sample.container,
        "image": image,
        "env": [{"name": "BIZ_VERSION", "value": version}],
    }
    patch = {"spec": {"template": {"spec": {"containers": [container]}}}}
    return json.dumps(patch, separators=(",", ":"))


def kubectl_hints(
    sample: Sample, snapshot: Snapshot, kubeconfig: Path, path: Sequence[str]
) -> list[str]:
    """The lines to try next, filled in with a real base IP and node name."""
    # A base that runs a module, so the two queries show something; else any Ready one.
    hosting = {pod.node for pod in snapshot.pods if pod.ready}
    ready = [row for row in snapshot.nodes if row.ready == "True"]
    node = next((row for row in ready if row.name in hosting), ready[0] if ready else None)
    base_ip = node.ip if node else "<baseIP>"
    node_name = node.name if node else "virtual-node-<baseUUID>"
    arklet = next((row.arklet for row in snapshot.bases if row.ip == base_ip), "")
    ns = f"-n {sample.namespace}"
    deployment = f"deployment/{sample.name}"
    directories = ":".join(shlex.quote(directory) for directory in path)
    lines = [
        f'export KUBECONFIG={shlex.quote(str(kubeconfig))} PATH={directories}:"$PATH"',
        f"kubectl get pod {ns} --field-selector status.podIP={base_ip} -o wide",
        f"kubectl get pod {ns} --field-selector spec.nodeName={node_name} -o wide",
        f"kubectl {ns} patch {deployment} -p '{update_patch(sample)}'",
        f"kubectl {ns} rollout history {deployment}",
        f"kubectl {ns} rollout undo {deployment}",
        f"kubectl {ns} scale {deployment} --replicas=3",
        f"kubectl {ns} delete {deployment}",
    ]
    if arklet:
        lines.append(f"curl -s -X POST http://{arklet}/{ARKLET_QUERY}    # what that base runs")
    return lines


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = []
    for row in [headers, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines


def render(
    snapshot: Snapshot,
    *,
    header: Sequence[str],
    sample: Sample,
    hints: Sequence[str],
    module_label: str = SEED_MODULE_LABEL,
) -> str:
    lines = list(header)
    lines.append("")
    lines.append(f"BASES ({len(snapshot.bases)} simulated: '{BASE_NAME}' {BASE_VERSION})")
    base_rows = [
        (b.identity, b.ip, b.arklet or "-", "connected" if b.connected else "connecting")
        for b in snapshot.bases
    ]
    lines += _table(("IDENTITY", "IP", "ARKLET", "MQTT"), base_rows) if base_rows else ["  none"]
    lines.append("")
    lines.append(
        f"NODES ({sum(n.ready == 'True' for n in snapshot.nodes)}/{len(snapshot.nodes)} Ready)"
    )
    node_rows = [(n.name, n.base, n.ip, n.ready, n.reason) for n in snapshot.nodes]
    lines += (
        _table(("NAME", "BASE", "IP", "READY", "REASON"), node_rows)
        if node_rows
        else ["  none yet"]
    )
    lines.append("")
    ready = sum(p.ready for p in snapshot.pods)
    lines.append(
        f"MODULE PODS in {sample.namespace} ({module_label}=module; {ready}/{len(snapshot.pods)} "
        "Ready)"
    )
    pod_rows = [
        (p.name, p.node or "-", p.pod_ip or "-", p.phase, "True" if p.ready else "False", p.detail)
        for p in snapshot.pods
    ]
    lines += (
        _table(("NAME", "NODE", "POD IP", "PHASE", "READY", "DETAIL"), pod_rows)
        if pod_rows
        else ["  none yet"]
    )
    if snapshot.error:
        lines += ["", f"(could not read the cluster: {snapshot.error})"]
    lines += ["", "TRY NEXT (in another terminal):"]
    lines += [f"  {hint}" for hint in hints]
    return "\n".join(lines)


def pod_row(pod: Any) -> PodRow:
    status = pod.status
    conditions = {c.type: c for c in status.conditions or []}
    ready = conditions.get("Ready")
    detail = ""
    if pod.metadata.deletion_timestamp is not None:
        detail = "deleting"
    else:
        for kind in ("PodScheduled", "Ready"):
            condition = conditions.get(kind)
            if condition is not None and condition.status != "True":
                detail = ": ".join(x for x in (condition.reason, condition.message) if x)
                break
        if not detail:
            for container in status.container_statuses or []:
                waiting = container.state.waiting if container.state else None
                if waiting is not None:
                    detail = f"{container.name}: {waiting.reason or 'waiting'}"
                    break
    return PodRow(
        name=pod.metadata.name,
        node=pod.spec.node_name or "",
        pod_ip=status.pod_ip or "",
        phase=status.phase or "",
        ready=ready is not None and ready.status == "True",
        detail=" ".join(detail.split())[:100],
    )


def node_row(node: Any) -> NodeRow:
    labels = node.metadata.labels or {}
    ready = next((c for c in node.status.conditions or [] if c.type == "Ready"), None)
    ip = next((a.address for a in node.status.addresses or [] if a.type == "InternalIP"), "")
    base = " ".join(labels.get(f"base.koupleless.io/{key}", "?") for key in ("name", "version"))
    return NodeRow(
        name=node.metadata.name,
        base=base,
        ip=ip,
        ready=ready.status if ready else "Unknown",
        reason=(ready.reason or "") if ready else "",
    )


# --- the demo itself -------------------------------------------------------------------------


class SetupFailed(RuntimeError):
    """A step could not be done; the message says which and why."""


class Demo:
    def __init__(self, options: Options, began: float) -> None:
        self.options = options
        self.began = began
        self.out: IO[str] = sys.stdout
        self.live = sys.stdout.isatty() and not options.once
        self.stop = asyncio.Event()
        self.testbed_dir: Path | None = None
        self.kubeconfig: Path | None = options.kubeconfig
        self.broker: BrokerInfo | None = options.broker
        self.kubectl_path: Path | None = None
        self.operator: ProcessRecord | None = None
        self.operator_child: subprocess.Popen[bytes] | None = None
        self.operator_log = options.state_dir / "operator.log"
        self.fleet: Fleet | None = None
        self.api: client.ApiClient | None = None
        self.sample: Sample | None = None
        self.created_deployment = False
        self.first_ready_after: float | None = None
        self.timeline: list[str] = []
        self.last_status = ""
        self.metrics_url = ""
        self.readyz_url = ""

    # --- saying things ---------------------------------------------------------------------

    def say(self, message: str) -> None:
        print(f"==> {message}", file=self.out, flush=True)
        log.info(message)

    def elapsed(self) -> float:
        return time.monotonic() - self.began

    def mark(self, what: str) -> None:
        entry = f"{what} after {self.elapsed():.1f}s"
        self.timeline.append(entry)
        self.say(entry[0].upper() + entry[1:] + ".")

    # --- the whole run -----------------------------------------------------------------------

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._interrupted)
        try:
            try:
                await self._setup()
            except Exception as error:
                if self.stop.is_set():
                    return self._stopped_code()
                log.debug("Set-up failed.", exc_info=True)
                expected = (SetupFailed, ComponentFailed, BuildFailed, OSError, ApiException)
                detail = str(error) if isinstance(error, expected) else repr(error)
                self.say(f"The demo could not start: {detail}")
                self.say(f"Its log and the operator's are in {self.options.state_dir}.")
                return EXIT_SETUP_FAILED
            if self.stop.is_set():
                return self._stopped_code()
            if self.options.once:
                return await self._until_ready()
            await self._watch()
            return EXIT_OK
        finally:
            await self._teardown()

    def _stopped_code(self) -> int:
        """Ctrl-C is how the live view ends; for --once it means the run did not finish."""
        return EXIT_INTERRUPTED if self.options.once else EXIT_OK

    def _interrupted(self) -> None:
        if self.stop.is_set():
            print("\nStill stopping what the demo started; one moment.", file=self.out, flush=True)
            return
        self.stop.set()
        if self.live:
            print(file=self.out)
        self.say("Stopping everything the demo started.")

    async def _step(self, work: Callable[[], T]) -> T:
        """Run a blocking step in a thread, so Ctrl-C is heard while it runs."""
        return await asyncio.to_thread(work)

    async def _setup(self) -> None:
        options = self.options
        await self._clean_leftovers()
        if self.kubeconfig is None:
            self.say(
                "Starting the testbed: etcd, kube-apiserver, kube-controller-manager, "
                "kube-scheduler and Mosquitto."
            )
            self.testbed_dir = options.state_dir / "testbed"
            state = await self._step(lambda: testbed.up(self.testbed_dir))
            assert state.kubeconfig and state.broker and state.bin_dir
            self.kubeconfig = Path(state.kubeconfig)
            self.broker = state.broker
            self.kubectl_path = Path(state.bin_dir) / "kubectl"
            self.mark("the cluster and the broker were up")
        else:
            found = shutil.which("kubectl")
            self.kubectl_path = (
                Path(found) if found else (await self._step(ensure_binaries)).kubectl
            )
            self.say(
                f"Using the cluster of {self.kubeconfig} and the broker {self._broker_text()}."
            )
        if self.stop.is_set():
            return
        self.api = await config.new_client_from_config(config_file=str(self.kubeconfig))
        await self._start_operator()
        if self.stop.is_set():
            return
        await self._start_bases()
        if self.stop.is_set():
            return
        await self._apply_sample()

    def _broker_text(self) -> str:
        assert self.broker is not None
        return f"{self.broker.host}:{self.broker.port}"

    async def _clean_leftovers(self) -> None:
        """A demo killed outright (SIGKILL) leaves its operator and testbed; stop them."""
        previous = load_state(self.options.state_dir)
        if previous is None:
            return
        leftover = previous.operator
        if leftover is not None and process.is_running(leftover):
            self.say(f"Stopping the operator a previous demo left running (pid {leftover.pid}).")
            await self._step(lambda: process.stop(leftover))
        (self.options.state_dir / STATE_FILE).unlink(missing_ok=True)

    async def _start_operator(self) -> None:
        assert self.kubeconfig is not None and self.broker is not None
        metrics_port, health_port = process.free_port(), process.free_port()
        env = dict(os.environ)
        if self.testbed_dir is not None:
            # The testbed's broker has no TLS: settings from the caller's shell do not apply.
            env = {k: v for k, v in env.items() if not k.startswith("MQTT_")}
        env.update(
            KUBECONFIG=str(self.kubeconfig),
            ENV=self.options.env,
            MQTT_BROKER=self.broker.host,
            MQTT_PORT=str(self.broker.port),
            MQTT_USERNAME=self.broker.username,
            MQTT_PASSWORD=self.broker.password,
            METRICS_PORT=str(metrics_port),
            HEALTH_PORT=str(health_port),
        )
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        self.readyz_url = f"http://127.0.0.1:{health_port}/readyz"
        argv = [sys.executable, "-m", "module_controller.cli", "run"]
        self.operator_log.unlink(missing_ok=True)  # this run's log only
        self.say(f"Starting the operator (ENV={self.options.env}); its log is {self.operator_log}.")
        child, record = process.start("operator", argv, self.operator_log, env)
        self.operator_child, self.operator = child, record
        self._save_state()
        readiness = process.Readiness(
            lambda: cluster.http_ok(self.readyz_url), OPERATOR_READY_TIMEOUT_SECONDS
        )
        await self._step(lambda: process.wait_ready(child, record, readiness))
        self.mark("the operator was ready (connected to the cluster and the broker)")

    def _path(self) -> list[str]:
        """Directories to put first on PATH: kubectl's and module-controller's."""
        assert self.kubectl_path is not None
        return [str(self.kubectl_path.parent), str(Path(sys.executable).parent)]

    def _save_state(self) -> None:
        assert self.kubeconfig is not None and self.broker is not None
        sample = self._load_sample()
        state = DemoState(
            kubeconfig=str(self.kubeconfig),
            broker=self.broker,
            path=self._path(),
            env=self.options.env,
            namespace=sample.namespace,
            operator=self.operator,
            testbed_dir=str(self.testbed_dir) if self.testbed_dir else None,
        )
        path = self.options.state_dir / STATE_FILE
        path.write_text(state.model_dump_json(indent=2))
        path.chmod(0o600)

    async def _start_bases(self) -> None:
        assert self.broker is not None
        if self.options.bases == 0:
            self.say("Starting no bases (--bases 0).")
            return
        settings = MqttSettings(
            host=self.broker.host,
            port=self.broker.port,
            username=self.broker.username,
            password=self.broker.password,
            client_prefix=os.environ.get("MQTT_CLIENT_PREFIX", "koupleless"),
            ca_path=None if self.testbed_dir else os.environ.get("MQTT_CA_PATH") or None,
            client_crt_path=None
            if self.testbed_dir
            else os.environ.get("MQTT_CLIENT_CRT_PATH") or None,
            client_key_path=None
            if self.testbed_dir
            else os.environ.get("MQTT_CLIENT_KEY_PATH") or None,
        )
        template = BaseConfig(
            name=BASE_NAME, version=BASE_VERSION, env=self.options.env, mqtt=settings
        )
        self.say(f"Starting {self.options.bases} simulated bases '{BASE_NAME}' {BASE_VERSION}.")
        self.fleet = Fleet(template, first_ip=self.options.first_ip)
        await self.fleet.start(self.options.bases)
        await self.fleet.wait_connected(BASES_CONNECT_TIMEOUT_SECONDS)
        self.mark(f"{self.options.bases} bases were connected to the broker")

    def _load_sample(self) -> Sample:
        if self.sample is None:
            manifest = yaml.safe_load(self.options.sample.read_text())
            self.sample = Sample.from_manifest(manifest, self.options.namespace)
        return self.sample

    def _kubectl(
        self, *argv: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        assert self.kubectl_path is not None and self.kubeconfig is not None
        result = subprocess.run(
            [str(self.kubectl_path), f"--kubeconfig={self.kubeconfig}", *argv],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=KUBECTL_TIMEOUT_SECONDS,
            check=False,
        )
        if check and result.returncode != 0:
            raise SetupFailed(f"kubectl {' '.join(argv)} failed: {result.stderr.strip()}")
        return result

    async def _apply_sample(self) -> None:
        sample = self._load_sample()
        exists = await self._step(
            lambda: self._kubectl(
                "get", "deployment", sample.name, "-n", sample.namespace, check=False
            )
        )
        self.created_deployment = exists.returncode != 0
        if self.options.namespace is None:
            argv: tuple[str, ...] = ("apply", "-f", str(self.options.sample))
            stdin = None
            shown = f"kubectl apply -f {self.options.sample}"
        else:
            manifest = yaml.safe_load(self.options.sample.read_text())
            manifest["metadata"]["namespace"] = sample.namespace
            argv, stdin = ("apply", "-f", "-"), yaml.safe_dump(manifest)
            shown = f"kubectl apply -f {self.options.sample} (in namespace {sample.namespace})"
        self.say(f"Releasing the sample module: {shown}")
        await self._step(lambda: self._kubectl(*argv, stdin=stdin))
        self.mark("the sample Deployment was applied")

    # --- watching ------------------------------------------------------------------------

    async def snapshot(self) -> Snapshot:
        assert self.api is not None
        bases = [
            BaseRow(
                identity=base.identity,
                ip=base.config.ip,
                arklet=f"{base.config.ip}:{base.port}" if base.port else "",
                connected=base.connected,
            )
            for base in (self.fleet.bases if self.fleet else [])
        ]
        sample = self._load_sample()
        core = client.CoreV1Api(self.api)
        try:
            nodes = await core.list_node(
                label_selector=f"{COMPONENT_LABEL}=vnode,{ENV_LABEL}={self.options.env}",
                _request_timeout=10,
            )
            pods = await core.list_namespaced_pod(
                sample.namespace, label_selector=f"{SEED_MODULE_LABEL}=module", _request_timeout=10
            )
        except (ApiException, OSError, TimeoutError) as error:
            return Snapshot(bases, [], [], error=" ".join(str(error).split())[:200])
        node_rows = sorted((node_row(n) for n in nodes.items), key=lambda row: row.ip)
        pod_rows = sorted((pod_row(p) for p in pods.items), key=lambda row: row.name)
        self._note_first_ready(pods.items)
        return Snapshot(bases, node_rows, pod_rows)

    def _note_first_ready(self, pods: list[Any]) -> None:
        if self.first_ready_after is not None:
            return
        sample = self._load_sample()
        if any(
            sample.owns(p.metadata.labels) and pod_row(p).ready and p.status.phase == "Running"
            for p in pods
        ):
            self.first_ready_after = self.elapsed()
            self.timeline.append(
                f"the first module pod was Running and Ready after {self.first_ready_after:.1f}s"
            )

    def _operator_exit(self) -> int | None:
        return None if self.operator_child is None else self.operator_child.poll()

    def header(self) -> list[str]:
        assert self.broker is not None
        where = "testbed" if self.testbed_dir else "existing cluster"
        lines = [
            f"Koupleless Module Controller demo — running {self.elapsed():.0f}s — Ctrl-C stops "
            "everything it started",
            f"  cluster: {where} (KUBECONFIG={self.kubeconfig})",
            f"  broker: {self._broker_text()}   ENV: {self.options.env}",
        ]
        code = self._operator_exit()
        state = f"pid {self.operator.pid}" if self.operator and code is None else f"EXITED ({code})"
        lines.append(f"  operator: {state}, log {self.operator_log}")
        lines.append(f"  metrics: {self.metrics_url}   readiness: {self.readyz_url}")
        if self.first_ready_after is not None:
            lines.append(
                f"  first module pod Running and Ready {self.first_ready_after:.1f}s "
                "after the command"
            )
        return lines

    def screen(self, snapshot: Snapshot) -> str:
        assert self.kubeconfig is not None
        hints = kubectl_hints(self._load_sample(), snapshot, self.kubeconfig, self._path())
        return render(snapshot, header=self.header(), sample=self._load_sample(), hints=hints)

    async def _watch(self) -> None:
        """The live view, until Ctrl-C."""
        while not self.stop.is_set():
            snapshot = await self.snapshot()
            text = self.screen(snapshot)
            if self.live:
                self.out.write("\033[H\033[J" + text + "\n")
                self.out.flush()
            else:
                self._print_changes(snapshot)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.options.refresh)

    def _print_changes(self, snapshot: Snapshot) -> None:
        """Without a terminal: one status line whenever something changed."""
        status = status_line(snapshot)
        if status != self.last_status:
            self.last_status = status
            print(f"[{self.elapsed():6.1f}s] {status}", file=self.out, flush=True)

    async def _until_ready(self) -> int:
        assert self.options.timeout is not None
        deadline = self.began + self.options.timeout
        while not self.stop.is_set():
            snapshot = await self.snapshot()
            self._print_changes(snapshot)
            if self.first_ready_after is not None:
                print(self.screen(snapshot), file=self.out)
                self.say("Timeline: " + "; ".join(self.timeline) + ".")
                self.say(
                    f"The sample's module pod is Running and Ready, {self.first_ready_after:.1f}s "
                    "after the command."
                )
                return EXIT_OK
            code = self._operator_exit()
            if code is not None:
                await self._diagnose(snapshot, f"the operator exited with code {code}")
                return EXIT_NOT_READY
            if time.monotonic() >= deadline:
                await self._diagnose(
                    snapshot,
                    f"timed out after {self.options.timeout:.0f}s waiting for the sample's "
                    "module pod to be Running and Ready",
                )
                return EXIT_NOT_READY
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), min(0.5, self.options.refresh))
        return self._stopped_code()

    async def _diagnose(self, snapshot: Snapshot, what: str) -> None:
        lines = [f"The demo failed: {what}.", "", self.screen(snapshot), ""]
        lines.append("Timeline: " + "; ".join(self.timeline) + ".")
        lines.append("")
        lines += await self._recent_events()
        lines.append("")
        lines.append(f"Last lines of the operator log ({self.operator_log}):")
        lines += ["  " + line for line in process.log_tail(self.operator_log, 30).splitlines()]
        print("\n".join(lines), file=self.out, flush=True)

    async def _recent_events(self) -> list[str]:
        assert self.api is not None
        sample = self._load_sample()
        try:
            listed = await client.CoreV1Api(self.api).list_namespaced_event(
                sample.namespace, _request_timeout=10
            )
        except (ApiException, OSError, TimeoutError) as error:
            return [f"(could not read events: {error})"]
        events = sorted(listed.items, key=lambda e: str(e.last_timestamp or e.event_time or ""))[
            -15:
        ]
        lines = [f"Recent events in namespace {sample.namespace}:"]
        for event in events:
            obj = event.involved_object
            lines.append(
                f"  {event.type} {event.reason} {obj.kind}/{obj.name} (x{event.count or 1}): "
                f"{' '.join((event.message or '').split())[:160]}"
            )
        return lines if events else [f"No events in namespace {sample.namespace}."]

    # --- stopping ------------------------------------------------------------------------

    async def _teardown(self) -> None:
        stopped: list[str] = []
        existing = self.testbed_dir is None
        if existing and self.created_deployment and self.sample is not None:
            await self._delete_sample()
            stopped.append(f"the sample Deployment {self.sample.namespace}/{self.sample.name}")
        if self.fleet is not None and self.fleet.bases:
            count = len(self.fleet.bases)
            for base in self.fleet.bases:
                with contextlib.suppress(Exception):
                    await base.graceful_exit()
            await self.fleet.stop()
            stopped.append(f"{count} simulated bases")
            if existing and self._operator_exit() is None:
                await self._wait_nodes_gone()
        if self.operator is not None:
            operator = self.operator
            await asyncio.to_thread(lambda: process.stop(operator))
            stopped.append("the operator")
        if existing:
            await self._delete_leftover_nodes()
        if self.api is not None:
            await self.api.close()
        if self.testbed_dir is not None:
            self.say("Stopping the testbed.")
            testbed_dir = self.testbed_dir
            names = await asyncio.to_thread(lambda: testbed.down(testbed_dir))
            if names:
                stopped.append(f"the testbed ({', '.join(names)})")
        (self.options.state_dir / STATE_FILE).unlink(missing_ok=True)
        if stopped:
            self.say(f"Stopped {', '.join(stopped)}. Logs are in {self.options.state_dir}.")

    async def _delete_sample(self) -> None:
        assert self.sample is not None
        sample = self.sample
        await asyncio.to_thread(
            lambda: self._kubectl(
                "delete",
                "deployment",
                sample.name,
                "-n",
                sample.namespace,
                "--wait=false",
                check=False,
            )
        )
        if self._operator_exit() is not None or self.api is None:
            return
        # The operator uninstalls the modules and removes the pods; give it a moment.
        core = client.CoreV1Api(self.api)
        selector = ",".join(f"{k}={v}" for k, v in sample.selector.items())
        deadline = time.monotonic() + CLEANUP_WAIT_SECONDS
        while time.monotonic() < deadline:
            with contextlib.suppress(ApiException, OSError, TimeoutError):
                pods = await core.list_namespaced_pod(sample.namespace, label_selector=selector)
                if not pods.items:
                    return
            await asyncio.sleep(0.5)

    def _node_selector(self) -> str:
        return f"{COMPONENT_LABEL}=vnode,{ENV_LABEL}={self.options.env}"

    async def _wait_nodes_gone(self) -> None:
        if self.api is None:
            return
        core = client.CoreV1Api(self.api)
        deadline = time.monotonic() + CLEANUP_WAIT_SECONDS
        while time.monotonic() < deadline:
            with contextlib.suppress(ApiException, OSError, TimeoutError):
                nodes = await core.list_node(label_selector=self._node_selector())
                if not nodes.items:
                    return
            await asyncio.sleep(0.5)

    async def _delete_leftover_nodes(self) -> None:
        """On a cluster that outlives the demo, its nodes and leases do not."""
        if self.api is None:
            return
        core = client.CoreV1Api(self.api)
        leases = client.CoordinationV1Api(self.api)
        try:
            nodes = await core.list_node(label_selector=self._node_selector())
        except (ApiException, OSError, TimeoutError) as error:
            self.say(f"Could not list the demo's nodes to remove them: {error}")
            return
        for node in nodes.items:
            name = node.metadata.name
            with contextlib.suppress(ApiException, OSError, TimeoutError):
                await core.delete_node(name)
            with contextlib.suppress(ApiException, OSError, TimeoutError):
                await leases.delete_namespaced_lease(name, LEASE_NAMESPACE)
        if nodes.items:
            self.say(f"Removed {len(nodes.items)} nodes the operator left behind.")


def status_line(snapshot: Snapshot) -> str:
    """One line for logs and pipes: how many bases, nodes and pods, and the pods' states."""
    connected = sum(b.connected for b in snapshot.bases)
    ready_nodes = sum(n.ready == "True" for n in snapshot.nodes)
    pods = "; ".join(
        f"{p.name} {p.phase}{' Ready' if p.ready else ''}"
        + (f" on {p.node}" if p.node else "")
        + (f" ({p.detail})" if p.detail and not p.ready else "")
        for p in snapshot.pods
    )
    line = (
        f"bases {connected}/{len(snapshot.bases)} connected; nodes {ready_nodes}/"
        f"{len(snapshot.nodes)} Ready; module pods: {pods or 'none'}"
    )
    if snapshot.error:
        line += f"; cluster unreadable: {snapshot.error}"
    return line
