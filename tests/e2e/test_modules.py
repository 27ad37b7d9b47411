"""Module pods become installed modules: every scenario of the seed, end to end.

The real operator process, real Deployments / ReplicaSets / scheduler, simulated bases of
the seed's base (`base`, `1.1.1`) over the real broker. Each test pins its workloads to its
own bases (a private ENV and a node selector), except the seed's sample, applied verbatim.
"""

from __future__ import annotations

import subprocess

import pytest
from kubernetes_asyncio import client

from module_controller.testbed.kube_reads import is_ready
from tests.e2e.conftest import TUNNELS, BaseFactory, OperatorFactory, Tunnel
from tests.e2e.modules_scene import (
    Scene,
    all_ready,
)
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
)
from tests.waiting import wait_for

pytestmark = pytest.mark.usefixtures("env_nodes_cleanup")

# The seed's scenarios run over every tunnel: MQTT, MQTT with mutual TLS, and HTTP. TLS
# changes only the transport, so the rest run over MQTT and HTTP (the suite stays short).
over_every_tunnel = pytest.mark.parametrize("tunnel", TUNNELS, indirect=True)
over_mqtt_and_http = pytest.mark.parametrize("tunnel", ["mqtt", "http"], indirect=True)


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
