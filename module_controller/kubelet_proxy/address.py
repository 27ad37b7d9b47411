"""Where the API server reaches the kubelet proxy: the address every virtual node advertises.

For `kubectl logs` the API server connects to the node's preferred address (its
`--kubelet-preferred-address-types`, by default Hostname, InternalDNS, InternalIP,
ExternalDNS, ExternalIP) on `status.daemonEndpoints.kubeletEndpoint.Port`. A base's IP and
host name lead to the base, not to the operator; so with the proxy on, a node's only address
is an InternalIP of the proxy (`vnode_manifest.node_addresses`): KUBELET_PROXY_ADDRESS when
set, else, as the Go controller does, the ClusterIP of the one Service labelled
`virtual-kubelet.koupleless.io/kubelet-proxy-service: "true"` in NAMESPACE. It is looked up
once, at start: a Service keeps its ClusterIP for as long as it exists.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller.settings import Settings

log = logging.getLogger(__name__)

PROXY_SERVICE_LABEL = "virtual-kubelet.koupleless.io/kubelet-proxy-service"
PROXY_SERVICE_SELECTOR = f"{PROXY_SERVICE_LABEL}=true"

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ProxyAddressError(RuntimeError):
    """No address for the nodes to advertise; the message says what to create or set."""


NEEDS = "KUBELET_PROXY_ENABLED=true needs an address for the nodes to advertise"
OR_ADDRESS = "or set KUBELET_PROXY_ADDRESS to an IP where the API server reaches the operator"


def service_address(services: list[dict[str, Any]], namespace: str, port: int) -> IpAddress:
    """The ClusterIP of the one labelled Service in `services` (plain dicts, as listed), or a
    ProxyAddressError saying what is wrong and what to do, in one line."""
    names = sorted(str((s.get("metadata") or {}).get("name")) for s in services)
    where = f"labelled {PROXY_SERVICE_LABEL}=true in namespace {namespace} (NAMESPACE)"
    if not services:
        raise ProxyAddressError(
            f"{NEEDS}, and no Service is {where}: create one, with a ClusterIP and port {port} "
            f"leading to the operator's pod, {OR_ADDRESS}"
        )
    if len(services) > 1:
        raise ProxyAddressError(
            f"{NEEDS}, and {len(services)} Services are {where}: {', '.join(names)}; keep "
            f"exactly one, {OR_ADDRESS}"
        )
    spec = services[0].get("spec") or {}
    cluster_ip = str(spec.get("clusterIP") or "")
    try:
        address = ipaddress.ip_address(cluster_ip)
    except ValueError:
        raise ProxyAddressError(
            f"{NEEDS}, and the Service {names[0]} {where} has no ClusterIP "
            f"({cluster_ip or 'none'}): make it of type ClusterIP, not headless, {OR_ADDRESS}"
        ) from None
    ports = {p.get("port") for p in spec.get("ports") or []}
    if port not in ports:
        # Not fatal (the Go controller does not check either), but kubectl logs cannot work.
        log.warning(
            "Kubelet proxy: Service %s/%s has no port %d (KUBELET_PROXY_PORT), but the API "
            "server connects to %s:%d for kubectl logs of module pods; add that port.",
            namespace,
            names[0],
            port,
            cluster_ip,
            port,
        )
    return address


async def resolve_proxy_address(api: client.ApiClient, settings: Settings) -> IpAddress:
    """The address the nodes advertise: KUBELET_PROXY_ADDRESS, else the Service's ClusterIP."""
    if settings.kubelet_proxy_address is not None:
        log.info(
            "Kubelet proxy: nodes advertise %s (KUBELET_PROXY_ADDRESS).",
            settings.kubelet_proxy_address,
        )
        return settings.kubelet_proxy_address
    namespace, port = settings.namespace, settings.kubelet_proxy_port
    try:
        listed = await client.CoreV1Api(api).list_namespaced_service(
            namespace, label_selector=PROXY_SERVICE_SELECTOR
        )
    except ApiException as error:
        raise ProxyAddressError(
            f"KUBELET_PROXY_ENABLED=true: cannot list the Services labelled "
            f"{PROXY_SERVICE_LABEL}=true in namespace {namespace} (NAMESPACE): the API server "
            f"answered {error.status} {error.reason} (the ClusterRole needs list on services); "
            "or set KUBELET_PROXY_ADDRESS"
        ) from None
    except (aiohttp.ClientError, TimeoutError) as error:
        raise ProxyAddressError(
            f"KUBELET_PROXY_ENABLED=true: cannot list the Services in namespace {namespace} "
            f"to find the kubelet proxy's address: {error!r}"
        ) from None
    services = [api.sanitize_for_serialization(item) for item in listed.items]
    address = service_address(services, namespace, port)
    log.info(
        "Kubelet proxy: nodes advertise %s, the ClusterIP of Service %s/%s.",
        address,
        namespace,
        services[0]["metadata"]["name"],
    )
    return address
