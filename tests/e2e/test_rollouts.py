"""ModuleRollouts end to end: the issue's release on 6 simulated bases and a 6-replica
Deployment, a jar that fails to download, and the CRD's schema.

The real operator process (restarted in the middle of a paused step), the real Deployment,
ReplicaSet and garbage-collector controllers, the real scheduler. Throughout each release a
watcher checks every 0.1 s that no base is left without an ACTIVATED module.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller.rollouts.model import GROUP, PLURAL, ROLLOUT_LABEL, VERSION
from module_controller.simulator.base import SimulatedBase
from module_controller.simulator.jars import write_module_jar
from module_controller.testbed.kube_reads import is_ready
from module_controller.testbed.operator_process import OperatorProcess
from module_controller.testbed.process import free_port
from tests.e2e.conftest import BaseFactory, OperatorFactory
from tests.e2e.modules_support import deployment, manifest, modules_of, set_modules, wait_pods
from tests.waiting import wait_for

pytestmark = pytest.mark.usefixtures("env_nodes_cleanup")

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "manifests" / "06-modulerollout-crd.yaml"
CRD_NAME = f"{PLURAL}.{GROUP}"
BASES = 6
NAME = "biz1"


def start_operator(run_operator: OperatorFactory, metrics_port: int) -> OperatorProcess:
    """The operator with short install retries and its /metrics on `metrics_port`."""
    return run_operator(
        None,
        METRICS_PORT=str(metrics_port),
        INVENTORY_POLL_SECONDS="2",
        INSTALL_RETRY_SECONDS="1",
        INSTALL_RETRY_MAX_SECONDS="4",
    )


@pytest.fixture(scope="module")
def rollout_crd(kubectl: list[str]) -> Iterator[None]:
    """The CRD, applied before any operator starts (Kopf looks resources up at start);
    deleted afterwards unless it was there before (an operator whose ClusterRole does not
    name modulerollouts would otherwise be refused its watch)."""
    existed = not subprocess.run([*kubectl, "get", "crd", CRD_NAME], capture_output=True).returncode
    subprocess.run([*kubectl, "apply", "-f", str(CRD)], check=True, capture_output=True)
    subprocess.run(
        [*kubectl, "wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=30s"],
        check=True,
        capture_output=True,
    )
    # Established comes a moment before its storage answers lists (429 until then).
    deadline = time.monotonic() + 30
    while subprocess.run(
        [*kubectl, "get", PLURAL, "-A"], capture_output=True, check=False
    ).returncode:
        assert time.monotonic() < deadline, f"{PLURAL} cannot be listed 30s after the CRD"
        time.sleep(0.2)
    yield
    if not existed:
        subprocess.run([*kubectl, "delete", "crd", CRD_NAME, "--wait=false"], check=False)


class Scene:
    """One test's operator, its 6 bases and namespace, with the reads every wait needs."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        operator: OperatorProcess,
        metrics_port: int,
        bases: list[SimulatedBase],
    ) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.namespace = namespace
        self.operator = operator
        self.metrics_port = metrics_port
        self.bases = bases
        self.without_module: list[str] = []

    async def status(self) -> dict[str, Any]:
        found = await self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, NAME
        )
        return dict(found.get("status") or {})

    async def describe(self) -> str:
        lines = [f"rollout status: {await self.status()}"]
        replica_sets = await self.apps.list_namespaced_replica_set(self.namespace)
        for rs in replica_sets.items:
            owners = rs.metadata.owner_references or []
            owner = owners[0] if owners else None
            image = rs.spec.template.spec.containers[0].image
            lines.append(
                f"rs {rs.metadata.name} replicas={rs.spec.replicas} "
                f"ready={rs.status.ready_replicas} owner={owner.kind if owner else None} {image}"
            )
        lines += [f"base {b.config.ip}: {modules_of(b)}" for b in self.bases]
        lines.append(self.operator.tail(30))
        return "\n".join(lines)

    async def wait_status(self, what: str, timeout: float, **expected: Any) -> dict[str, Any]:
        async def reached() -> dict[str, Any] | None:
            status = await self.status()
            return status if all(status.get(k) == v for k, v in expected.items()) else None

        return await wait_for(reached, timeout=timeout, what=what, diagnose=self.describe)

    async def pods_of(self, version: str) -> list[client.V1Pod]:
        pods = await self.core.list_namespaced_pod(self.namespace, label_selector=f"app={NAME}")
        return [
            p
            for p in pods.items
            if p.metadata.deletion_timestamp is None
            and any(e.value == version for e in p.spec.containers[0].env or [])
        ]

    def reconciles(self) -> float:
        """How often the operator has looked at a rollout (its own metric)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            text = answer.read().decode()
        found = re.search(r"^module_controller_module_rollout_reconciles_total (\S+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    async def looked(self, more_than: float) -> bool:
        """Raises while the operator does not listen yet (a wait goes on then)."""
        return self.reconciles() > more_than

    async def events(self) -> list[str]:
        found = await self.core.list_namespaced_event(
            self.namespace,
            field_selector=f"involvedObject.kind=ModuleRollout,involvedObject.name={NAME}",
        )
        # Event names end in the hex nanoseconds of their making: in name order, in time order.
        return [e.reason for e in sorted(found.items, key=lambda e: e.metadata.name)]

    async def give_back(self) -> None:
        """Delete the ModuleRollout and wait for the operator to resume its Deployment."""
        try:
            await self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, NAME
            )
        except ApiException as error:
            if error.status != 404:
                raise

        async def given_back() -> bool:
            try:
                found = await self.apps.read_namespaced_deployment(NAME, self.namespace)
            except ApiException as error:
                return error.status == 404
            return ROLLOUT_LABEL not in (found.metadata.labels or {}) and not found.spec.paused

        await wait_for(
            given_back, timeout=20, what="the Deployment given back", diagnose=self.describe
        )

    @contextlib.asynccontextmanager
    async def every_base_keeps_its_module(self) -> AsyncIterator[None]:
        """Watch the bases while the block runs: each must hold an ACTIVATED biz1."""

        async def watch() -> None:
            while True:
                for base in self.bases:
                    states = [b.state.value for b in base.modules() if b.name == NAME]
                    if "ACTIVATED" not in states:
                        self.without_module.append(f"{time.time():.1f} {base.config.ip} {states}")
                await asyncio.sleep(0.1)

        task = asyncio.create_task(watch())
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert not self.without_module, "bases left without the module:\n" + "\n".join(
            self.without_module[:20]
        )


class SceneFactory(Protocol):
    async def __call__(self, **base_config: Any) -> Scene: ...


@pytest.fixture
async def open_scene(
    k8s_api: client.ApiClient,
    namespace: str,
    run_operator: OperatorFactory,
    start_base: BaseFactory,
) -> AsyncIterator[SceneFactory]:
    """Opens a scene (operator, 6 bases with `base_config`, their nodes Ready); at the end
    deletes its ModuleRollout while the operator still runs, so its Deployment is given
    back, and not left paused and labelled for another test's operator to find."""
    opened: list[Scene] = []

    async def make(**base_config: Any) -> Scene:
        port = free_port()
        operator = start_operator(run_operator, port)
        bases = [await start_base(**base_config) for _ in range(BASES)]
        scene = Scene(k8s_api, namespace, operator, port, bases)
        opened.append(scene)

        async def nodes_ready() -> bool:
            nodes = await scene.core.list_node(label_selector="base.koupleless.io/name=base")
            names = {f"virtual-node-{b.identity}" for b in bases}
            ready = {n.metadata.name for n in nodes.items if is_ready(n)}
            return names <= ready

        await wait_for(
            nodes_ready, timeout=60, what="the bases' nodes Ready", diagnose=scene.describe
        )
        return scene

    yield make
    for scene in opened:
        await scene.give_back()


async def release_deployment(
    scene: Scene, body: dict[str, Any], steps: list[Any], **spec: Any
) -> None:
    """The Deployment, all Ready, then its ModuleRollout attached (the Deployment paused)."""
    await scene.apps.create_namespaced_deployment(scene.namespace, manifest(body))
    await wait_pods(
        scene.core,
        scene.namespace,
        f"app={NAME}",
        lambda pods: len(pods) == BASES and all(is_ready(p) for p in pods),
        "6 pods of 1.0.0 Ready",
        60,
        scene.describe,
    )
    rollout = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModuleRollout",
        "metadata": {"name": NAME},
        "spec": {
            "workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME},
            "steps": steps,
            **spec,
        },
    }
    await scene.custom.create_namespaced_custom_object(
        GROUP, VERSION, scene.namespace, PLURAL, rollout
    )
    await scene.wait_status("the rollout attached", 30, phase="Succeeded")
    paused = await scene.apps.read_namespaced_deployment(NAME, scene.namespace)
    assert paused.spec.paused is True


async def set_template(scene: Scene, change: Any) -> None:
    """What `kubectl set image` does: a read-modify-write that keeps `spec.paused` (a
    replace with a manifest that lacks it would resume the Deployment)."""
    current = scene.api.sanitize_for_serialization(
        await scene.apps.read_namespaced_deployment(NAME, scene.namespace)
    )
    change(current["spec"]["template"])
    await scene.apps.replace_namespaced_deployment(NAME, scene.namespace, current)


def approve(scene: Scene, kubeconfig: Path) -> str:
    command = ["rollout", "approve", NAME, "-n", scene.namespace]
    done = subprocess.run(
        [sys.executable, "-m", "module_controller", *command],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.usefixtures("rollout_crd")
async def test_beta_approval_grace_time_and_a_restart_release_every_base(
    open_scene: SceneFactory,
    namespace: str,
    run_operator: OperatorFactory,
    test_env: str,
    kubectl: list[str],
    kubeconfig: Path,
    tmp_path: Path,
) -> None:
    scene = await open_scene()
    # The issue's steps, with a grace time of 3 s.
    steps = [{"replicas": 1, "pause": {}}, {"replicas": "50%", "pause": {"duration": 3}}]
    body = deployment(NAME, test_env, BASES, [(NAME, "1.0.0")], spread=True)
    await release_deployment(scene, body, [*steps, {"replicas": "100%"}])
    recording = (tmp_path / "watch.txt").open("w")
    # In the background for the README's recording: `kubectl get modulerollouts -w`.
    watcher = subprocess.Popen(  # noqa: ASYNC220
        [*kubectl, "get", "modulerollouts", "-n", namespace, "-w"],
        stdout=recording,
        stderr=subprocess.STDOUT,
    )
    try:
        async with scene.every_base_keeps_its_module():
            await set_template(scene, lambda t: set_modules(t, [(NAME, "2.0.0")]))

            # The beta: exactly one new pod Ready, and so it stays until approved.
            await scene.wait_status("the beta paused", 60, phase="Paused", currentStep=0)
            new = await scene.pods_of("2.0.0")
            assert len(new) == 1 and is_ready(new[0])
            looks = scene.reconciles()
            # Typed Any: the client's stubs leave out `_content_type`, which it does take.
            patch: Any = scene.custom.patch_namespaced_custom_object
            await patch(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                NAME,
                {"metadata": {"annotations": {"poke": "1"}}},
                _content_type="application/merge-patch+json",
            )
            await wait_for(
                lambda: scene.looked(looks),
                timeout=20,
                what="another look at the paused rollout",
                diagnose=scene.describe,
            )
            assert (await scene.status())["phase"] == "Paused"
            assert len(await scene.pods_of("2.0.0")) == 1

            # A restart in the middle of the paused step: still paused, still one new pod.
            scene.operator.stop()
            scene.metrics_port = free_port()
            scene.operator = start_operator(run_operator, scene.metrics_port)
            await wait_for(
                lambda: scene.looked(0),
                timeout=30,
                what="the restarted operator's first look",
                diagnose=scene.describe,
            )
            status = await scene.status()
            assert (status["phase"], status["currentStep"], status["pods"]) == ("Paused", 0, "1/6")
            assert len(await scene.pods_of("2.0.0")) == 1
            assert (
                await scene.apps.read_namespaced_deployment(NAME, namespace)
            ).spec.paused is True

            # Approved: 50 % with a grace time of 3 s goes on by itself, then 100 %.
            told = approve(scene, kubeconfig)
            assert told == f"approved step 1/3 of ModuleRollout {namespace}/{NAME}"
            await scene.wait_status("the release done", 120, phase="Succeeded", step="3/3")
    finally:
        watcher.terminate()
        watcher.wait(10)
        recording.close()
    print("\n" + (tmp_path / "watch.txt").read_text())

    for base in scene.bases:
        assert modules_of(base) == {f"{NAME}:2.0.0": "ACTIVATED"}, base.describe()
    replica_sets = (await scene.apps.list_namespaced_replica_set(namespace)).items
    owners = {(rs.metadata.owner_references or [])[0].kind for rs in replica_sets}
    assert owners == {"Deployment"}, "the canary was handed over"
    assert sorted(rs.spec.replicas for rs in replica_sets) == [0, BASES]
    history = subprocess.run(
        [*kubectl, "rollout", "history", f"deployment/{NAME}", "-n", namespace],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert re.search(r"^2\s", history, re.M), history
    reasons = await scene.events()
    for reason in ("ReleaseStarted", "StepPaused", "StepApproved", "HandedOver", "Succeeded"):
        assert reason in reasons, reasons
    assert reasons.count("StepStarted") == 3, reasons

    # Deleting the ModuleRollout gives the Deployment back to its controller, resumed.
    await scene.give_back()


@pytest.mark.usefixtures("rollout_crd")
async def test_a_jar_that_fails_to_download_stops_the_release_and_rolls_it_back(
    open_scene: SceneFactory,
    namespace: str,
    test_env: str,
    tmp_path: Path,
) -> None:
    scene = await open_scene(fetch_jars=True)
    good = write_module_jar(tmp_path / "biz1-1.0.0-ark-biz.jar", NAME, "1.0.0")
    body = deployment(NAME, test_env, BASES, [(NAME, "1.0.0")], spread=True)
    body["spec"]["template"]["spec"]["containers"][0]["image"] = f"file://{good}"
    steps = [{"replicas": 2, "pause": {}}, {"replicas": "100%"}]
    await release_deployment(scene, body, steps, failureBudget=1, readyTimeoutSeconds=60)
    missing = tmp_path / "never-written" / "biz1-2.0.0-ark-biz.jar"

    def bad_jar(template: dict[str, Any]) -> None:
        set_modules(template, [(NAME, "2.0.0")])
        template["spec"]["containers"][0]["image"] = f"file://{missing}"

    async with scene.every_base_keeps_its_module():
        await set_template(scene, bad_jar)
        status = await scene.wait_status("the release rolled back", 60, phase="RolledBack")
        # Past a budget of 1: at least two failures, more when a replacement pod failed too
        # before the rollback landed (a slow machine); every one of them an install failure.
        reasons = [f["reason"] for f in status["failures"]]
        assert len(reasons) >= 2 and set(reasons) == {"InstallFailed"}, reasons
        assert "java.io.FileNotFoundException" in status["failures"][0]["message"]

        async def back() -> bool:
            template = (await scene.apps.read_namespaced_deployment(NAME, namespace)).spec.template
            old = await scene.pods_of("1.0.0")
            return (
                template.spec.containers[0].image == f"file://{good}"
                and not await scene.pods_of("2.0.0")
                and len(old) == BASES
                and all(is_ready(p) for p in old)
            )

        await wait_for(
            back, timeout=60, what="the Deployment back on 1.0.0", diagnose=scene.describe
        )
    for base in scene.bases:
        assert modules_of(base) == {f"{NAME}:1.0.0": "ACTIVATED"}, base.describe()
    reasons = await scene.events()
    assert reasons.count("PodFailed") == 2 and "RolledBack" in reasons, reasons


@pytest.mark.usefixtures("rollout_crd")
async def test_a_step_of_150_percent_is_refused_at_apply(
    kubectl: list[str], namespace: str
) -> None:
    bad = f"""
apiVersion: {GROUP}/{VERSION}
kind: ModuleRollout
metadata: {{name: bad, namespace: {namespace}}}
spec:
  workloadRef: {{name: biz1}}
  steps: [{{replicas: "150%"}}]
"""
    done = subprocess.run(
        [*kubectl, "apply", "-f", "-"], input=bad, capture_output=True, text=True, check=False
    )
    assert done.returncode != 0
    assert (
        'spec.steps[0].replicas: Invalid value: "150%": a step\'s replicas is a number of pods '
        "(0 or more) or a share of the Deployment's replicas from 0% to 100%"
    ) in done.stderr, done.stderr
