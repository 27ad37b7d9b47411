"""The operator's Kubernetes API client: in-cluster or kubeconfig, never waiting forever.

kubernetes-asyncio sends requests without any timeout unless each call passes one; a
connection that stops answering would then stall a worker for good. Every request made
through this client gets a default deadline instead.
"""

from __future__ import annotations

from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.config import ConfigException

DEFAULT_REQUEST_TIMEOUT = 30.0


def with_request_timeout(api: client.ApiClient, seconds: float) -> client.ApiClient:
    """Give every request of `api` a deadline of `seconds` unless the call sets its own."""
    rest = api.rest_client
    send: Any = rest.request

    async def request(*args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        return await send(*args, _request_timeout=_request_timeout or seconds, **kwargs)

    # The client has no setting for a default timeout; wrapping its one entry point does.
    rest.request = request  # type: ignore[method-assign]
    return api


async def new_api_client(
    kubeconfig: str | None = None, timeout: float = DEFAULT_REQUEST_TIMEOUT
) -> client.ApiClient:
    """In-cluster credentials when running in a pod, else KUBECONFIG / ~/.kube/config."""
    if kubeconfig is None:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            return with_request_timeout(client.ApiClient(), timeout)
        except ConfigException:
            pass
    api = await config.new_client_from_config(config_file=kubeconfig)
    return with_request_timeout(api, timeout)
