"""What tests/e2e/test_rollouts.py works with: one test's operator, 6 simulated bases and a
namespace (`Scene`), with the reads every wait needs, and what a user does to a paced
Deployment (attach a rollout, `kubectl set image`, `module-controller rollout approve`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller.rollouts.model import GROUP, PLURAL, ROLLOUT_LABEL, VERSION
from module_controller.simulator.base import SimulatedBase
from module_controller.testbed.kube_reads import is_ready
from module_controller.testbed.operator_process import OperatorProcess
from tests.e2e.conftest import OperatorFactory
from tests.e2e.modules_support import manifest, modules_of, wait_pods
from tests.waiting import wait_for

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
