"""Module pods become installed modules: every scenario of the seed, end to end.

The real operator process, real Deployments / ReplicaSets / scheduler, simulated bases of
the seed's base (`base`, `1.1.1`) over the real broker. Each test pins its workloads to its
own bases (a private ENV and a node selector), except the seed's sample, applied verbatim.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller.simulator.base import SimulatedBase
from module_controller.testbed.kube_reads import is_ready, is_ready_and_untainted, ready_condition
from module_controller.testbed.operator_process import OperatorProcess
from tests.e2e.conftest import TUNNELS, BaseFactory, OperatorFactory, Tunnel
from tests.e2e.modules_support import (
    PodHistory,
    bare_pod,
    daemon_set,
    deployment,
    manifest,
    modules_of,
    pod_template,
    sample_deployment,
    set_modules,
    wait_inventory_polls,
    wait_pods,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.usefixtures("env_nodes_cleanup")

# The seed's scenarios run over every tunnel: MQTT, MQTT with mutual TLS, and HTTP. TLS
# changes only the transport, so the rest run over MQTT and HTTP (the suite stays short).
over_every_tunnel = pytest.mark.parametrize("tunnel", TUNNELS, indirect=True)
over_mqtt_and_http = pytest.mark.parametrize("tunnel", ["mqtt", "http"], indirect=True)

# The scene's operator: modules nobody asks for are removed 5 s after being seen; each base
# is asked what it runs every 3 s.
ORPHAN_GRACE_SECONDS = 5
INVENTORY_POLL_SECONDS = 3


class Scene:
    """One test's operator, bases and namespace, with diagnoses for every wait."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        operator: OperatorProcess,
        bases: list[SimulatedBase],
    ) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.namespace = namespace
        self.operator = operator
        self.bases = bases

    def node_of(self, base: SimulatedBase) -> str:
        return f"virtual-node-{base.identity}"

    def base_on(self, node: str | None) -> SimulatedBase:
        return next(b for b in self.bases if self.node_of(b) == node)

    async def describe(self) -> str:
        lines = [f"base {self.node_of(b)} {b.config.ip}: {modules_of(b)}" for b in self.bases]
        lines.append(self.operator.tail(40))
        return "\n".join(lines)

    async def nodes_ready(self) -> None:
        async def ready() -> bool:
            for base in self.bases:
                try:
                    node = await self.core.read_node(self.node_of(base))
                except ApiException:
                    return False
                if not is_ready_and_untainted(node):
                    return False
            return True

        await wait_for(ready, timeout=40, what="every base's node Ready", diagnose=self.describe)

    async def pods(
        self, selector: str, check: Any, what: str, timeout: float = 60
    ) -> list[client.V1Pod]:
        return await wait_pods(
            self.core, self.namespace, selector, check, what, timeout, self.describe
        )

    async def polled(self, *, after: float, polls: int) -> None:
        """Every base was asked for its modules `polls` times since `after` (time.time(),
        possibly still to come)."""
        # Until `after`, then the polls, with room for a slow machine.
        timeout = max(0.0, after - time.time()) + polls * INVENTORY_POLL_SECONDS + 15
        await wait_inventory_polls(
            self.bases, after=after, polls=polls, timeout=timeout, diagnose=self.describe
        )

    async def modules_everywhere(self, expected: dict[str, dict[str, str]]) -> None:
        """Wait until each named base holds exactly the expected modules."""

        async def matches() -> bool:
            return all(
                modules_of(base) == expected.get(self.node_of(base), {}) for base in self.bases
            )

        await wait_for(matches, timeout=40, what=f"modules {expected}", diagnose=self.describe)


@pytest.fixture
async def scene(
    k8s_api: client.ApiClient,
    namespace: str,
    run_operator: OperatorFactory,
    start_base: BaseFactory,
    tunnel: Tunnel,
    request: pytest.FixtureRequest,
) -> Scene:
    marker = request.node.get_closest_marker("bases")
    count = marker.args[0] if marker else 3
    extra = request.node.get_closest_marker("operator_settings")
    operator = run_operator(
        tunnel.broker,
        ORPHAN_GRACE_SECONDS=str(ORPHAN_GRACE_SECONDS),
        INVENTORY_POLL_SECONDS=str(INVENTORY_POLL_SECONDS),
        **tunnel.operator,
        **(extra.kwargs if extra else {}),
    )
    bases = [await start_base(broker=tunnel.broker, **tunnel.base) for _ in range(count)]
    scene = Scene(k8s_api, namespace, operator, bases)
    await scene.nodes_ready()
    return scene


def all_ready(count: int) -> Any:
    def check(pods: list[client.V1Pod]) -> bool:
        live = [p for p in pods if p.metadata.deletion_timestamp is None]
        return len(pods) == count and all(is_ready(p) for p in live)

    return check


@over_every_tunnel
async def test_the_seeds_sample_runs_and_both_field_selectors_find_it(
    k8s_api: client.ApiClient,
    run_operator: OperatorFactory,
    start_base: BaseFactory,
    tunnel: Tunnel,
    kubectl: list[str],
) -> None:
    operator = run_operator(tunnel.broker, **tunnel.operator)
    base = await start_base(broker=tunnel.broker, **tunnel.base)
    scene = Scene(k8s_api, "default", operator, [base])
    await scene.nodes_ready()
    sample = sample_deployment()
    await scene.apps.create_namespaced_deployment("default", manifest(sample))
    try:
        pods = await scene.pods(
            "app=test-module-deployment-non-peer", all_ready(1), "the sample's pod Ready"
        )
        pod = pods[0]
        assert pod.status.pod_ip == base.config.ip
        assert pod.status.host_ip == base.config.ip
        assert pod.status.phase == "Running"
        assert modules_of(base) == {"biz1:0.0.1-SNAPSHOT": "ACTIVATED"}
        # The operator reads module pods and writes only their status: no marks of Kopf.
        assert not pod.metadata.finalizers
        assert not any("kopf" in key for key in (pod.metadata.annotations or {}))
        assert pod.status.conditions[0] is not None
        assert any(
            c.type == "PodScheduled" and c.status == "True" for c in pod.status.conditions
        ), "the strategic merge kept PodScheduled"
        for selector in (f"status.podIP={base.config.ip}", f"spec.nodeName={scene.node_of(base)}"):
            found = subprocess.run(
                [
                    *kubectl,
                    "get",
                    "pod",
                    "-n",
                    "default",
                    "--field-selector",
                    selector,
                    "-o",
                    "name",
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            assert found == [f"pod/{pod.metadata.name}"], selector
    finally:
        await scene.apps.delete_namespaced_deployment("test-module-deployment", "default")
    await scene.pods(
        "app=test-module-deployment-non-peer", lambda pods: not pods, "the sample's pods gone"
    )
    await scene.modules_everywhere({})


@over_mqtt_and_http
@pytest.mark.bases(2)
async def test_bare_pod_daemonset_and_statefulset_release_modules(
    scene: Scene, test_env: str
) -> None:
    template = pod_template("bare", test_env, [("biz-bare", "1.0.0")])
    pod = bare_pod("bare", template)
    await scene.core.create_namespaced_pod(scene.namespace, manifest(pod))
    daemon = daemon_set("daemon", test_env, [("biz-daemon", "1.0.0")])
    await scene.apps.create_namespaced_daemon_set(scene.namespace, manifest(daemon))
    stateful = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "stateful"},
        "spec": {
            "serviceName": "stateful",
            "replicas": 2,
            "selector": {"matchLabels": {"app": "stateful"}},
            "template": pod_template("stateful", test_env, [("biz-state", "1.0.0")]),
        },
    }
    await scene.apps.create_namespaced_stateful_set(scene.namespace, manifest(stateful))
    await scene.pods("app=bare", all_ready(1), "the bare pod Ready")
    await scene.pods("app=daemon", all_ready(2), "a daemon pod Ready on each base")
    await scene.pods("app=stateful", all_ready(2), "both stateful pods Ready", timeout=90)
    for base in scene.bases:
        assert modules_of(base).get("biz-daemon:1.0.0") == "ACTIVATED"


@over_every_tunnel
async def test_a_rolling_update_is_lossless_on_every_base(scene: Scene, test_env: str) -> None:
    name = "rolling"
    body = deployment(name, test_env, 3, [("biz1", "1.0.0")], spread=True)
    await scene.apps.create_namespaced_deployment(scene.namespace, manifest(body))
    old = await scene.pods(f"app={name}", all_ready(3), "3 pods of 1.0.0 Ready")
    old_by_node = {p.spec.node_name: p.metadata.name for p in old}
    assert len(old_by_node) == 3, "one old pod per base"

    history = PodHistory(scene.api, scene.namespace)
    await history.start()
    set_modules(body["spec"]["template"], [("biz1", "2.0.0")])
    await scene.apps.replace_namespaced_deployment(name, scene.namespace, manifest(body))

    def updated(pods: list[client.V1Pod]) -> bool:
        return len(pods) == 3 and all(
            is_ready(p) and p.spec.containers[0].image.endswith("biz1-2.0.0-ark-biz.jar")
            for p in pods
        )

    new = await scene.pods(f"app={name}", updated, "3 pods of 2.0.0 Ready", timeout=90)
    await scene.modules_everywhere(
        {scene.node_of(b): {"biz1:2.0.0": "ACTIVATED"} for b in scene.bases}
    )
    await history.stop_once_ready_seen(new)

    pods_seen = [event.pod for event in history.events]  # in the API server's order
    for pod in new:
        node = pod.spec.node_name
        old_name = old_by_node[node]
        new_ready = next(
            i
            for i, p in enumerate(pods_seen)
            if p.metadata.name == pod.metadata.name and is_ready(p)
        )
        old_not_ready = next(
            (i for i, p in enumerate(pods_seen) if p.metadata.name == old_name and not is_ready(p)),
            None,
        )
        assert old_not_ready is not None and old_not_ready < new_ready, (
            f"on {node}: old pod {old_name} NotReady at event {old_not_ready}, "
            f"new pod {pod.metadata.name} Ready at event {new_ready}"
        )
        deleted = next(
            (
                p
                for p in pods_seen
                if p.metadata.name == old_name and p.metadata.deletion_timestamp is not None
            ),
            None,
        )
        assert deleted is not None, f"the old pod {old_name} on {node} was not the one removed"
        assert not is_ready(deleted), f"{old_name} was removed while still Ready"


@over_every_tunnel
@pytest.mark.bases(3)
async def test_scale_up_and_down_installs_and_uninstalls(scene: Scene, test_env: str) -> None:
    name = "scaled"
    await scene.apps.create_namespaced_deployment(
        scene.namespace, deployment(name, test_env, 1, [("biz1", "1.0.0")], spread=True)
    )
    await scene.pods(f"app={name}", all_ready(1), "1 pod Ready")
    await scene.apps.patch_namespaced_deployment_scale(
        name, scene.namespace, {"spec": {"replicas": 3}}
    )
    await scene.pods(f"app={name}", all_ready(3), "3 pods Ready")
    await scene.modules_everywhere(
        {scene.node_of(b): {"biz1:1.0.0": "ACTIVATED"} for b in scene.bases}
    )
    await scene.apps.patch_namespaced_deployment_scale(
        name, scene.namespace, {"spec": {"replicas": 1}}
    )
    pods = await scene.pods(f"app={name}", all_ready(1), "back to 1 pod")
    await scene.modules_everywhere({pods[0].spec.node_name: {"biz1:1.0.0": "ACTIVATED"}})


@over_mqtt_and_http
@pytest.mark.bases(2)
async def test_deleting_the_deployment_uninstalls_everything(scene: Scene, test_env: str) -> None:
    name = "doomed"
    await scene.apps.create_namespaced_deployment(
        scene.namespace,
        deployment(name, test_env, 2, [("biz1", "1.0.0"), ("biz2", "1.0.0")], spread=True),
    )
    await scene.pods(f"app={name}", all_ready(2), "2 pods Ready")
    await scene.apps.delete_namespaced_deployment(
        name, scene.namespace, propagation_policy="Foreground"
    )
    await scene.pods(f"app={name}", lambda pods: not pods, "no pod left")
    await scene.modules_everywhere({})


@over_mqtt_and_http
@pytest.mark.bases(1)
async def test_a_bare_pod_replaced_in_place_swaps_its_module(scene: Scene, test_env: str) -> None:
    template = pod_template("inplace", test_env, [("biz1", "1.0.0")])
    pod = bare_pod("inplace", template)
    await scene.core.create_namespaced_pod(scene.namespace, manifest(pod))
    await scene.pods("app=inplace", all_ready(1), "the pod Ready with 1.0.0")
    base = scene.bases[0]
    # Pods allow changing a container's image in place, not its env: the URL changes.
    await scene.core.patch_namespaced_pod(
        "inplace",
        scene.namespace,
        {"spec": {"containers": [{"name": "biz1", "image": "https://repo.example/v2/biz1.jar"}]}},
    )

    async def swapped() -> bool:
        uninstalls = base.received("uninstallBiz")
        installs = base.received("installBiz")
        return bool(uninstalls) and len(installs) >= 2

    await wait_for(swapped, timeout=30, what="uninstall then reinstall", diagnose=scene.describe)
    commands = [c.command for c in base.received() if c.command in ("installBiz", "uninstallBiz")]
    assert commands[:3] == ["installBiz", "uninstallBiz", "installBiz"], commands
    last = base.received("installBiz")[-1].payload
    assert last["bizUrl"] == "https://repo.example/v2/biz1.jar"
    pods = await scene.pods("app=inplace", all_ready(1), "the pod Ready again")
    assert pods[0].status.container_statuses[0].image == "https://repo.example/v2/biz1.jar"


@over_mqtt_and_http
@pytest.mark.bases(2)
async def test_a_daemonset_update_completes(scene: Scene, test_env: str) -> None:
    body = daemon_set("daemon", test_env, [("biz-daemon", "1.0.0")])
    await scene.apps.create_namespaced_daemon_set(scene.namespace, manifest(body))
    await scene.pods("app=daemon", all_ready(2), "daemon pods Ready")
    set_modules(body["spec"]["template"], [("biz-daemon", "2.0.0")])
    await scene.apps.replace_namespaced_daemon_set("daemon", scene.namespace, manifest(body))

    def updated(pods: list[client.V1Pod]) -> bool:
        return len(pods) == 2 and all(
            is_ready(p) and p.spec.containers[0].image.endswith("2.0.0-ark-biz.jar") for p in pods
        )

    await scene.pods("app=daemon", updated, "daemon pods updated", timeout=90)
    await scene.modules_everywhere(
        {scene.node_of(b): {"biz-daemon:2.0.0": "ACTIVATED"} for b in scene.bases}
    )


@over_mqtt_and_http
@pytest.mark.bases(2)
async def test_rollout_undo_brings_the_previous_version_back(
    scene: Scene, test_env: str, kubectl: list[str]
) -> None:
    name = "undo"
    body = deployment(name, test_env, 2, [("biz1", "1.0.0")], spread=True)
    await scene.apps.create_namespaced_deployment(scene.namespace, manifest(body))
    await scene.pods(f"app={name}", all_ready(2), "2 pods of 1.0.0")
    set_modules(body["spec"]["template"], [("biz1", "2.0.0")])
    await scene.apps.replace_namespaced_deployment(name, scene.namespace, manifest(body))
    await scene.modules_everywhere(
        {scene.node_of(b): {"biz1:2.0.0": "ACTIVATED"} for b in scene.bases}
    )
    subprocess.run(
        [*kubectl, "-n", scene.namespace, "rollout", "undo", f"deployment/{name}"],
        check=True,
        capture_output=True,
    )

    def back(pods: list[client.V1Pod]) -> bool:
        return len(pods) == 2 and all(
            is_ready(p) and p.spec.containers[0].image.endswith("biz1-1.0.0-ark-biz.jar")
            for p in pods
        )

    await scene.pods(f"app={name}", back, "2 pods of 1.0.0 again", timeout=90)
    await scene.modules_everywhere(
        {scene.node_of(b): {"biz1:1.0.0": "ACTIVATED"} for b in scene.bases}
    )


@pytest.mark.bases(1)
async def test_a_module_for_a_new_base_version_waits_for_such_bases(
    scene: Scene, test_env: str, start_base: BaseFactory
) -> None:
    name = "future"
    await scene.apps.create_namespaced_deployment(
        scene.namespace,
        deployment(name, test_env, 2, [("biz1", "2.0.0")], base_version="2.0.0", spread=True),
    )

    def unschedulable(pods: list[client.V1Pod]) -> bool:
        """The scheduler tried each pod and found no node for it."""
        return len(pods) == 2 and all(
            any(
                c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable"
                for c in p.status.conditions or []
            )
            for p in pods
        )

    pods = await scene.pods(f"app={name}", unschedulable, "2 pods the scheduler cannot place")
    assert all(p.spec.node_name is None for p in pods), "no base of 2.0.0 exists yet"
    assert modules_of(scene.bases[0]) == {}
    scene.bases += [await start_base(version="2.0.0") for _ in range(2)]
    await scene.pods(f"app={name}", all_ready(2), "2 pods Ready on the new bases", timeout=90)
    for base in scene.bases[1:]:
        assert modules_of(base) == {"biz1:2.0.0": "ACTIVATED"}
    assert modules_of(scene.bases[0]) == {}


# Over MQTT only: this one waits for the dead time (~70 s); HTTP liveness has its own
# tests (test_http_tunnel.py, tests/unit/test_registry_http.py).
@pytest.mark.bases(3)
async def test_a_crashed_bases_pods_move_to_the_other_bases(scene: Scene, test_env: str) -> None:
    name = "survivor"
    await scene.apps.create_namespaced_deployment(
        scene.namespace, deployment(name, test_env, 2, [("biz1", "1.0.0")], spread=True)
    )
    pods = await scene.pods(f"app={name}", all_ready(2), "2 pods Ready")
    victim = scene.base_on(pods[0].spec.node_name)
    victim_pod = pods[0].metadata.name
    await victim.crash()

    async def victim_pod_not_ready() -> bool:
        try:
            pod = await scene.core.read_namespaced_pod(victim_pod, scene.namespace)
        except ApiException:
            return True  # already gone is past NotReady
        return not is_ready(pod)

    await wait_for(
        victim_pod_not_ready, timeout=30, what=f"{victim_pod} NotReady", diagnose=scene.describe
    )
    survivors = [b for b in scene.bases if b is not victim]

    def moved(pods: list[client.V1Pod]) -> bool:
        live = [p for p in pods if p.metadata.deletion_timestamp is None]
        return (
            len(live) == 2
            and all(is_ready(p) for p in live)
            and {p.spec.node_name for p in live} <= {scene.node_of(b) for b in survivors}
        )

    await scene.pods(f"app={name}", moved, "2 pods Ready on the surviving bases", timeout=120)


@pytest.mark.bases(1)
async def test_recreating_a_pod_of_the_same_version_never_uninstalls_it(
    scene: Scene, test_env: str
) -> None:
    template = pod_template("again", test_env, [("biz1", "1.0.0")])

    def body(name: str) -> dict[str, Any]:
        return bare_pod(name, template)

    await scene.core.create_namespaced_pod(scene.namespace, manifest(body("first")))
    await scene.pods("app=again", all_ready(1), "the first pod Ready")
    await scene.core.create_namespaced_pod(scene.namespace, manifest(body("second")))
    await scene.pods("app=again", all_ready(2), "both pods Ready (one shared install)")
    base = scene.bases[0]
    assert len(base.received("installBiz")) == 1, "two pods share one install"
    deleted_at = time.time()
    await scene.core.delete_namespaced_pod("first", scene.namespace)
    await scene.pods("app=again", all_ready(1), "only the second pod left")
    # Two polls since the delete: the operator compared the base's modules with the pods
    # left at least once; a wrong uninstall would have been sent by then.
    await scene.polled(after=deleted_at, polls=2)
    assert base.received("uninstallBiz") == []
    assert modules_of(base) == {"biz1:1.0.0": "ACTIVATED"}
    await scene.core.delete_namespaced_pod("second", scene.namespace)
    await scene.pods("app=again", lambda pods: not pods, "no pod left")
    await scene.modules_everywhere({})


@pytest.mark.bases(1)
async def test_broken_module_pods_say_what_is_wrong_and_send_nothing(
    scene: Scene, test_env: str
) -> None:
    template = pod_template("broken", test_env, [("biz1", "1.0.0")])
    containers = [
        {"name": "noversion", "image": "https://repo.example/a.jar"},
        {
            "name": "notaurl",
            "image": "biz1:latest",
            "env": [{"name": "BIZ_VERSION", "value": "1.0.0"}],
        },
    ]
    template["spec"]["containers"] = containers
    pod = bare_pod("broken", template)
    await scene.core.create_namespaced_pod(scene.namespace, manifest(pod))

    def explained(pods: list[client.V1Pod]) -> bool:
        ready = ready_condition(pods[0]) if pods else None
        return ready is not None and ready.reason == "InvalidModuleSpec"

    pods = await scene.pods("app=broken", explained, "the pod's status to explain")
    ready = ready_condition(pods[0])
    assert ready is not None
    message = ready.message
    assert "BIZ_VERSION" in message and "not a URL" in message, message

    async def warned() -> bool:
        events = await scene.core.list_namespaced_event(
            scene.namespace, field_selector="involvedObject.name=broken"
        )
        return any(e.type == "Warning" and e.reason == "InvalidModuleSpec" for e in events.items)

    await wait_for(warned, timeout=20, what="a Warning Event on the pod", diagnose=scene.describe)
    assert scene.bases[0].received("installBiz") == []
    assert scene.operator.alive


@pytest.mark.bases(2)
async def test_a_restarted_operator_sends_nothing_and_changes_no_status(
    scene: Scene, test_env: str, run_operator: OperatorFactory
) -> None:
    name = "steady"
    await scene.apps.create_namespaced_deployment(
        scene.namespace, deployment(name, test_env, 2, [("biz1", "1.0.0")], spread=True)
    )
    before = await scene.pods(f"app={name}", all_ready(2), "2 pods Ready")
    versions = {p.metadata.name: p.metadata.resource_version for p in before}
    scene.operator.stop()
    commands = {b.identity: len(b.received()) for b in scene.bases}
    scene.operator = run_operator(
        ORPHAN_GRACE_SECONDS=str(ORPHAN_GRACE_SECONDS),
        INVENTORY_POLL_SECONDS=str(INVENTORY_POLL_SECONDS),
    )

    async def polled_twice() -> bool:
        return all(len(b.received("queryAllBiz")) >= 2 for b in scene.bases) and all(
            any(c.command == "queryAllBiz" for c in list(b.received())[commands[b.identity] :])
            for b in scene.bases
        )

    await wait_for(
        polled_twice,
        timeout=30,
        what="the new operator to read the inventories",
        diagnose=scene.describe,
    )
    # Two polls once an orphan grace period is over: had the new operator taken the
    # modules for orphans, it would have uninstalled them by then.
    await scene.polled(after=time.time() + ORPHAN_GRACE_SECONDS, polls=2)
    for base in scene.bases:
        since = [c.command for c in list(base.received())[commands[base.identity] :]]
        assert "installBiz" not in since and "uninstallBiz" not in since, since
    after = (
        await scene.core.list_namespaced_pod(scene.namespace, label_selector=f"app={name}")
    ).items
    assert {p.metadata.name: p.metadata.resource_version for p in after} == versions


@pytest.mark.bases(1)
async def test_a_restarted_base_gets_its_baseline(scene: Scene, test_env: str) -> None:
    name = "baseline"
    await scene.apps.create_namespaced_deployment(
        scene.namespace, deployment(name, test_env, 1, [("biz1", "1.0.0")])
    )
    await scene.pods(f"app={name}", all_ready(1), "the pod Ready")
    base = scene.bases[0]
    await base.restart()  # same identity, modules gone: it asks for its baseline

    async def reinstalled() -> bool:
        return modules_of(base) == {"biz1:1.0.0": "ACTIVATED"} and bool(base.received("baseline"))

    await wait_for(
        reinstalled,
        timeout=30,
        what="the baseline reinstalled by the base",
        diagnose=scene.describe,
    )
    baseline = base.received("baseline")[-1].payload
    assert [m["bizName"] for m in baseline] == ["biz1"]


@pytest.mark.bases(1)
@pytest.mark.operator_settings(UNINSTALL_RETRY_SECONDS="1", UNINSTALL_GIVE_UP_SECONDS="8")
async def test_an_uninstall_that_keeps_failing_cannot_keep_the_pod_forever(
    scene: Scene, test_env: str
) -> None:
    template = pod_template("sticky", test_env, [("biz1", "1.0.0")])
    pod = bare_pod("sticky", template)
    await scene.core.create_namespaced_pod(scene.namespace, manifest(pod))
    await scene.pods("app=sticky", all_ready(1), "the pod Ready")
    base = scene.bases[0]
    base.faults.fail_uninstall = {"biz1"}
    # SOFAArk's default drops a biz whose stop failed; this base keeps it, BROKEN.
    base.container.remove_biz_when_stop_failed = False
    await scene.core.delete_namespaced_pod("sticky", scene.namespace)
    await scene.pods(
        "app=sticky", lambda pods: not pods, "the pod removed after the bound", timeout=40
    )
    assert len(base.received("uninstallBiz")) >= 2, "the uninstall was retried"
    assert "biz1:1.0.0" in modules_of(base), "the leftover module is still on the base"

    async def reported() -> bool:
        events = await scene.core.list_namespaced_event(
            scene.namespace, field_selector="involvedObject.name=sticky"
        )
        reasons = {e.reason for e in events.items if e.type == "Warning"}
        return {"UninstallFailed", "UninstallGaveUp"} <= reasons

    await wait_for(
        reported,
        timeout=20,
        what="UninstallFailed and UninstallGaveUp events",
        diagnose=scene.describe,
    )
