"""What the demo reads from the cluster (its live view, its diagnosis) and removes from one
that outlives it (the sample's pods, its nodes and their leases)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sized
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller.demo.options import CLEANUP_WAIT_SECONDS
from module_controller.settings import SEED_MODULE_LABEL
from module_controller.shards.membership import MEMBER_LABEL
from module_controller.shards.ownership import node_lease_selector
from module_controller.vnode_manifest import LEASE_NAMESPACE, env_node_selector

# What a cluster may answer while it or the operator is going away: not worth a traceback.
GONE_ERRORS = (ApiException, OSError, TimeoutError)


async def wait_until_empty(listing: Callable[[], Awaitable[Sized]]) -> None:
    """Poll `listing` until it is empty or CLEANUP_WAIT_SECONDS pass."""
    deadline = time.monotonic() + CLEANUP_WAIT_SECONDS
    while time.monotonic() < deadline:
        with contextlib.suppress(*GONE_ERRORS):
            if not len(await listing()):
                return
        await asyncio.sleep(0.5)


async def wait_pods_gone(api: client.ApiClient, namespace: str, selector: str) -> None:
    core = client.CoreV1Api(api)

    async def pods() -> Sized:
        listed = await core.list_namespaced_pod(namespace, label_selector=selector)
        return list(listed.items)

    await wait_until_empty(pods)


async def wait_nodes_gone(api: client.ApiClient, env: str) -> None:
    core = client.CoreV1Api(api)

    async def nodes() -> Sized:
        return list((await core.list_node(label_selector=env_node_selector(env))).items)

    await wait_until_empty(nodes)


async def delete_env_nodes(api: client.ApiClient, env: str) -> int:
    """Delete the nodes (and leases) of `env`; how many. Raises when they cannot be listed."""
    core = client.CoreV1Api(api)
    leases = client.CoordinationV1Api(api)
    nodes = await core.list_node(label_selector=env_node_selector(env))
    for node in nodes.items:
        name = node.metadata.name
        with contextlib.suppress(*GONE_ERRORS):
            await core.delete_node(name)
        with contextlib.suppress(*GONE_ERRORS):
            await leases.delete_namespaced_lease(name, LEASE_NAMESPACE)
    return len(nodes.items)


async def module_pods_and_nodes(
    api: client.ApiClient, env: str, namespace: str
) -> tuple[list[Any], list[Any]]:
    """The env's nodes and the namespace's module pods, for the live view."""
    core = client.CoreV1Api(api)
    nodes = await core.list_node(label_selector=env_node_selector(env), _request_timeout=10)
    pods = await core.list_namespaced_pod(
        namespace, label_selector=f"{SEED_MODULE_LABEL}=module", _request_timeout=10
    )
    return list(nodes.items), list(pods.items)


async def replica_leases(
    api: client.ApiClient, env: str, members_namespace: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The env's node Leases and its replicas' membership Leases (in the operator's
    NAMESPACE), as the API serves them: one list call each, by label."""
    coordination = client.CoordinationV1Api(api)
    nodes = await coordination.list_namespaced_lease(
        LEASE_NAMESPACE, label_selector=node_lease_selector(env), _request_timeout=10
    )
    members = await coordination.list_namespaced_lease(
        members_namespace, label_selector=f"{MEMBER_LABEL}={env}", _request_timeout=10
    )
    return (
        [api.sanitize_for_serialization(lease) for lease in nodes.items],
        [api.sanitize_for_serialization(lease) for lease in members.items],
    )


async def recent_events(api: client.ApiClient, namespace: str) -> list[str]:
    """The namespace's last 15 Events, a line each, for a diagnosis."""
    try:
        listed = await client.CoreV1Api(api).list_namespaced_event(namespace, _request_timeout=10)
    except GONE_ERRORS as error:
        return [f"(could not read events: {error})"]
    events = sorted(listed.items, key=lambda e: str(e.last_timestamp or e.event_time or ""))[-15:]
    lines = [f"Recent events in namespace {namespace}:"]
    for event in events:
        obj = event.involved_object
        lines.append(
            f"  {event.type} {event.reason} {obj.kind}/{obj.name} (x{event.count or 1}): "
            f"{' '.join((event.message or '').split())[:160]}"
        )
    return lines if events else [f"No events in namespace {namespace}."]
