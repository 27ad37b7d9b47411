"""ModuleRollouts end to end: the issue's release on 6 simulated bases and a 6-replica
Deployment, a jar that fails to download, the template put back, a base restarting in the
middle of a release, and the CRD's schema (the scene: tests/e2e/rollouts_support.py).

The real operator process (restarted in the middle of a paused step), the real Deployment,
ReplicaSet and garbage-collector controllers, the real scheduler. Throughout each release a
watcher checks every 0.1 s that no base is left without an ACTIVATED module.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client

from module_controller.rollouts.model import GROUP, PLURAL, VERSION
from module_controller.simulator.jars import write_module_jar
from module_controller.testbed.kube_reads import is_ready
from module_controller.testbed.process import free_port
from tests.e2e.conftest import BaseFactory, OperatorFactory
from tests.e2e.modules_support import deployment, modules_of, set_modules
from tests.e2e.rollouts_support import (
    BASES,
    NAME,
    Scene,
    SceneFactory,
    approve,
    release_deployment,
    set_template,
    start_operator,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.usefixtures("env_nodes_cleanup")

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "manifests" / "06-modulerollout-crd.yaml"
CRD_NAME = f"{PLURAL}.{GROUP}"


@pytest.fixture(scope="module")
def rollout_crd(kubectl: list[str]) -> Iterator[None]:
    """The CRD, applied before any operator starts (Kopf looks resources up at start);
    deleted afterwards unless it was there before (an operator whose ClusterRole does not
    name modulerollouts would otherwise be refused its watch)."""
    existed = not subprocess.run([*kubectl, "get", "crd", CRD_NAME], capture_output=True).returncode
    for command in (
        ["apply", "-f", str(CRD)],
        ["wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=30s"],
    ):
        # kubectl's stderr says why (an apiserver that refuses the schema names the rule).
        done = subprocess.run([*kubectl, *command], capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"kubectl {' '.join(command)}:\n{done.stderr}"
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
        failed = len(reasons)
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
    # One PodFailed per failure the status counted (v1.33.13 once had 3 of them).
    assert reasons.count("PodFailed") >= failed and "RolledBack" in reasons, reasons


def apply_rollout(
    kubectl: list[str], namespace: str, name: str, replicas: str
) -> subprocess.CompletedProcess[str]:
    """`kubectl apply` of a one-step ModuleRollout of Deployment biz1."""
    text = f"""
apiVersion: {GROUP}/{VERSION}
kind: ModuleRollout
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  workloadRef: {{name: biz1}}
  steps: [{{replicas: {replicas}}}]
"""
    return subprocess.run(
        [*kubectl, "apply", "-f", "-"], input=text, capture_output=True, text=True, check=False
    )


@pytest.mark.usefixtures("rollout_crd")
async def test_a_step_of_150_percent_is_refused_at_apply(
    kubectl: list[str], namespace: str
) -> None:
    done = apply_rollout(kubectl, namespace, "bad", '"150%"')
    assert done.returncode != 0
    # The value after "Invalid value:" is "150%" from v1.36 on, "" before (the apiserver
    # printed the schema's type, which an int-or-string lacks): the message names it.
    said = r'spec\.steps\[0\]\.replicas: Invalid value: "(150%)?": ' + re.escape(
        "a step's replicas is a number of pods (0 or more) or a share of the Deployment's "
        'replicas from 0% to 100%, such as 1, 3 or "50%" (got "150%")'
    )
    assert re.search(said, done.stderr), done.stderr


@pytest.mark.usefixtures("rollout_crd")
async def test_a_rollouts_workload_ref_cannot_be_changed(
    kubectl: list[str], namespace: str
) -> None:
    """Retargeted, a rollout would leave its first Deployment paused for good."""
    assert apply_rollout(kubectl, namespace, "fixed", '"100%"').returncode == 0
    done = subprocess.run(
        [
            *kubectl,
            "patch",
            "modulerollout",
            "fixed",
            "-n",
            namespace,
            "--type=merge",
            "-p",
            '{"spec":{"workloadRef":{"name":"biz2"}}}',
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert (
        "workloadRef cannot be changed; delete the ModuleRollout and create another" in done.stderr
    ), done.stderr


async def a_paused_beta_of_2_0_0(scene: Scene, test_env: str) -> None:
    """Every base on 1.0.0, then a release of 2.0.0 paused at its one-pod beta."""
    steps = [{"replicas": 1, "pause": {}}, {"replicas": "100%"}]
    body = deployment(NAME, test_env, BASES, [(NAME, "1.0.0")], spread=True)
    await release_deployment(scene, body, steps)
    await set_template(scene, lambda t: set_modules(t, [(NAME, "2.0.0")]))
    await scene.wait_status("the beta paused", 60, phase="Paused", currentStep=0)


@pytest.mark.usefixtures("rollout_crd")
async def test_putting_the_template_back_after_a_ready_beta_restores_every_base(
    open_scene: SceneFactory, test_env: str
) -> None:
    scene = await open_scene()
    await a_paused_beta_of_2_0_0(scene, test_env)
    await set_template(scene, lambda t: set_modules(t, [(NAME, "1.0.0")]))
    await scene.wait_status("the release rolled back", 60, phase="RolledBack")

    async def restored() -> bool:
        old = await scene.pods_of("1.0.0")
        return (
            not await scene.pods_of("2.0.0")
            and len(old) == BASES
            and all(is_ready(p) for p in old)
            and all(modules_of(b) == {f"{NAME}:1.0.0": "ACTIVATED"} for b in scene.bases)
        )

    await wait_for(restored, timeout=15, what="every base back on 1.0.0", diagnose=scene.describe)


@pytest.mark.usefixtures("rollout_crd")
async def test_a_base_restarting_during_the_paused_beta_is_given_the_stable_version(
    open_scene: SceneFactory, test_env: str
) -> None:
    scene = await open_scene()
    await a_paused_beta_of_2_0_0(scene, test_env)
    [beta] = await scene.pods_of("2.0.0")
    base = next(b for b in scene.bases if f"virtual-node-{b.identity}" != beta.spec.node_name)
    node = f"virtual-node-{base.identity}"
    asked = len(base.received("baseline"))
    await base.restart()  # same identity: the same node and old pod, no module installed

    async def answered() -> list[Any] | None:
        baselines = base.received("baseline")
        return baselines[-1].payload if len(baselines) > asked else None

    baseline = await wait_for(answered, timeout=20, what="its baseline", diagnose=scene.describe)
    # Not the Deployment's template (2.0.0): the new version reaches a base by a step only.
    assert [(m["bizName"], m["bizVersion"]) for m in baseline] == [(NAME, "1.0.0")]

    async def serving_again() -> bool:
        old = [p for p in await scene.pods_of("1.0.0") if p.spec.node_name == node]
        only_old = modules_of(base) == {f"{NAME}:1.0.0": "ACTIVATED"}
        return len(old) == 1 and is_ready(old[0]) and only_old

    await wait_for(
        serving_again, timeout=20, what="the base serving 1.0.0 again", diagnose=scene.describe
    )
    status = await scene.status()
    assert (status["phase"], status["pods"]) == ("Paused", "1/6")
    assert len(await scene.pods_of("2.0.0")) == 1
