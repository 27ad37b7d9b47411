"""Helpers for module end-to-end tests: workloads of module pods and watching them."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes_asyncio import client, watch

from module_controller.simulator.base import SimulatedBase
from module_controller.testbed.kube_reads import is_ready
from tests.waiting import wait_for

SAMPLE = Path(__file__).parents[2] / "samples" / "module-deployment.yaml"
MODULE_LABEL = "module-controller.koupleless.io/component"
JAR = "https://repo.example/modules/{name}-{version}-ark-biz.jar"


def manifest(body: dict[str, Any]) -> Any:
    """The client is typed for model objects but sends plain dicts as they are."""
    return body


def sample_deployment() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SAMPLE.read_text())
    return loaded


def module_container(name: str, version: str) -> dict[str, Any]:
    return {
        "name": name,
        "image": JAR.format(name=name, version=version),
        "env": [{"name": "BIZ_VERSION", "value": version}],
    }


def pod_template(
    app: str,
    env: str,
    modules: list[tuple[str, str]],
    base_name: str = "base",
    base_version: str = "1.1.1",
    spread: bool = False,
) -> dict[str, Any]:
    """The seed's pod template, pinned to one test's env (so tests never share nodes)."""
    template: dict[str, Any] = copy.deepcopy(sample_deployment()["spec"]["template"])
    template["metadata"]["labels"] = {MODULE_LABEL: "module", "app": app}
    spec = template["spec"]
    spec["containers"] = [module_container(name, version) for name, version in modules]
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    expressions = terms["nodeSelectorTerms"][0]["matchExpressions"]
    for expression in expressions:
        if expression["key"] == "base.koupleless.io/version":
            expression["values"] = [base_version]
        if expression["key"] == "base.koupleless.io/name":
            expression["values"] = [base_name]
    spec["nodeSelector"] = {"virtual-kubelet.koupleless.io/env": env}
    if spread:
        # One pod of a version per base, so an update lands next to the old version.
        version = "-".join(v for _, v in modules)
        template["metadata"]["labels"]["version"] = version
        spec["affinity"]["podAntiAffinity"] = {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {
                    "labelSelector": {"matchLabels": {"app": app, "version": version}},
                    "topologyKey": "kubernetes.io/hostname",
                }
            ]
        }
    return template


def bare_pod(name: str, template: dict[str, Any]) -> dict[str, Any]:
    """A bare Pod made from a pod template."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    }


def daemon_set(name: str, env: str, modules: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": pod_template(name, env, modules),
        },
    }


def deployment(
    name: str, env: str, replicas: int, modules: list[tuple[str, str]], **template: Any
) -> Any:
    """A Deployment manifest (typed Any: it goes to the client as it is)."""
    body = sample_deployment()
    body["metadata"] = {"name": name}
    body["spec"]["replicas"] = replicas
    body["spec"]["selector"] = {"matchLabels": {"app": name}}
    body["spec"]["template"] = pod_template(name, env, modules, **template)
    return body


def set_modules(template: dict[str, Any], modules: list[tuple[str, str]]) -> None:
    template["spec"]["containers"] = [module_container(n, v) for n, v in modules]
    if "version" in template["metadata"]["labels"]:
        version = "-".join(v for _, v in modules)
        template["metadata"]["labels"]["version"] = version
        anti = template["spec"]["affinity"]["podAntiAffinity"]
        anti["requiredDuringSchedulingIgnoredDuringExecution"][0]["labelSelector"]["matchLabels"][
            "version"
        ] = version


def modules_of(base: SimulatedBase) -> dict[str, str]:
    """name:version -> state of every module on a simulated base."""
    return {biz.key: biz.state.value for biz in base.modules()}


@dataclass(frozen=True)
class PodEvent:
    type: str  # ADDED, MODIFIED or DELETED
    pod: client.V1Pod
    at: float  # time.time() when it arrived here, comparable with what a base received


class PodHistory:
    """Every pod event of a namespace, in the order the API server produced them."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.events: list[PodEvent] = []
        self.errors: list[str] = []  # of the watch, which then goes on
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """List, then watch from the list's resource version in the background.

        Every change made once this returns is recorded, however long the watch takes
        to connect: the API server replays what happened since that version.
        """
        listed = await self.core.list_namespaced_pod(self.namespace)
        self._task = asyncio.create_task(self._watch(listed.metadata.resource_version))

    async def _watch(self, version: str) -> None:
        while True:
            stream = watch.Watch()
            try:
                async with stream.stream(
                    self.core.list_namespaced_pod,
                    self.namespace,
                    resource_version=version,
                    timeout_seconds=300,
                ) as events:
                    async for event in events:
                        pod = event["object"]
                        version = pod.metadata.resource_version
                        self.events.append(PodEvent(event["type"], pod, time.time()))
            except Exception as error:  # a busy API server: go on from the last version
                self.errors.append(repr(error))
                await asyncio.sleep(0.5)

    def of(self, name: str) -> list[PodEvent]:
        return [event for event in self.events if event.pod.metadata.name == name]

    async def stop_once_ready_seen(self, pods: Sequence[client.V1Pod]) -> None:
        """Stop once the watch has delivered each of `pods` Ready: a list may show a pod
        Ready before the watch delivers that event, which stopping then would miss."""
        names = {pod.metadata.name for pod in pods}

        def unseen() -> set[str]:
            return names - {e.pod.metadata.name for e in self.events if is_ready(e.pod)}

        async def all_seen() -> bool:
            return not unseen()

        async def diagnose() -> str:
            return f"not seen Ready by the watch: {sorted(unseen())}; its errors: {self.errors}"

        await wait_for(
            all_seen, timeout=15, what="the pod watch to see each new pod Ready", diagnose=diagnose
        )
        await self.stop()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


async def wait_inventory_polls(
    bases: Sequence[SimulatedBase],
    *,
    after: float,
    polls: int,
    timeout: float,
    diagnose: Callable[[], Awaitable[str]] | None = None,
) -> None:
    """Wait until every base has received `polls` inventory queries (queryAllBiz) since the
    wall-clock time `after`: the operator has read what the bases run since then, and
    acted on all but the last of those reads."""

    async def polled() -> bool:
        return all(
            sum(1 for c in base.received("queryAllBiz") if c.at >= after) >= polls for base in bases
        )

    await wait_for(
        polled, timeout=timeout, what=f"{polls} inventory polls of every base", diagnose=diagnose
    )


async def wait_pods(
    core: client.CoreV1Api,
    namespace: str,
    selector: str,
    check: Callable[[list[client.V1Pod]], bool],
    what: str,
    timeout: float = 60,
    diagnose: Callable[[], Awaitable[str]] | None = None,
) -> list[client.V1Pod]:
    async def condition() -> tuple[list[client.V1Pod]] | None:
        pods = (await core.list_namespaced_pod(namespace, label_selector=selector)).items
        return (pods,) if check(pods) else None  # a tuple: "no pods" can be the answer

    async def describe() -> str:
        pods = (await core.list_namespaced_pod(namespace, label_selector=selector)).items
        lines = [
            f"pod {p.metadata.name} node={p.spec.node_name} phase={p.status.phase} "
            f"ready={is_ready(p)} deleting={p.metadata.deletion_timestamp is not None} "
            f"image={[c.image for c in p.spec.containers]}"
            for p in pods
        ]
        extra = await diagnose() if diagnose else ""
        return "\n".join(lines) + "\n" + extra

    (pods,) = await wait_for(condition, timeout=timeout, what=what, diagnose=describe)
    return pods
