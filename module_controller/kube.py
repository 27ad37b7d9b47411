"""The operator's Kubernetes API client: in-cluster or kubeconfig, never waiting forever.

kubernetes-asyncio sends requests without any timeout unless each call passes one; a
connection that stops answering would then stall a worker for good. Every request made
through this client gets a default deadline instead.

`check_cluster_config` loads the same configuration before anything starts, so a missing or
broken kubeconfig is one sentence and not a traceback from deep inside the operator.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from kubernetes_asyncio import client, config
from kubernetes_asyncio.config import ConfigException

DEFAULT_REQUEST_TIMEOUT = 30.0
DEFAULT_KUBECONFIG = "~/.kube/config"


class ClusterConfigError(RuntimeError):
    """No usable cluster configuration; the message says where it looked and why it failed."""


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


def _one_line(error: BaseException) -> str:
    # YAML errors span several lines (what, where, a caret); a start-up error is one line.
    return " ".join(str(error).split()) or type(error).__name__


def _kubeconfig_paths(kubeconfig: str | None) -> tuple[str, list[Path]]:
    """What the user named (for messages) and the files it means (KUBECONFIG may list several)."""
    named = kubeconfig or os.environ.get("KUBECONFIG") or DEFAULT_KUBECONFIG
    paths = [Path(part).expanduser() for part in named.split(os.pathsep) if part]
    return named, paths


async def check_cluster_config(kubeconfig: str | None = None) -> str:
    """Load the configuration `new_api_client` would use, without contacting the cluster.

    Returns where it came from ("in-cluster config" or the kubeconfig's path); raises
    ClusterConfigError with a one-line reason when there is none that works: no file, a file
    that is not a kubeconfig, a certificate file it names that does not exist.
    """
    in_cluster_problem = None
    if kubeconfig is None:
        try:
            config.load_incluster_config(client_configuration=client.Configuration())  # type: ignore[no-untyped-call]
            return "in-cluster config"
        except ConfigException as error:
            # Outside a pod this always fails; only inside one is the reason worth telling.
            if os.environ.get("KUBERNETES_SERVICE_HOST"):
                in_cluster_problem = f"in-cluster config failed ({_one_line(error)}) and "
    named, paths = _kubeconfig_paths(kubeconfig)
    prefix = in_cluster_problem or ("" if kubeconfig else "not in a pod, and ")
    existing = [path for path in paths if path.is_file()]
    if not existing:
        raise ClusterConfigError(f"no cluster configuration: {prefix}kubeconfig {named} not found")
    for path in existing:
        try:
            content = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            raise ClusterConfigError(
                f"kubeconfig {path} cannot be read: {_one_line(error)}"
            ) from None
        if not isinstance(content, dict):
            raise ClusterConfigError(f"kubeconfig {path} is not a kubeconfig (not a YAML mapping)")
    try:
        # persist_config=False: a check must never write the user's kubeconfig.
        await config.load_kube_config(
            config_file=named, client_configuration=client.Configuration(), persist_config=False
        )
    except Exception as error:  # the loader raises whatever a malformed file leads it to
        raise ClusterConfigError(f"kubeconfig {named} is not usable: {_one_line(error)}") from None
    return f"kubeconfig {named}"
