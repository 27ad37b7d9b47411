"""The kubelet proxy (`kubectl logs` for module pods): reading the API server's requests,
finding the base's pod, the serving certificate, and streaming over a real TLS socket."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web

from module_controller.kubelet_proxy.lookup import (
    CONTAINER_NAME_LABEL,
    BaseContainer,
    base_container_of,
    locate_base,
)
from module_controller.kubelet_proxy.paths import (
    LogQuery,
    LogTarget,
    Refusal,
    log_query,
    parse_path,
)
from module_controller.kubelet_proxy.server import (
    ClusterLogSource,
    KubeletProxy,
    bound_port,
    listen,
    make_app,
)
from module_controller.kubelet_proxy.tls import TlsSetupError, make_self_signed, server_context
from module_controller.protocol import BaseMetadata, BaseStatus
from module_controller.registry import BaseRecord
from module_controller.settings import Settings
from module_controller.testbed.host_kubelet import tail
from module_controller.vnode_manifest import kubelet_port_of, node_manifest, status_fingerprint

ENV = "dev"
NODE = "virtual-node-b1"
TARGET = LogTarget("team", "biz1-pod", "biz1")


def refusal_of(call: Any) -> Refusal:
    with pytest.raises(Refusal) as caught:
        call()
    return caught.value


# --- paths ------------------------------------------------------------------------------------


def test_a_container_log_path_names_namespace_pod_and_container() -> None:
    assert parse_path("GET", "/containerLogs/team/biz1-pod/biz1") == TARGET


@pytest.mark.parametrize(
    "path", ["/containerLogs/team/biz1-pod", "/containerLogs/team/p/c/extra", "/containerLogs//p/c"]
)
def test_a_malformed_log_path_is_refused(path: str) -> None:
    refusal = refusal_of(lambda: parse_path("GET", path))
    assert refusal.status == 404
    assert "/containerLogs/<namespace>/<pod>/<container>" in refusal.message


def test_logs_are_only_read() -> None:
    assert refusal_of(lambda: parse_path("POST", "/containerLogs/a/b/c")).status == 405


@pytest.mark.parametrize("kind", ["exec", "attach", "portForward", "run"])
def test_streams_into_a_container_are_not_implemented(kind: str) -> None:
    refusal = refusal_of(lambda: parse_path("POST", f"/{kind}/team/biz1-pod/biz1"))
    assert refusal.status == 501
    assert f"/{kind}" in refusal.message
    assert "base's own pod" in refusal.message


@pytest.mark.parametrize("path", ["/pods", "/stats/summary", "/metrics", "/"])
def test_other_kubelet_paths_are_not_served(path: str) -> None:
    refusal = refusal_of(lambda: parse_path("GET", path))
    assert refusal.status == 404
    assert "serves only GET /containerLogs" in refusal.message


def test_every_log_option_maps_to_the_pod_log_query() -> None:
    query = log_query(
        {
            "follow": "true",
            "previous": "1",
            "timestamps": "True",
            "tailLines": "10",
            "sinceTime": "2026-01-01T00:00:00Z",
            "limitBytes": "500",
            "stream": "All",
            "unknown": "ignored, as the kubelet ignores it",
        }
    )
    assert query == LogQuery(
        follow=True,
        previous=True,
        timestamps=True,
        tail_lines=10,
        since_time="2026-01-01T00:00:00Z",
        limit_bytes=500,
        stream="All",
    )
    assert query.api_params() == [
        ("follow", "true"),
        ("previous", "true"),
        ("timestamps", "true"),
        ("tailLines", "10"),
        ("sinceTime", "2026-01-01T00:00:00Z"),
        ("limitBytes", "500"),
        ("stream", "All"),
    ]
    since = log_query({"sinceSeconds": "30", "follow": "false"})
    assert since.api_params() == [("sinceSeconds", "30")]
    assert log_query({}).api_params() == []
    assert log_query({"tailLines": "0"}).tail_lines == 0


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ({"follow": "yes"}, "not a boolean"),
        ({"tailLines": "ten"}, "not a whole number"),
        ({"tailLines": "-1"}, "at least 0"),
        ({"sinceSeconds": "0"}, "at least 1"),
        ({"limitBytes": "0"}, "at least 1"),
        ({"sinceTime": "yesterday"}, "RFC 3339"),
        ({"sinceSeconds": "5", "sinceTime": "2026-01-01T00:00:00Z"}, "at most one"),
        ({"stream": "Both"}, "not one of"),
    ],
)
def test_bad_log_options_are_refused_with_what_is_wrong(query: dict[str, str], says: str) -> None:
    refusal = refusal_of(lambda: log_query(query))
    assert refusal.status == 400
    assert says in refusal.message


# --- finding the base's pod -------------------------------------------------------------------


class Objects:
    """An ObjectReader over dicts."""

    def __init__(self) -> None:
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.nodes: dict[str, dict[str, Any]] = {}

    async def pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.pods.get((namespace, name))

    async def node(self, name: str) -> dict[str, Any] | None:
        return self.nodes.get(name)


def pod(name: str, containers: list[str], labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"nodeName": NODE, "containers": [{"name": c} for c in containers]},
    }


def cluster(host_name: str | None = "base-7d9f", env: str = ENV) -> Objects:
    objects = Objects()
    labels = {
        "virtual-kubelet.koupleless.io/component": "vnode",
        "virtual-kubelet.koupleless.io/env": env,
        "kubernetes.io/hostname": NODE,
    }
    if host_name is not None:
        labels["base.koupleless.io/host-name"] = host_name
    objects.nodes[NODE] = {"metadata": {"name": NODE, "labels": labels}}
    objects.pods[("team", "biz1-pod")] = pod("biz1-pod", ["biz1"])
    return objects


async def test_the_node_host_name_label_names_the_base_pod_in_the_module_pods_namespace() -> None:
    objects = cluster()
    objects.pods[("team", "base-7d9f")] = pod("base-7d9f", ["sidecar", "base"])
    objects.pods[("other", "base-7d9f")] = pod("base-7d9f", ["base"])  # another namespace's
    assert await locate_base(objects, ENV, TARGET) == BaseContainer("team", "base-7d9f", "base")


async def test_without_a_host_name_label_kubernetes_hostname_names_it() -> None:
    objects = cluster(host_name="")
    objects.pods[("team", NODE)] = pod(NODE, ["base"])
    assert await locate_base(objects, ENV, TARGET) == BaseContainer("team", NODE, "base")


async def test_a_base_that_is_no_pod_is_refused_saying_so_and_how_it_is_named() -> None:
    refusal = await _refused(locate_base(cluster(), ENV, TARGET))
    assert refusal.status == 400  # the API server shows kubectl the text of a 400, not a 404's
    assert "is not a pod in the cluster" in refusal.message
    assert "no pod named 'base-7d9f' in namespace team" in refusal.message
    assert "base.koupleless.io/host-name" in refusal.message
    assert CONTAINER_NAME_LABEL in refusal.message


async def test_pods_off_our_virtual_nodes_are_not_served() -> None:
    refusal = await _refused(locate_base(cluster(env="prod"), ENV, TARGET))
    assert refusal.status == 404
    assert "not a virtual node of this module controller" in refusal.message
    assert (await _refused(locate_base(Objects(), ENV, TARGET))).status == 404
    unscheduled = cluster()
    unscheduled.pods[("team", "biz1-pod")]["spec"].pop("nodeName")
    assert "not on a node yet" in (await _refused(locate_base(unscheduled, ENV, TARGET))).message


async def _refused(lookup: Any) -> Refusal:
    with pytest.raises(Refusal) as caught:
        await lookup
    return caught.value


def test_the_base_container_is_the_labelled_one_else_base_else_the_only_one() -> None:
    labelled = pod("b", ["jvm", "base"], {CONTAINER_NAME_LABEL: "jvm"})
    assert base_container_of(labelled) == "jvm"
    assert base_container_of(pod("b", ["agent", "base"])) == "base"
    assert base_container_of(pod("b", ["app"])) == "app"
    several = refusal_of(lambda: base_container_of(pod("b", ["app", "agent"])))
    assert several.status == 400
    assert CONTAINER_NAME_LABEL in several.message
    missing = refusal_of(lambda: base_container_of(pod("b", ["app"], {CONTAINER_NAME_LABEL: "x"})))
    assert "no container 'x'" in missing.message


# --- the node advertises the proxy ------------------------------------------------------------


def _record() -> BaseRecord:
    status = BaseStatus(
        base_metadata=BaseMetadata(identity="b1", name="base", version="1", cluster_name="c"),
        local_ip="127.0.0.9",
        local_host_name="base-7d9f",
    )
    return BaseRecord(identity="b1", status=status, node_name=NODE, last_seen=0)


def test_the_node_advertises_the_proxy_port_only_when_the_proxy_is_on() -> None:
    proxy = Settings(
        kubelet_proxy_enabled=True,
        kubelet_proxy_port=10351,
        kubelet_proxy_address=ipaddress.ip_address("10.96.0.7"),
    )
    on = node_manifest(_record(), proxy)
    off = node_manifest(_record(), Settings())
    assert on["status"]["daemonEndpoints"] == {"kubeletEndpoint": {"Port": 10351}}
    assert kubelet_port_of(off) == 0
    assert on["metadata"]["labels"]["base.koupleless.io/host-name"] == "base-7d9f"
    # A change of port (or the proxy turned on or off) is a status change to write.
    assert status_fingerprint(on) != status_fingerprint(off)
    assert kubelet_port_of({"status": {}}) == 0  # a node as adopted, without the field


# --- TLS --------------------------------------------------------------------------------------


def test_certificate_and_key_go_together(tmp_path: Path) -> None:
    with pytest.raises(TlsSetupError, match="go together"):
        server_context(tmp_path / "tls.crt", None)


def test_a_certificate_that_cannot_be_read_is_named(tmp_path: Path) -> None:
    with pytest.raises(TlsSetupError, match="cannot load the kubelet proxy's certificate"):
        server_context(tmp_path / "missing.crt", tmp_path / "missing.key")


def test_configured_files_and_a_client_ca_are_used(tmp_path: Path) -> None:
    crt, key = make_self_signed(tmp_path)
    context = server_context(crt, key, client_ca=crt)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert server_context(crt, key).verify_mode == ssl.CERT_NONE


# --- serving over TLS -------------------------------------------------------------------------


class FakeBody:
    """An upstream log body: the chunks given, then (when following) whatever is put."""

    def __init__(self, chunks: list[bytes], follow: bool) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        for chunk in chunks:
            self.queue.put_nowait(chunk)
        self.follow = follow
        self.closed = asyncio.Event()

    async def iter_any(self) -> AsyncIterator[bytes]:
        while self.follow or not self.queue.empty():
            yield await self.queue.get()


class FakeSource:
    def __init__(self) -> None:
        self.opened: list[tuple[BaseContainer, LogQuery]] = []
        self.bodies: list[FakeBody] = []

    async def locate(self, target: LogTarget) -> BaseContainer:
        if target.pod == "orphan":
            raise Refusal(400, "the base of node n is not a pod in the cluster")
        return BaseContainer(target.namespace, "base-7d9f", "base")

    @contextlib.asynccontextmanager
    async def open_log(self, base: BaseContainer, query: LogQuery) -> AsyncIterator[FakeBody]:
        self.opened.append((base, query))
        body = FakeBody([b"line 1\n", b"line 2\n"], query.follow)
        self.bodies.append(body)
        try:
            yield body
        finally:
            body.closed.set()


@pytest.fixture
async def served() -> AsyncIterator[tuple[FakeSource, str]]:
    source = FakeSource()
    context = await asyncio.to_thread(server_context, None, None)
    runner = await listen(make_app(source.locate, source.open_log, 1), "127.0.0.1", 0, context)
    try:
        yield source, f"https://127.0.0.1:{bound_port(runner)}"
    finally:
        await runner.cleanup()


def _session() -> aiohttp.ClientSession:
    # Self-signed, as the API server accepts it without --kubelet-certificate-authority.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=False), timeout=aiohttp.ClientTimeout(total=5)
    )


async def test_a_log_is_relayed_with_its_options(served: tuple[FakeSource, str]) -> None:
    source, url = served
    async with _session() as http:
        async with http.get(f"{url}/containerLogs/team/biz1-pod/biz1?tailLines=2") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            assert await response.text() == "line 1\nline 2\n"
        async with http.get(f"{url}/containerLogs/team/orphan/biz1") as response:
            assert response.status == 400
            assert "is not a pod in the cluster" in await response.text()
        async with http.post(f"{url}/exec/team/biz1-pod/biz1?command=sh") as response:
            assert response.status == 501
    assert source.opened == [(BaseContainer("team", "base-7d9f", "base"), LogQuery(tail_lines=2))]
    assert source.bodies[0].closed.is_set()


async def test_a_followed_log_streams_until_the_caller_leaves(
    served: tuple[FakeSource, str],
) -> None:
    source, url = served
    async with _session() as http:
        response = await http.get(f"{url}/containerLogs/team/biz1-pod/biz1?follow=true")
        assert await response.content.readline() == b"line 1\n"
        assert await response.content.readline() == b"line 2\n"
        source.bodies[0].queue.put_nowait(b"line 3, later\n")
        assert await response.content.readline() == b"line 3, later\n"
        # One stream at most here (max_streams=1): a second one is refused meanwhile.
        async with http.get(f"{url}/containerLogs/team/biz1-pod/biz1") as second:
            assert second.status == 503
        response.close()  # the caller leaves; the proxy closes the upstream log
        await asyncio.wait_for(source.bodies[0].closed.wait(), timeout=3)
        async with http.get(f"{url}/containerLogs/team/biz1-pod/biz1") as third:
            assert third.status == 200, "the stream that ended is not counted any more"


async def test_the_proxy_serves_tls_and_says_when_the_api_server_is_unreachable() -> None:
    from kubernetes_asyncio import client

    configuration = client.Configuration(host="http://127.0.0.1:9")  # the discard port
    api = client.ApiClient(configuration)
    proxy = KubeletProxy(api, ENV, 0, host="127.0.0.1")
    await proxy.start()
    try:
        async with (
            _session() as http,
            http.get(f"https://127.0.0.1:{proxy.port}/containerLogs/team/p/c") as response,
        ):
            assert response.status == 503
            assert "cannot reach the API server" in await response.text()
    finally:
        await proxy.stop()
        await api.close()


async def test_an_api_server_refusal_of_the_base_log_reaches_kubectl_as_a_sentence() -> None:
    from kubernetes_asyncio import client

    class Upstream:
        status = 400
        closed = False
        content = asyncio.StreamReader()

        def close(self) -> None:
            self.closed = True

    upstream = Upstream()
    upstream.content.feed_data(
        b'{"kind":"Status","message":"previous terminated container \\"base\\" not found"}'
    )
    upstream.content.feed_eof()

    class LogApi:
        async def call_api(self, *args: Any, **kwargs: Any) -> Upstream:
            assert kwargs["query_params"] == [("container", "base"), ("previous", "true")]
            return upstream

        async def close(self) -> None:
            pass

    api = client.ApiClient(client.Configuration(host="http://127.0.0.1:9"))
    source = ClusterLogSource(api, ENV)
    await source.close()
    source.log_api = cast(Any, LogApi())
    with pytest.raises(Refusal) as caught:
        async with source.open_log(BaseContainer("t", "b", "base"), LogQuery(previous=True)):
            pass
    assert caught.value.status == 400
    assert 'previous terminated container "base" not found' in caught.value.message
    assert upstream.closed
    await api.close()


def test_the_stand_in_kubelet_tails_like_a_kubelet() -> None:
    data = b"a\nb\nc"
    assert tail(data, None) == data
    assert tail(data, 2) == b"b\nc"
    assert tail(data, 0) == b""
    assert tail(data, 10) == data


async def test_a_started_proxy_that_cannot_listen_says_which_setting(tmp_path: Path) -> None:
    from kubernetes_asyncio import client

    api = client.ApiClient(client.Configuration(host="http://127.0.0.1:9"))
    blocker = await listen(web.Application(), "127.0.0.1", 0, server_context(None, None))
    proxy = KubeletProxy(api, ENV, bound_port(blocker), host="127.0.0.1")
    try:
        with pytest.raises(OSError, match="KUBELET_PROXY_PORT"):
            await proxy.start()
    finally:
        await proxy.stop()
        await blocker.cleanup()
        await api.close()
