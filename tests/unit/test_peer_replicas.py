"""Peer Deployments follow their cluster's Ready bases: which Deployments, which cluster,
and when a patch goes out (debounced, retried with backoff), driven by a fake clock."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller.handlers import peer as peer_handlers
from module_controller.k8s_events import EventType, ObjectRef
from module_controller.modules.baseline import baseline_for
from module_controller.modules.peer import (
    CLUSTER_LABEL,
    REPLICAS_CONTROL_LABEL,
    SCALE_FAILED_REASON,
    SCALED_REASON,
    STRATEGY_LABEL,
    PeerReplicas,
    cluster_name_of,
    describe_failure,
    is_peer_deployment,
    node_cluster,
    node_is_ready,
    patch_due,
)
from module_controller.operator_memo import OperatorMemo
from module_controller.runtime import Runtime
from module_controller.settings import SEED_MODULE_LABEL, Settings

CLUSTER_ROLE = Path(__file__).parents[2] / "manifests" / "02-clusterrole.yaml"
DEBOUNCE = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Cluster:
    """A fake API: patches recorded (or refused), Events recorded."""

    def __init__(self) -> None:
        self.patches: list[tuple[str, str, int]] = []
        self.refusals: list[BaseException] = []  # raised by the next patches, in order
        self.events: list[tuple[str, EventType, str, str]] = []
        self.generation = 1

    async def patch(self, namespace: str, name: str, replicas: int) -> int:
        if self.refusals:
            raise self.refusals.pop(0)
        self.patches.append((namespace, name, replicas))
        self.generation += 1
        return self.generation

    def record(self, involved: ObjectRef, type: EventType, reason: str, message: str) -> None:
        self.events.append((involved.name, type, reason, message))


def node(name: str, cluster: str = "c1", ready: bool = True, deleting: bool = False) -> Any:
    metadata: dict[str, Any] = {"name": name, "labels": {CLUSTER_LABEL: cluster}}
    if deleting:
        metadata["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    status = "True" if ready else "False"
    return {"metadata": metadata, "status": {"conditions": [{"type": "Ready", "status": status}]}}


def deployment(
    name: str = "d",
    replicas: int = 1,
    *,
    labels: dict[str, str] | None = None,
    node_selector: dict[str, str] | None = None,
    expressions: list[dict[str, Any]] | None = None,
    generation: int = 1,
    uid: str = "u1",
) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "biz1", "image": "biz1.jar"}]}
    if node_selector is not None:
        spec["nodeSelector"] = node_selector
    if expressions is not None:
        spec["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": expressions}]
                }
            }
        }
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": uid,
            "generation": generation,
            "labels": {STRATEGY_LABEL: "peer"} if labels is None else labels,
        },
        "spec": {"replicas": replicas, "template": {"spec": spec}},
    }


def peer_in(cluster: str = "c1", **kwargs: Any) -> dict[str, Any]:
    return deployment(node_selector={CLUSTER_LABEL: cluster}, **kwargs)


def replicas_with(clock: Clock, cluster: Cluster, **kwargs: Any) -> PeerReplicas:
    return PeerReplicas(
        debounce_seconds=DEBOUNCE,
        patch=cluster.patch,
        record=cluster.record,
        clock=clock,
        **kwargs,
    )


async def settled(clock: Clock, cluster: Cluster, nodes: int = 3) -> PeerReplicas:
    """`nodes` Ready bases in c1 for longer than the debounce, and a peer Deployment that
    already has that many replicas."""
    peers = replicas_with(clock, cluster)
    for number in range(nodes):
        peers.node_seen(f"n{number}", node(f"n{number}"))
    peers.deployment_seen(peer_in(replicas=nodes))
    clock.now += DEBOUNCE + 1
    await peers.run_due()
    assert cluster.patches == []
    return peers


# --- which Deployments, which cluster -----------------------------------------------------------


def test_the_cluster_comes_from_the_label_then_the_node_selector_then_the_affinity() -> None:
    expressions = [
        {"key": "base.koupleless.io/name", "operator": "In", "values": ["base"]},
        {"key": CLUSTER_LABEL, "operator": "In", "values": ["by-affinity", "second"]},
    ]
    labels = {STRATEGY_LABEL: "peer", CLUSTER_LABEL: "by-label"}
    everything = deployment(
        labels=labels, node_selector={CLUSTER_LABEL: "by-selector"}, expressions=expressions
    )
    assert cluster_name_of(everything) == "by-label"
    no_label = deployment(node_selector={CLUSTER_LABEL: "by-selector"}, expressions=expressions)
    assert cluster_name_of(no_label) == "by-selector"
    assert cluster_name_of(deployment(expressions=expressions)) == "by-affinity"
    assert cluster_name_of(deployment(node_selector={"other": "x"})) is None
    assert cluster_name_of(deployment()) is None


def test_only_an_in_expression_names_a_cluster() -> None:
    expressions = [
        {"key": CLUSTER_LABEL, "operator": "NotIn", "values": ["excluded"]},
        {"key": CLUSTER_LABEL, "operator": "In", "values": ["wanted"]},
    ]
    assert cluster_name_of(deployment(expressions=expressions)) == "wanted"
    assert cluster_name_of(deployment(expressions=expressions[:1])) is None


def test_a_peer_deployment_is_labelled_peer_and_not_opted_out() -> None:
    assert is_peer_deployment(deployment())
    assert not is_peer_deployment(deployment(labels={}))
    assert not is_peer_deployment(deployment(labels={STRATEGY_LABEL: "other"}))
    opted_out = {STRATEGY_LABEL: "peer", REPLICAS_CONTROL_LABEL: "true"}
    assert not is_peer_deployment(deployment(labels=opted_out))
    kept = {STRATEGY_LABEL: "peer", REPLICAS_CONTROL_LABEL: "false"}
    assert is_peer_deployment(deployment(labels=kept))


def test_a_node_counts_when_ready_and_not_being_deleted() -> None:
    assert node_is_ready(node("a")) and node_cluster(node("a")) == "c1"
    assert not node_is_ready(node("b", ready=False))
    assert not node_is_ready(node("c", deleting=True))
    assert not node_is_ready({"metadata": {"name": "d"}})
    assert node_cluster(node("e", cluster="")) == ""


def test_a_patch_is_due_once_the_count_held_and_not_before_a_retry() -> None:
    since = 100.0
    assert patch_due(3, 3, since, 10.0, None) is None
    assert patch_due(3, 4, since, 10.0, None) == 110.0
    assert patch_due(3, 4, since, 10.0, 105.0) == 110.0
    assert patch_due(3, 4, since, 10.0, 130.0) == 130.0
    assert patch_due(4, 0, since, 0.0, None) == 100.0


def test_a_refusal_says_what_to_do() -> None:
    forbidden = describe_failure(ApiException(status=403, reason="Forbidden"))
    assert "403" in forbidden and "ClusterRole needs 'patch' on deployments.apps" in forbidden
    assert "gone" in describe_failure(ApiException(status=404, reason="Not Found"))
    assert "409" in describe_failure(ApiException(status=409, reason="Conflict"))
    assert describe_failure(TimeoutError()) == "the API server did not answer in time"


def test_the_shipped_cluster_role_may_patch_deployments() -> None:
    (role,) = [d for d in yaml.safe_load_all(CLUSTER_ROLE.read_text()) if d]
    assert any(
        "apps" in rule["apiGroups"]
        and "deployments" in rule["resources"]
        and "patch" in rule["verbs"]
        for rule in role["rules"]
    )


def test_a_new_base_gets_its_clusters_peer_modules_in_its_baseline() -> None:
    """No change to the baseline was needed: a peer Deployment names its cluster in its pod
    template, which is what the baseline follows."""
    by_selector = peer_in("c1", name="by-selector")
    by_affinity = deployment(
        name="by-affinity",
        expressions=[{"key": CLUSTER_LABEL, "operator": "In", "values": ["c1"]}],
    )
    for body, version in ((by_selector, "1.0.0"), (by_affinity, "2.0.0")):
        template = body["spec"]["template"]
        template["metadata"] = {"labels": {SEED_MODULE_LABEL: "module"}}
        template["spec"]["containers"] = [
            {
                "name": f"biz-{body['metadata']['name']}",
                "image": f"https://repo.example/{version}.jar",
                "env": [{"name": "BIZ_VERSION", "value": version}],
            }
        ]
    deployments = [by_selector, by_affinity]
    in_c1 = baseline_for(deployments, {CLUSTER_LABEL: "c1"}, SEED_MODULE_LABEL)
    assert [(m.biz_name, m.biz_version) for m in in_c1] == [
        ("biz-by-selector", "1.0.0"),
        ("biz-by-affinity", "2.0.0"),
    ]
    assert baseline_for(deployments, {CLUSTER_LABEL: "c2"}, SEED_MODULE_LABEL) == []


# --- when a patch goes out ----------------------------------------------------------------------


async def test_a_new_peer_deployment_is_scaled_once_the_count_has_held() -> None:
    clock, cluster = Clock(), Cluster()
    peers = replicas_with(clock, cluster)
    for name in ("n0", "n1", "n2"):
        peers.node_seen(name, node(name))
    peers.deployment_seen(peer_in(replicas=1))
    await peers.run_due()
    assert cluster.patches == [], "the count has just changed"
    assert peers.next_due() == clock.now + DEBOUNCE
    clock.now += DEBOUNCE
    await peers.run_due()
    assert cluster.patches == [("ns", "d", 3)]
    assert cluster.events == [
        (
            "d",
            "Normal",
            SCALED_REASON,
            "Scaled peer Deployment from 1 to 3 replicas: 3 Ready bases in cluster c1",
        )
    ]
    assert peers.replicas("ns", "d") == 3
    assert peers.next_due() is None
    await peers.run_due()
    assert len(cluster.patches) == 1, "exactly one patch"


async def test_a_base_flapping_within_the_debounce_window_patches_nothing() -> None:
    clock, cluster = Clock(), Cluster()
    peers = await settled(clock, cluster)
    for _ in range(10):  # NotReady, Ready, NotReady, ... every 3 s
        peers.node_seen("n2", node("n2", ready=False))
        clock.now += 3
        await peers.run_due()
        peers.node_seen("n2", node("n2", ready=True))
        clock.now += 3
        await peers.run_due()
    clock.now += DEBOUNCE * 3
    await peers.run_due()
    assert cluster.patches == []
    assert cluster.events == []


async def test_a_stable_change_patches_exactly_once_after_the_debounce() -> None:
    clock, cluster = Clock(), Cluster()
    peers = await settled(clock, cluster)
    peers.node_seen("n3", node("n3"))  # a 4th base
    clock.now += DEBOUNCE - 1
    await peers.run_due()
    assert cluster.patches == []
    clock.now += 1
    await peers.run_due()
    assert cluster.patches == [("ns", "d", 4)]
    peers.node_gone("n3")  # and it dies
    clock.now += DEBOUNCE
    await peers.run_due()
    assert cluster.patches == [("ns", "d", 4), ("ns", "d", 3)]
    clock.now += DEBOUNCE * 5
    await peers.run_due()
    assert len(cluster.patches) == 2
    assert [event[3] for event in cluster.events] == [
        "Scaled peer Deployment from 3 to 4 replicas: 4 Ready bases in cluster c1",
        "Scaled peer Deployment from 4 to 3 replicas: 3 Ready bases in cluster c1",
    ]


async def test_a_debounce_window_starts_again_with_each_change() -> None:
    clock, cluster = Clock(), Cluster()
    peers = await settled(clock, cluster)
    peers.node_seen("n3", node("n3"))
    clock.now += DEBOUNCE - 1
    peers.node_seen("n4", node("n4"))  # the count changes again before it held
    clock.now += DEBOUNCE - 1
    await peers.run_due()
    assert cluster.patches == []
    clock.now += 1
    await peers.run_due()
    assert cluster.patches == [("ns", "d", 5)]


async def test_an_echo_from_before_our_patch_does_not_scale_again() -> None:
    clock, cluster = Clock(), Cluster()
    peers = replicas_with(clock, cluster)
    peers.node_seen("n0", node("n0"))
    peers.node_seen("n1", node("n1"))
    peers.deployment_seen(peer_in(replicas=1, generation=1))
    clock.now += DEBOUNCE
    await peers.run_due()
    assert cluster.patches == [("ns", "d", 2)]
    peers.deployment_seen(peer_in(replicas=1, generation=1))  # an event sent before the patch
    await peers.run_due()
    assert peers.replicas("ns", "d") == 2
    assert peers.next_due() is None
    peers.deployment_seen(peer_in(replicas=5, generation=3))  # a person scaled it by hand
    await peers.run_due()
    assert cluster.patches[-1] == ("ns", "d", 2), "the count held long ago: back at once"


async def test_only_peer_deployments_of_the_right_cluster_are_patched() -> None:
    clock, cluster = Clock(), Cluster()
    peers = replicas_with(clock, cluster)
    peers.node_seen("n0", node("n0"))
    peers.node_seen("m0", node("m0", cluster="c2"))
    peers.node_seen("m1", node("m1", cluster="c2"))
    opted_out = {STRATEGY_LABEL: "peer", REPLICAS_CONTROL_LABEL: "true"}
    peers.deployment_seen(peer_in("c1", name="opted-out", labels=opted_out, uid="u2"))
    peers.deployment_seen(deployment(name="no-cluster", uid="u3"))
    peers.deployment_seen(peer_in("c2", name="other", uid="u4"))
    peers.deployment_seen(peer_in("c1", name="unlabelled", uid="u5", labels={}))
    clock.now += DEBOUNCE
    await peers.run_due()
    assert cluster.patches == [("ns", "other", 2)]


async def test_a_deployment_that_stops_being_a_peer_is_forgotten() -> None:
    clock, cluster = Clock(), Cluster()
    peers = replicas_with(clock, cluster)
    peers.node_seen("n0", node("n0"))
    peers.node_seen("n1", node("n1"))
    peers.deployment_seen(peer_in(replicas=1))
    opted_out = {STRATEGY_LABEL: "peer", REPLICAS_CONTROL_LABEL: "true"}
    peers.deployment_seen(peer_in(replicas=1, labels=opted_out, generation=2))
    assert peers.replicas("ns", "d") is None
    peers.deployment_seen(peer_in(replicas=1, generation=3))
    peers.deployment_gone("ns", "d")
    clock.now += DEBOUNCE
    await peers.run_due()
    assert cluster.patches == []


async def test_a_refused_patch_is_retried_with_backoff_and_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, cluster = Clock(), Cluster()
    errors: list[int | None] = []
    peers = replicas_with(
        clock, cluster, retry_seconds=2, retry_max_seconds=5, api_errors=errors.append
    )
    peers.node_seen("n0", node("n0"))
    peers.node_seen("n1", node("n1"))
    peers.deployment_seen(peer_in(replicas=1))
    clock.now += DEBOUNCE
    cluster.refusals = [
        ApiException(status=403, reason="Forbidden"),
        ApiException(status=409, reason="Conflict"),
        ApiException(status=403, reason="Forbidden"),
        TimeoutError(),
    ]
    attempts_at: list[float] = []
    with caplog.at_level(logging.WARNING, logger="module_controller.modules.peer"):
        while cluster.refusals:
            await peers.run_due()
            attempts_at.append(clock.now)
            due = peers.next_due()
            assert due is not None
            clock.now = due - 0.5
            await peers.run_due()  # not yet
            clock.now = due
    await peers.run_due()
    start = attempts_at[0]
    assert [at - start for at in attempts_at] == [0, 2, 6, 11], "2, 4, then at most 5 s apart"
    assert cluster.patches == [("ns", "d", 2)]
    assert errors == [403, 409, 403, None]
    warnings = [e for e in cluster.events if e[1] == "Warning"]
    assert len(warnings) == 4 and all(e[2] == SCALE_FAILED_REASON for e in warnings)
    assert "ClusterRole needs 'patch' on deployments.apps" in warnings[0][3]
    assert cluster.events[-1][2] == SCALED_REASON
    assert "ns/d: Could not scale peer Deployment from 1 to 2 replicas" in caplog.text
    assert "trying again in 2s" in caplog.text


async def test_a_deployment_gone_meanwhile_gets_no_warning_event() -> None:
    clock, cluster = Clock(), Cluster()
    peers = replicas_with(clock, cluster)
    peers.node_seen("n0", node("n0"))
    peers.deployment_seen(peer_in(replicas=3))
    clock.now += DEBOUNCE
    cluster.refusals = [ApiException(status=404, reason="Not Found")]
    await peers.run_due()
    assert cluster.events == []
    assert peers.next_due() is not None, "tried again until the watch says it is gone"


async def test_nothing_is_patched_before_the_nodes_are_listed() -> None:
    clock, cluster = Clock(), Cluster()

    async def list_nodes() -> list[dict[str, Any]]:
        return [node("n0"), node("n1"), node("n2", ready=False)]

    peers = replicas_with(clock, cluster, list_nodes=list_nodes)
    peers.deployment_seen(peer_in(replicas=3))
    clock.now += DEBOUNCE
    await peers.run_due()
    assert peers.next_due() is None and cluster.patches == [], "0 Ready is not known yet"
    peers.node_seen("n2", node("n2", ready=True))  # the watch is newer than the listing
    peers.nodes_listed(await list_nodes())
    assert peers.ready("c1") == 3
    clock.now += DEBOUNCE
    await peers.run_due()
    assert cluster.patches == []


async def test_run_lists_the_nodes_and_patches_on_time() -> None:
    cluster = Cluster()
    patched = asyncio.Event()

    async def patch(namespace: str, name: str, replicas: int) -> int:
        generation = await cluster.patch(namespace, name, replicas)
        patched.set()
        return generation

    async def list_nodes() -> list[dict[str, Any]]:
        return [node("n0"), node("n1")]

    peers = PeerReplicas(debounce_seconds=0.05, patch=patch, list_nodes=list_nodes)
    task = asyncio.create_task(peers.run())
    try:
        peers.deployment_seen(peer_in(replicas=1))
        await asyncio.wait_for(patched.wait(), 2)
        assert cluster.patches == [("ns", "d", 2)]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# --- the handlers -------------------------------------------------------------------------------


async def test_the_handler_and_the_node_watch_feed_the_runtimes_peer_replicas() -> None:
    on_deployment = cast(Any, peer_handlers.peer_deployment_event)
    # The setting off (no runtime, or one without peers): the events are ignored.
    await on_deployment(type="ADDED", body=peer_in(), namespace="ns", name="d", memo=OperatorMemo())
    async with client.ApiClient() as api:
        runtime = Runtime(Settings(), api)
        assert runtime.peers is None
        await runtime.vnode_watch._seen(node("n0"))  # nothing to feed, nothing fails
        cluster = Cluster()
        peers = PeerReplicas(debounce_seconds=DEBOUNCE, patch=cluster.patch)
        runtime.peers = peers
        memo = OperatorMemo(runtime=runtime)
        await runtime.vnode_watch._seen(node("n0"))
        await on_deployment(type="ADDED", body=peer_in(), namespace="ns", name="d", memo=memo)
        assert peers.ready("c1") == 1
        assert peers.replicas("ns", "d") is not None
        await on_deployment(type="DELETED", body=peer_in(), namespace="ns", name="d", memo=memo)
        await runtime.vnode_watch._gone(node("n0"))
        assert peers.ready("c1") == 0
        assert peers.replicas("ns", "d") is None
