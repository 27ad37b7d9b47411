"""Module releases that go wrong, or replace a module in place, end to end.

The real operator process with short retry settings, simulated bases that fetch `file://`
jars and register them under their manifest's name:version as real bases do, over the
real broker. What is checked is what a user sees (pod status, Events, kubectl's READY) and
what the base received (its command log).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller.protocol import BizModel
from module_controller.simulator.base import SimulatedBase
from module_controller.simulator.jars import write_module_jar
from module_controller.testbed.kube_reads import is_ready, is_ready_and_untainted, ready_condition
from module_controller.testbed.operator_process import OperatorProcess
from module_controller.testbed.process import free_port
from tests.e2e.conftest import BaseFactory, OperatorFactory
from tests.e2e.modules_support import (
    PodHistory,
    bare_pod,
    deployment,
    manifest,
    modules_of,
    pod_template,
    wait_inventory_polls,
    wait_pods,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.usefixtures("env_nodes_cleanup")

UPGRADE_ANNOTATION = "module-controller.koupleless.io/upgrade"
# The scene's operator: each base is asked what it runs every 2 s; a module nobody asks
# for is removed 5 s after being seen.
INVENTORY_POLL_SECONDS = 2
ORPHAN_GRACE_SECONDS = 5


class Scene:
    """One test's operator (with its /metrics port), one base, a namespace, a pod watch."""

    def __init__(
        self, api: client.ApiClient, namespace: str, operator: OperatorProcess, metrics_port: int
    ) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.namespace = namespace
        self.operator = operator
        self.metrics_port = metrics_port
        self.base: SimulatedBase | None = None
        self.history = PodHistory(api, namespace)

    @property
    def node(self) -> str:
        assert self.base is not None
        return f"virtual-node-{self.base.identity}"

    def commands(self, name: str | None = None) -> list[tuple[str, Any]]:
        """installBiz / uninstallBiz the base received (for module `name`), in order."""
        assert self.base is not None
        return [
            (c.command, c.payload)
            for c in self.base.received()
            if c.command in ("installBiz", "uninstallBiz")
            and (name is None or c.payload.get("bizName") == name)
        ]

    async def describe(self) -> str:
        assert self.base is not None
        return f"base {self.node}: {self.base.describe()}\n{self.operator.tail(40)}"

    async def polled(self, *, after: float, polls: int) -> None:
        """The base was asked for its modules `polls` times since `after` (time.time(),
        possibly still to come)."""
        assert self.base is not None
        # Until `after`, then the polls, with room for a slow machine.
        timeout = max(0.0, after - time.time()) + polls * INVENTORY_POLL_SECONDS + 15
        await wait_inventory_polls(
            [self.base], after=after, polls=polls, timeout=timeout, diagnose=self.describe
        )

    async def pods(self, selector: str, check: Any, what: str, timeout: float = 40) -> Any:
        return await wait_pods(
            self.core, self.namespace, selector, check, what, timeout, self.describe
        )

    async def pod(self, name: str) -> client.V1Pod:
        return await self.core.read_namespaced_pod(name, self.namespace)

    async def events(self, name: str) -> list[client.CoreV1Event]:
        found = await self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name}"
        )
        return list(found.items)

    def status_writes(self) -> float:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as answer:
            text = answer.read().decode()
        match = re.search(r"^module_controller_pod_status_writes_total (\S+)$", text, re.M)
        assert match is not None, "the operator exports module_controller_pod_status_writes_total"
        return float(match.group(1))


@contextlib.asynccontextmanager
async def open_scene(
    api: client.ApiClient,
    namespace: str,
    run_operator: OperatorFactory,
    start_base: BaseFactory,
    fetch_jars: bool,
) -> AsyncIterator[Scene]:
    port = free_port()
    operator = run_operator(
        METRICS_PORT=str(port),
        INVENTORY_POLL_SECONDS=str(INVENTORY_POLL_SECONDS),
        ORPHAN_GRACE_SECONDS=str(ORPHAN_GRACE_SECONDS),
        INSTALL_RETRY_SECONDS="1",
        INSTALL_RETRY_MAX_SECONDS="4",
    )
    made = Scene(api, namespace, operator, port)
    made.base = await start_base(fetch_jars=fetch_jars)

    async def node_ready() -> bool:
        try:
            node = await made.core.read_node(made.node)
        except ApiException:
            return False
        return is_ready_and_untainted(node)

    await wait_for(node_ready, timeout=40, what="the base's node Ready", diagnose=made.describe)
    await made.history.start()
    try:
        yield made
    finally:
        await made.history.stop()


@pytest.fixture
async def scene(
    k8s_api: client.ApiClient,
    namespace: str,
    run_operator: OperatorFactory,
    start_base: BaseFactory,
) -> AsyncIterator[Scene]:
    """A base that installs any URL (https://repo.example/... included)."""
    async with open_scene(k8s_api, namespace, run_operator, start_base, False) as made:
        yield made


@pytest.fixture
async def fetching_scene(
    k8s_api: client.ApiClient,
    namespace: str,
    run_operator: OperatorFactory,
    start_base: BaseFactory,
) -> AsyncIterator[Scene]:
    """A base that downloads `file://` jars and registers them under their manifest's
    name:version, as a real base does."""
    async with open_scene(k8s_api, namespace, run_operator, start_base, True) as made:
        yield made


def jar_url(path: Path) -> str:
    return f"file://{path}"


def module_pod(name: str, env: str, module: str, version: str, url: str) -> dict[str, Any]:
    template = pod_template(name, env, [(module, version)])
    template["spec"]["containers"][0]["image"] = url
    return bare_pod(name, template)


def ready_message(pod: client.V1Pod) -> str:
    ready = ready_condition(pod)
    assert ready is not None, f"pod {pod.metadata.name} has no Ready condition"
    return str(ready.message)


def shows_ready_anywhere(pod: client.V1Pod) -> bool:
    """What kubectl counts: any condition or container of the pod ready."""
    containers_ready = any(
        c.type == "ContainersReady" and c.status == "True" for c in pod.status.conditions or []
    )
    containers = pod.status.container_statuses or []
    return is_ready(pod) or containers_ready or any(c.ready for c in containers)


async def test_failed_installs_back_off_say_why_and_never_mark_another_version_ready(
    fetching_scene: Scene, test_env: str, tmp_path: Path
) -> None:
    scene = fetching_scene
    missing = tmp_path / "later" / "biz1-1.0.0-ark-biz.jar"
    await scene.core.create_namespaced_pod(
        scene.namespace,
        manifest(module_pod("missing", test_env, "biz1", "1.0.0", jar_url(missing))),
    )
    other = write_module_jar(tmp_path / "biz2-0.0.1.jar", "biz2", "0.0.1")
    await scene.core.create_namespaced_pod(
        scene.namespace, manifest(module_pod("mismatch", test_env, "biz2", "0.0.3", jar_url(other)))
    )

    def reason_is(reason: str) -> Any:
        def check(pods: list[client.V1Pod]) -> bool:
            ready = ready_condition(pods[0]) if pods else None
            return ready is not None and ready.reason == reason

        return check

    [failing] = await scene.pods("app=missing", reason_is("InstallFailed"), "InstallFailed")
    message = ready_message(failing)
    assert "java.io.FileNotFoundException" in message and str(missing) in message, message
    assert "\n" not in message and "\tat " not in message, "the first line, not a stack trace"
    [mismatched] = await scene.pods(
        "app=mismatch", reason_is("ModuleVersionMismatch"), "ModuleVersionMismatch"
    )
    assert ready_message(mismatched) == (
        f"the jar at {jar_url(other)} declares biz2:0.0.1, the pod asks for biz2:0.0.3"
    )
    assert not shows_ready_anywhere(mismatched)

    # A window in which nothing changes but the retries. A deliberate wait: what is measured
    # is how many retries a stretch of time holds, and that the pods stay as they are.
    versions = {p.metadata.name: p.metadata.resource_version for p in (failing, mismatched)}
    before = len(scene.commands("biz1"))
    window = 20.0
    await asyncio.sleep(window)
    retries = len(scene.commands("biz1")) - before
    print(f"\ninstalls of a failing module in {window:.0f}s (retry 1 s doubling to 4 s): {retries}")
    assert 1 <= retries <= 8, f"{retries} installs in {window:.0f}s: a storm, or no retry at all"
    for name, version in versions.items():
        assert (await scene.pod(name)).metadata.resource_version == version, (
            f"pod {name} was patched again although it says the same"
        )

    warnings = [e for e in await scene.events("missing") if e.type == "Warning"]
    assert [e.reason for e in warnings] == ["InstallFailed"], "one Warning Event, counted"
    assert (warnings[0].count or 1) >= 2, "the retries are counted on that one Event"
    mismatch_events = [e for e in await scene.events("mismatch") if e.type == "Warning"]
    assert [e.reason for e in mismatch_events] == ["ModuleVersionMismatch"]
    assert "declares biz2:0.0.1" in mismatch_events[0].message

    # The jar the pod asked for was never installed; ours (0.0.1) was removed once; no churn.
    biz2 = scene.commands("biz2")
    assert [c for c, _ in biz2] == ["installBiz", "uninstallBiz"], biz2
    assert biz2[1][1]["bizVersion"] == "0.0.1"
    assert scene.base is not None
    assert "biz2:0.0.1" not in modules_of(scene.base)
    assert all(not shows_ready_anywhere(e.pod) for e in scene.history.of("mismatch")), (
        "never Ready on a version that was not installed"
    )

    # The jar shows up: the next retry installs it and the pod goes Ready.
    write_module_jar(missing, "biz1", "1.0.0")
    await scene.pods("app=missing", lambda p: bool(p) and is_ready(p[0]), "Ready", timeout=20)


async def test_kubectl_truth_and_no_patch_at_rest(scene: Scene, test_env: str) -> None:
    """One base, a 1-replica update: the old pod 0/1 before the new one is Ready; then quiet."""
    name = "truth"
    body = deployment(name, test_env, 1, [("biz1", "1.0.0")])
    await scene.apps.create_namespaced_deployment(scene.namespace, manifest(body))
    [old] = await scene.pods(f"app={name}", lambda p: len(p) == 1 and is_ready(p[0]), "1.0.0")
    container = body["spec"]["template"]["spec"]["containers"][0]
    container["image"] = container["image"].replace("1.0.0", "2.0.0")
    container["env"] = [{"name": "BIZ_VERSION", "value": "2.0.0"}]
    await scene.apps.replace_namespaced_deployment(name, scene.namespace, manifest(body))

    def updated(pods: list[client.V1Pod]) -> bool:
        return len(pods) == 1 and is_ready(pods[0]) and pods[0].metadata.name != old.metadata.name

    [new] = await scene.pods(f"app={name}", updated, "2.0.0 Ready alone", timeout=60)
    old_events = scene.history.of(old.metadata.name)
    for event in old_events:
        ready = ready_condition(event.pod)
        if ready is not None and ready.status == "False":
            assert not shows_ready_anywhere(event.pod), "Ready False but kubectl would show 1/1"
    old_out = next(e.at for e in old_events if not shows_ready_anywhere(e.pod))
    new_in = next(e.at for e in scene.history.of(new.metadata.name) if is_ready(e.pod))
    assert old_out <= new_in, "the old pod goes 0/1 before the new one is Ready"

    # The update is over once the operator has read the base's modules since, and acted on
    # that read: two polls.
    await scene.polled(after=time.time(), polls=2)
    first = scene.status_writes()
    # A deliberate wait, to show that nothing is written: ten inventory polls with nothing new.
    await asyncio.sleep(10 * INVENTORY_POLL_SECONDS)
    at_rest = scene.status_writes() - first
    print(f"\npod status PATCHes at rest in 20 s: {at_rest:.0f}")
    assert at_rest == 0

    # The base says goodbye: its pod says so (0/1, BaseGone) before its node is deleted.
    assert scene.base is not None
    await scene.base.graceful_exit()

    async def marked() -> client.V1Pod | None:
        return next(
            (
                e.pod
                for e in scene.history.of(new.metadata.name)
                if (ready_condition(e.pod) or client.V1PodCondition(type="", status="")).reason
                == "BaseGone"
            ),
            None,
        )

    gone = await wait_for(
        marked, timeout=20, what="the pod marked BaseGone", diagnose=scene.describe
    )
    assert not shows_ready_anywhere(gone)
    assert scene.node in ready_message(gone)


async def test_a_deleted_pod_replaced_on_the_same_base_keeps_its_module(
    scene: Scene, test_env: str
) -> None:
    name = "kept"
    await scene.apps.create_namespaced_deployment(
        scene.namespace, manifest(deployment(name, test_env, 1, [("biz1", "1.0.0")]))
    )
    [old] = await scene.pods(f"app={name}", lambda p: len(p) == 1 and is_ready(p[0]), "Ready")
    deleted_at = time.time()
    await scene.core.delete_namespaced_pod(old.metadata.name, scene.namespace)

    def replaced(pods: list[client.V1Pod]) -> bool:
        return len(pods) == 1 and pods[0].metadata.name != old.metadata.name and is_ready(pods[0])

    [new] = await scene.pods(f"app={name}", replaced, "the replacement Ready", timeout=40)
    # Between the delete and the replacement the module had no pod. Two polls once a grace
    # period after the delete is over: had the operator taken it for an orphan, it would have
    # uninstalled it by then.
    await scene.polled(after=deleted_at + ORPHAN_GRACE_SECONDS, polls=2)
    assert [c for c, _ in scene.commands("biz1")] == ["installBiz"], "never uninstalled"
    assert scene.base is not None
    assert modules_of(scene.base) == {"biz1:1.0.0": "ACTIVATED"}
    old_out = next(e.at for e in scene.history.of(old.metadata.name) if not is_ready(e.pod))
    new_in = next(e.at for e in scene.history.of(new.metadata.name) if is_ready(e.pod))
    assert old_out <= new_in, "the deleted pod went NotReady before its replacement was Ready"

    # Two replicas on one base share one module instance, and are told so.
    await scene.apps.patch_namespaced_deployment_scale(
        name, scene.namespace, {"spec": {"replicas": 2}}
    )
    pods = await scene.pods(
        f"app={name}", lambda p: len(p) == 2 and all(is_ready(x) for x in p), "2 Ready"
    )
    added = next(p for p in pods if p.metadata.name != new.metadata.name)

    async def told() -> bool:
        return any(
            e.reason == "SharedModuleInstance" for e in await scene.events(added.metadata.name)
        )

    await wait_for(told, timeout=20, what="a SharedModuleInstance Event", diagnose=scene.describe)
    assert len(scene.commands("biz1")) == 1


@pytest.mark.parametrize("upgrade", ["replace-jar", "uninstall-then-install"])
async def test_replacing_a_module_on_its_base_keeps_the_seeds_order(
    fetching_scene: Scene, test_env: str, tmp_path: Path, upgrade: str
) -> None:
    """A new jar for the same version, or a new version with the upgrade annotation: one
    base holds one of them, so the old goes first - but its pod goes NotReady before that,
    and the new pod goes Ready only on the new module."""
    scene = fetching_scene
    first = write_module_jar(tmp_path / "first" / "biz1.jar", "biz1", "1.0.0")
    version = "1.0.0" if upgrade == "replace-jar" else "2.0.0"
    second = write_module_jar(tmp_path / "second" / "biz1.jar", "biz1", version)
    name = "swap"
    body = deployment(name, test_env, 1, [("biz1", "1.0.0")])
    template = body["spec"]["template"]
    template["spec"]["containers"][0]["image"] = jar_url(first)
    await scene.apps.create_namespaced_deployment(scene.namespace, manifest(body))
    [old] = await scene.pods(f"app={name}", lambda p: len(p) == 1 and is_ready(p[0]), "Ready")

    # At the moment the base gets the uninstall, what does the API server say of the old pod?
    assert scene.base is not None
    uninstall = scene.base.arklet.uninstall
    old_pod_when_uninstalled: list[client.V1Pod] = []

    async def uninstall_seen(request: BizModel) -> Any:
        old_pod_when_uninstalled.append(await scene.pod(old.metadata.name))
        return await uninstall(request)

    scene.base.arklet.uninstall = uninstall_seen  # type: ignore[method-assign]
    template["spec"]["containers"][0]["image"] = jar_url(second)
    template["spec"]["containers"][0]["env"] = [{"name": "BIZ_VERSION", "value": version}]
    if upgrade == "uninstall-then-install":
        template["metadata"]["annotations"] = {UPGRADE_ANNOTATION: upgrade}
    await scene.apps.replace_namespaced_deployment(name, scene.namespace, manifest(body))

    def swapped(pods: list[client.V1Pod]) -> bool:
        return len(pods) == 1 and pods[0].metadata.name != old.metadata.name and is_ready(pods[0])

    [new] = await scene.pods(f"app={name}", swapped, "the new pod Ready alone", timeout=60)
    assert scene.base is not None
    received = [(c.command, c.payload, c.at) for c in scene.base.received()]
    modules = [(c, p, at) for c, p, at in received if c in ("installBiz", "uninstallBiz")]
    assert [(c, p.get("bizUrl")) for c, p, _ in modules] == [
        ("installBiz", jar_url(first)),
        ("uninstallBiz", None),
        ("installBiz", jar_url(second)),
    ], modules
    [seen_then] = old_pod_when_uninstalled
    assert not shows_ready_anywhere(seen_then), "the old pod was 0/1 before the uninstall"
    reinstalled_at = modules[2][2]
    new_in = next(e.at for e in scene.history.of(new.metadata.name) if is_ready(e.pod))
    assert new_in >= reinstalled_at, "the new pod Ready only once its own module was installed"
    assert modules_of(scene.base) == {f"biz1:{version}": "ACTIVATED"}
