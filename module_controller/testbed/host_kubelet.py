"""A stand-in kubelet for one "host" Node of the testbed: pods bound to it have a log.

The testbed has no kubelet and no container runtime, so no pod really runs. A base that
runs as a pod (what `kubectl logs <module pod>` needs: the operator shows the base pod's
log) is mocked here, and only what cannot run is: this registers a real Node whose
`status.daemonEndpoints` point at itself, keeps its Lease renewed (so the node-lifecycle
controller leaves it alone), marks the pods it is given Running, and answers the kubelet
log API over TLS from one file per container — to which a test appends lines. The API
server, RBAC, `kubectl` and the operator's proxy in front of it are all the real ones.

    kubelet = HostKubelet(api, "testbed-host-1", log_dir)
    await kubelet.start()
    log_file = await kubelet.run_pod("default", "my-base", "base")
    log_file.write_text("hello\\n")   # kubectl logs my-base  →  hello
    await kubelet.stop()

Only the log options a test needs are honoured (follow, tailLines, limitBytes); the others
are refused with 400, so a test that relies on them fails clearly instead of silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from pathlib import Path
from typing import Any

from aiohttp import web
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller.kubelet_proxy.paths import LogQuery, Refusal, log_query, parse_path
from module_controller.kubelet_proxy.server import bound_port, listen
from module_controller.kubelet_proxy.tls import server_context

log = logging.getLogger(__name__)

LEASE_NAMESPACE = "kube-node-lease"
LEASE_SECONDS = 40
RENEW_SECONDS = 5.0
FOLLOW_POLL_SECONDS = 0.1
# Keeps the scheduler's pods off this node; pods bound by spec.nodeName ignore it.
TAINT_KEY = "module-controller.koupleless.io/testbed-host"
IMAGE = "testbed.invalid/stand-in:latest"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _stamp(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _read_from(path: Path, offset: int) -> bytes:
    with path.open("rb") as file:
        file.seek(offset)
        return file.read()


def tail(data: bytes, lines: int | None) -> bytes:
    """The last `lines` lines of `data` (a last line without its newline counts)."""
    if lines is None:
        return data
    if lines == 0:
        return b""
    return b"".join(data.splitlines(keepends=True)[-lines:])


class HostKubelet:
    """One Node with a kubelet log API on `host` (a free port), for the pods it is given."""

    def __init__(
        self, api: client.ApiClient, node_name: str, log_dir: Path, host: str = "127.0.0.1"
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.coordination = client.CoordinationV1Api(api)
        self.node_name = node_name
        self.log_dir = log_dir
        self.host = host
        self.port: int | None = None
        self.pods: dict[tuple[str, str], str] = {}  # (namespace, name) -> container
        self.active_streams = 0  # log requests being answered (a followed one stays)
        self._runner: web.AppRunner | None = None
        self._renewing: asyncio.Task[None] | None = None

    def log_file(self, namespace: str, pod: str, container: str) -> Path:
        return self.log_dir / f"{namespace}_{pod}_{container}.log"

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        context = await asyncio.to_thread(server_context, None, None)
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._serve)
        self._runner = await listen(app, self.host, 0, context)
        self.port = bound_port(self._runner)
        await self._register_node()
        self._renewing = asyncio.create_task(self._renew(), name=f"{self.node_name} lease")

    async def stop(self) -> None:
        """Remove what it made: pods (at once: no kubelet would finish them), Lease, Node."""
        if self._renewing is not None:
            self._renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewing
        for namespace, name in list(self.pods):
            await self._gone(
                self.core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
            )
        await self._gone(self.coordination.delete_namespaced_lease(self.node_name, LEASE_NAMESPACE))
        await self._gone(self.core.delete_node(self.node_name))
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @staticmethod
    async def _gone(deletion: Any) -> None:
        try:
            await deletion
        except ApiException as error:
            if error.status != 404:
                raise

    async def _register_node(self) -> None:
        node: Any = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": {"kubernetes.io/hostname": self.node_name, TAINT_KEY: "true"},
            },
            "spec": {"taints": [{"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"}]},
        }
        await self.core.create_node(node)
        await self.core.patch_node_status(self.node_name, {"status": self._node_status()})
        lease: Any = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.node_name, "namespace": LEASE_NAMESPACE},
            "spec": self._lease_spec(),
        }
        await self.coordination.create_namespaced_lease(LEASE_NAMESPACE, lease)

    def _node_status(self) -> dict[str, Any]:
        stamp = _stamp(_now())
        return {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "StandInKubelet",
                    "message": "the testbed's stand-in kubelet serves container logs",
                    "lastHeartbeatTime": stamp,
                    "lastTransitionTime": stamp,
                }
            ],
            # Only an InternalIP: the API server reaches it whatever its address preference.
            "addresses": [{"type": "InternalIP", "address": self.host}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
        }

    def _lease_spec(self) -> dict[str, Any]:
        return {
            "holderIdentity": self.node_name,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": _now().strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            try:
                body: Any = {"spec": self._lease_spec()}
                await self.coordination.patch_namespaced_lease(
                    self.node_name, LEASE_NAMESPACE, body
                )
                await self.core.patch_node_status(self.node_name, {"status": self._node_status()})
            except ApiException as error:
                log.warning("Stand-in kubelet %s: renewal failed: %s", self.node_name, error)

    # --- pods -------------------------------------------------------------------------------

    async def run_pod(
        self,
        namespace: str,
        name: str,
        container: str = "base",
        labels: dict[str, str] | None = None,
    ) -> Path:
        """A Pod bound to this node, Running and Ready; the file its container logs to."""
        log_file = self.log_file(namespace, name, container)
        log_file.touch()
        pod: Any = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {
                "nodeName": self.node_name,
                "containers": [{"name": container, "image": IMAGE}],
            },
        }
        await self.core.create_namespaced_pod(namespace, pod)
        self.pods[(namespace, name)] = container
        started = _stamp(_now())
        running = [("PodScheduled", "True"), ("Initialized", "True")]
        running += [("ContainersReady", "True"), ("Ready", "True")]
        status: Any = {
            "status": {
                "phase": "Running",
                "hostIP": self.host,
                "podIP": self.host,
                "startTime": started,
                "conditions": [
                    {"type": kind, "status": value, "lastTransitionTime": started}
                    for kind, value in running
                ],
                "containerStatuses": [
                    {
                        "name": container,
                        "image": IMAGE,
                        "imageID": "",
                        "ready": True,
                        "started": True,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": started}},
                    }
                ],
            }
        }
        await self.core.patch_namespaced_pod_status(name, namespace, status)
        return log_file

    # --- the kubelet log API ----------------------------------------------------------------

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        try:
            target = parse_path(request.method, request.path)
            query = log_query(request.query)
            self._refuse_unsupported(query)
            if self.pods.get((target.namespace, target.pod)) != target.container:
                where = f"{target.namespace}/{target.pod}"
                message = f"container {target.container} of pod {where} is not on this node"
                raise Refusal(404, message)
        except Refusal as refusal:
            return web.Response(status=refusal.status, text=refusal.message + "\n")
        path = self.log_file(target.namespace, target.pod, target.container)
        data = await asyncio.to_thread(_read_from, path, 0)
        offset = len(data)
        out = tail(data, query.tail_lines)
        budget = query.limit_bytes
        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await response.prepare(request)
        self.active_streams += 1
        try:
            while True:
                if budget is not None:
                    out, budget = out[:budget], budget - min(budget, len(out))
                if out:
                    await response.write(out)
                if not query.follow or budget == 0:
                    break
                await asyncio.sleep(FOLLOW_POLL_SECONDS)
                out = await asyncio.to_thread(_read_from, path, offset)
                offset += len(out)
        finally:
            # A caller that leaves cancels this handler (handler_cancellation), ending here.
            self.active_streams -= 1
        await response.write_eof()
        return response

    @staticmethod
    def _refuse_unsupported(query: LogQuery) -> None:
        unsupported = [
            name
            for name, asked in (
                ("previous", query.previous),
                ("timestamps", query.timestamps),
                ("sinceSeconds", query.since_seconds is not None),
                ("sinceTime", query.since_time is not None),
                ("stream", query.stream not in (None, "All")),
            )
            if asked
        ]
        if unsupported:
            raise Refusal(
                400, f"the testbed's stand-in kubelet does not support {', '.join(unsupported)}"
            )
