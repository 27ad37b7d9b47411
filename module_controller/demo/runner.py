"""The demo itself: set up, watch, stop everything it started."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

import yaml
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller.demo import cluster_io, operators
from module_controller.demo.operators import Replica
from module_controller.demo.options import (
    BASE_NAME,
    BASE_VERSION,
    BASES_CONNECT_TIMEOUT_SECONDS,
    EXIT_INTERRUPTED,
    EXIT_NOT_READY,
    EXIT_OK,
    EXIT_SETUP_FAILED,
    KUBECTL_TIMEOUT_SECONDS,
    OPERATOR_READY_TIMEOUT_SECONDS,
    STATE_FILE,
    Options,
    bases_mqtt_settings,
)
from module_controller.demo.replicas import replica_rows
from module_controller.demo.state import DemoState, load_state
from module_controller.demo.view import (
    BaseRow,
    Sample,
    Snapshot,
    kubectl_hints,
    node_row,
    pod_row,
    render,
    status_line,
)
from module_controller.go_compat import own_namespace
from module_controller.simulator.config import BaseConfig
from module_controller.simulator.fleet import Fleet
from module_controller.testbed import testbed
from module_controller.testbed.binaries import BuildFailed, ensure_binaries
from module_controller.testbed.mosquitto import BrokerInfo
from module_controller.testbed.process import ComponentFailed
from module_controller.vnode_manifest import now_utc

log = logging.getLogger(__name__)
T = TypeVar("T")

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
        self.operators: list[Replica] = []
        self.members_namespace = "default"  # the operators' NAMESPACE, set when they start
        self.fleet: Fleet | None = None
        self.api: client.ApiClient | None = None
        self.sample: Sample | None = None
        self.created_deployment = False
        self.first_ready_after: float | None = None
        self.timeline: list[str] = []
        self.last_status = ""

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
        await self._start_operators()
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
        """A demo killed outright (SIGKILL) leaves its operators and testbed; stop them."""
        previous = load_state(self.options.state_dir)
        if previous is None:
            return
        records = previous.operator_records()
        if pids := await self._step(lambda: operators.stop_leftovers(records)):
            self.say(f"Stopped the operators a previous demo left running (pids {pids}).")
        (self.options.state_dir / STATE_FILE).unlink(missing_ok=True)

    async def _start_operators(self) -> None:
        assert self.kubeconfig is not None and self.broker is not None
        inherited = dict(os.environ)
        if self.testbed_dir is not None:
            # The testbed's broker has no TLS: settings from the caller's shell do not apply.
            inherited = {k: v for k, v in inherited.items() if not k.startswith("MQTT_")}
        self.members_namespace = inherited.get("NAMESPACE") or own_namespace()
        count, env = self.options.replicas, self.options.env
        ids = operators.client_ids(env, count, own_broker=self.testbed_dir is not None)
        what = "the operator" if count == 1 else f"{count} operator replicas"
        self.say(
            f"Starting {what} (ENV={env}, CLIENT_ID {', '.join(ids)}); logs in "
            f"{self.options.state_dir}."
        )
        start = functools.partial(
            operators.start_replica,
            count=count,
            kubeconfig=self.kubeconfig,
            env=env,
            broker=self.broker,
            members_namespace=self.members_namespace,
            state_dir=self.options.state_dir,
            inherited=inherited,
        )
        for client_id in ids:
            self.operators.append(start(client_id))  # known at once: stopped on leaving
            self._save_state()
        await operators.wait_ready(self.operators, OPERATOR_READY_TIMEOUT_SECONDS)
        self.mark(
            f"{what} {'were' if count > 1 else 'was'} ready (connected to cluster and broker)"
        )

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
            operators=[r.process.record for r in self.operators if r.process.record],
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
        settings = bases_mqtt_settings(self.broker, own_testbed=self.testbed_dir is not None)
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
        try:
            nodes, pods = await cluster_io.module_pods_and_nodes(
                self.api, self.options.env, sample.namespace
            )
            node_leases, member_leases = await cluster_io.replica_leases(
                self.api, self.options.env, self.members_namespace
            )
        except cluster_io.GONE_ERRORS as error:
            return Snapshot(bases, [], [], error=" ".join(str(error).split())[:200])
        node_rows = sorted((node_row(n) for n in nodes), key=lambda row: row.ip)
        pod_rows = sorted((pod_row(p) for p in pods), key=lambda row: row.name)
        replicas = replica_rows(node_leases, member_leases, now_utc())
        self._note_first_ready(pods)
        return Snapshot(bases, node_rows, pod_rows, replicas=replicas)

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

    def header(self) -> list[str]:
        assert self.broker is not None
        where = "testbed" if self.testbed_dir else "existing cluster"
        lines = [
            f"Koupleless Module Controller demo — running {self.elapsed():.0f}s — Ctrl-C stops "
            "everything it started",
            f"  cluster: {where} (KUBECONFIG={self.kubeconfig})",
            f"  broker: {self._broker_text()}   ENV: {self.options.env}",
        ]
        lines += operators.header_lines(self.operators, self.options.state_dir)
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
            exited = operators.first_exit(self.operators)
            if exited is not None:
                client_id, code = exited
                await self._diagnose(snapshot, f"the operator {client_id} exited with code {code}")
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
        assert self.api is not None
        lines = [f"The demo failed: {what}.", "", self.screen(snapshot), ""]
        lines.append("Timeline: " + "; ".join(self.timeline) + ".")
        lines.append("")
        lines += await cluster_io.recent_events(self.api, self._load_sample().namespace)
        lines.append("")
        lines += operators.log_tails(self.operators)
        print("\n".join(lines), file=self.out, flush=True)

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
            if existing and operators.any_running(self.operators) and self.api is not None:
                await cluster_io.wait_nodes_gone(self.api, self.options.env)
        if self.operators:
            await operators.stop_all(self.operators)
            count = len(self.operators)
            stopped.append("the operator" if count == 1 else f"{count} operator replicas")
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
        if not operators.any_running(self.operators) or self.api is None:
            return
        # The operator uninstalls the modules and removes the pods; give it a moment.
        selector = ",".join(f"{k}={v}" for k, v in sample.selector.items())
        await cluster_io.wait_pods_gone(self.api, sample.namespace, selector)

    async def _delete_leftover_nodes(self) -> None:
        """On a cluster that outlives the demo, its nodes and leases do not."""
        if self.api is None:
            return
        try:
            removed = await cluster_io.delete_env_nodes(self.api, self.options.env)
        except cluster_io.GONE_ERRORS as error:
            self.say(f"Could not list the demo's nodes to remove them: {error}")
            return
        if removed:
            self.say(f"Removed {removed} nodes the operator left behind.")
