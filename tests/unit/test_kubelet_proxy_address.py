"""Where the API server reaches the kubelet proxy: the address every virtual node advertises
(KUBELET_PROXY_ADDRESS, else the labelled Service's ClusterIP), while module pods keep their
base's IP; and the proxy's client CA, from the setting to the TLS handshake."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller.inbox import ModulePodChanged
from module_controller.kubelet_proxy import address
from module_controller.kubelet_proxy.address import (
    PROXY_SERVICE_LABEL,
    ProxyAddressError,
    resolve_proxy_address,
    service_address,
)
from module_controller.kubelet_proxy.lookup import BaseContainer
from module_controller.kubelet_proxy.paths import LogQuery, LogTarget
from module_controller.kubelet_proxy.server import bound_port, listen, make_app
from module_controller.kubelet_proxy.tls import make_self_signed, server_context
from module_controller.protocol import BaseMetadata, BaseStatus
from module_controller.protocol.states import BizState
from module_controller.registry import BaseRecord, BaseRegistry
from module_controller.runtime import Runtime
from module_controller.settings import Settings
from module_controller.tunnels.events import BaseInventory, BizOperationResult, BrokerConnected
from module_controller.vnode_manifest import (
    base_status_of_node,
    node_addresses,
    node_manifest,
    status_patch,
)
from tests.unit.modules_support import install_reply, simple
from tests.unit.wiring_support import IDENTITY, Wired, heartbeat, module_pod

PROXY_IP = "10.96.0.10"
BASE_IP = "10.0.0.9"  # wiring_support's heartbeat
NAMESPACE = "module-controller"


def _record() -> BaseRecord:
    status = BaseStatus(
        base_metadata=BaseMetadata(identity="b1", name="base", version="1", cluster_name="c"),
        local_ip="127.0.0.9",
        local_host_name="base-7d9f",
    )
    return BaseRecord(identity="b1", status=status, node_name="virtual-node-b1", last_seen=0)


def proxy_settings(**more: Any) -> Settings:
    return Settings(kubelet_proxy_enabled=True, **more)


def service(name: str, cluster_ip: str = PROXY_IP, port: int = 10250) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {PROXY_SERVICE_LABEL: "true"}},
        "spec": {"clusterIP": cluster_ip, "ports": [{"port": port}]},
    }


# --- the node's addresses ----------------------------------------------------------------------


async def test_with_the_proxy_on_nodes_show_its_address_and_module_pods_their_base_ip() -> None:
    """The whole data path: the node says the proxy's IP, and nothing takes the base's IP from
    the node: the pod's podIP and hostIP are the base's, also after a restart adopts the node."""
    async with client.ApiClient() as api:
        wired = Wired(api, deployments=[])
        # As the runtime does at start: resolved into the settings the parts share.
        wired.settings.kubelet_proxy_enabled = True
        wired.settings.kubelet_proxy_address = ipaddress.ip_address(PROXY_IP)
        statuses: list[dict[str, Any]] = []
        patch = wired.cluster.patch_namespaced_pod_status

        async def recording(
            name: str, namespace: str, body: dict[str, Any], **_: Any
        ) -> dict[str, Any]:
            statuses.append(body["status"])
            return await patch(name, namespace, body)

        wired.cluster.patch_namespaced_pod_status = recording  # type: ignore[method-assign]
        wired.start()
        try:
            await wired.say(BrokerConnected())
            node = wired.registry.node_name_for(IDENTITY)
            await wired.say(heartbeat(), BaseInventory(IDENTITY, ()))
            await wired.say(ModulePodChanged("ADDED", module_pod("p1", "1", node)))
            await wired.until_logged(("install", "biz1:1"))
            await wired.say(BizOperationResult(IDENTITY, install_reply("biz1", "1")))
            await wired.say(BaseInventory(IDENTITY, simple(("biz1:1", BizState.ACTIVATED))))
            await wired.until_logged(("pod status", "p1 Ready=True"))
        finally:
            await wired.stop()
    created = wired.cluster.nodes[node]
    assert created["status"]["addresses"] == [{"type": "InternalIP", "address": PROXY_IP}]
    assert created["status"]["daemonEndpoints"] == {"kubeletEndpoint": {"Port": 10250}}
    for status in statuses:
        assert (status["podIP"], status["hostIP"]) == (BASE_IP, BASE_IP)
        assert status["podIPs"] == status["hostIPs"] == [{"ip": BASE_IP}]

    # A restarted operator takes the base's IP from the node's base record, not its address.
    found = base_status_of_node(created)
    assert found is not None
    registry = BaseRegistry(wired.settings)
    registry.adopt(found[0], found[1], node)
    adopted = registry.base_of_node(node)
    assert adopted is not None
    assert adopted.ip == BASE_IP


def test_without_the_proxy_a_node_shows_its_bases_ip_and_host_name() -> None:
    record = _record()
    assert node_addresses(record, Settings()) == [
        {"type": "InternalIP", "address": "127.0.0.9"},
        {"type": "Hostname", "address": "base-7d9f"},
    ]
    # KUBELET_PROXY_ADDRESS alone changes nothing: it is the proxy's address.
    assert node_addresses(
        record, Settings(kubelet_proxy_address=ipaddress.ip_address(PROXY_IP))
    ) == node_addresses(record, Settings())


def test_with_the_proxy_on_its_address_is_the_only_one_and_must_be_known() -> None:
    """No Hostname: by the API server's default preference it would be dialled first."""
    on = proxy_settings(kubelet_proxy_address="fd00::10")
    assert node_addresses(_record(), on) == [{"type": "InternalIP", "address": "fd00::10"}]
    with pytest.raises(RuntimeError, match="not resolved"):
        node_addresses(_record(), proxy_settings())


def test_a_status_patch_replaces_the_address_list_whole() -> None:
    """Merged by type, the Hostname a node showed before the proxy was on would stay."""
    manifest = node_manifest(_record(), proxy_settings(kubelet_proxy_address=PROXY_IP))
    patch = status_patch(manifest)
    assert patch["status"]["addresses"] == [
        {"type": "InternalIP", "address": PROXY_IP},
        {"$patch": "replace"},
    ]
    assert manifest["status"]["addresses"] == [{"type": "InternalIP", "address": PROXY_IP}]
    assert patch["status"]["conditions"] == manifest["status"]["conditions"]


# --- the Service, as the Go controller finds it ---------------------------------------------


def test_the_one_labelled_services_cluster_ip_is_the_address() -> None:
    assert service_address([service("kp")], NAMESPACE, 10250) == ipaddress.ip_address(PROXY_IP)


@pytest.mark.parametrize(
    ("services", "says"),
    [
        ([], "and no Service is labelled"),
        ([service("b"), service("a")], "(NAMESPACE): a, b; keep exactly one"),
        ([service("kp", cluster_ip="None")], "Service kp labelled"),
    ],
    ids=["missing", "ambiguous", "headless"],
)
def test_a_missing_ambiguous_or_headless_service_is_one_sentence_naming_what_to_do(
    services: list[dict[str, Any]], says: str
) -> None:
    with pytest.raises(ProxyAddressError) as caught:
        service_address(services, NAMESPACE, 10250)
    message = str(caught.value)
    assert "\n" not in message
    assert says in message
    for named in (f"{PROXY_SERVICE_LABEL}=true", "namespace module-controller (NAMESPACE)"):
        assert named in message
    assert "KUBELET_PROXY_ADDRESS" in message


def test_a_service_without_the_proxy_port_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=address.__name__):
        service_address([service("kp", port=443)], NAMESPACE, 10250)
    (record,) = caplog.records
    assert "has no port 10250 (KUBELET_PROXY_PORT)" in record.getMessage()


class FakeCore:
    """CoreV1Api's Service list: answers `answer` (Services, or an error), records what it is
    asked."""

    def __init__(self) -> None:
        self.answer: list[client.V1Service] | Exception = []
        self.asked: list[tuple[str, str]] = []

    async def list_namespaced_service(self, namespace: str, label_selector: str) -> Any:
        self.asked.append((namespace, label_selector))
        if isinstance(self.answer, Exception):
            raise self.answer
        return client.V1ServiceList(items=self.answer)


@pytest.fixture
def fake_core(monkeypatch: pytest.MonkeyPatch) -> FakeCore:
    core = FakeCore()
    # Every CoreV1Api made meanwhile (the lookup's) is this fake.
    monkeypatch.setattr(client, "CoreV1Api", lambda api: core)
    return core


async def test_the_service_is_looked_up_in_namespace_unless_an_address_is_set(
    fake_core: FakeCore,
) -> None:
    fake_core.answer = [
        client.V1Service(
            metadata=client.V1ObjectMeta(name="kp"),
            spec=client.V1ServiceSpec(
                cluster_ip=PROXY_IP, ports=[client.V1ServicePort(port=10250)]
            ),
        )
    ]
    async with client.ApiClient() as api:
        settings = proxy_settings(namespace="team")
        assert await resolve_proxy_address(api, settings) == ipaddress.ip_address(PROXY_IP)
        assert fake_core.asked == [("team", f"{PROXY_SERVICE_LABEL}=true")]
        given = proxy_settings(kubelet_proxy_address="192.0.2.1")
        assert await resolve_proxy_address(api, given) == ipaddress.ip_address("192.0.2.1")
    assert len(fake_core.asked) == 1, "KUBELET_PROXY_ADDRESS wins: no lookup"


async def test_a_refused_lookup_names_the_rule_and_the_alternative(
    fake_core: FakeCore,
) -> None:
    fake_core.answer = ApiException(status=403, reason="Forbidden")
    async with client.ApiClient() as api:
        with pytest.raises(ProxyAddressError) as caught:
            await resolve_proxy_address(api, proxy_settings(namespace="team"))
    assert "namespace team (NAMESPACE): the API server answered 403 Forbidden" in str(caught.value)
    assert "list on services" in str(caught.value)
    assert "KUBELET_PROXY_ADDRESS" in str(caught.value)


# --- the client CA --------------------------------------------------------------------------


async def test_the_client_ca_setting_reaches_the_proxy(tmp_path: Path) -> None:
    crt, _ = make_self_signed(tmp_path)
    async with client.ApiClient() as api:
        runtime = Runtime(proxy_settings(kubelet_proxy_client_ca_path=crt), api)
    assert runtime.kubelet_proxy is not None
    assert runtime.kubelet_proxy.tls[2] == crt


@contextlib.asynccontextmanager
async def _proxy_requiring(ca: Path, tmp_path: Path) -> AsyncIterator[str]:
    async def locate(target: LogTarget) -> BaseContainer:
        raise AssertionError("only the TLS handshake is tested")

    def open_log(
        base: BaseContainer, query: LogQuery
    ) -> contextlib.AbstractAsyncContextManager[Any]:
        raise AssertionError("only the TLS handshake is tested")

    crt, key = make_self_signed(tmp_path / "server")
    context = await asyncio.to_thread(server_context, crt, key, ca)
    runner = await listen(make_app(locate, open_log), "127.0.0.1", 0, context)
    try:
        yield f"https://127.0.0.1:{bound_port(runner)}/"
    finally:
        await runner.cleanup()


async def test_with_a_client_ca_only_callers_with_a_certificate_it_signed_are_served(
    tmp_path: Path,
) -> None:
    (tmp_path / "server").mkdir()
    (tmp_path / "apiserver").mkdir()
    (tmp_path / "stranger").mkdir()
    # Self-signed: each certificate is its own CA.
    apiserver_crt, apiserver_key = make_self_signed(tmp_path / "apiserver")
    stranger_crt, stranger_key = make_self_signed(tmp_path / "stranger")
    async with _proxy_requiring(apiserver_crt, tmp_path) as url:
        for certificate in (None, (stranger_crt, stranger_key)):
            tls = ssl.create_default_context()
            tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
            if certificate is not None:
                tls.load_cert_chain(*certificate)
            async with aiohttp.ClientSession() as http:
                with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
                    async with http.get(url, ssl=tls) as response:
                        await response.read()
        tls = ssl.create_default_context()
        tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
        tls.load_cert_chain(apiserver_crt, apiserver_key)
        async with aiohttp.ClientSession() as http, http.get(url, ssl=tls) as response:
            assert response.status == 404  # through TLS, to the proxy: "/" is no log path
