"""A kubeconfig whose only rights are the shipped ClusterRole's (a ServiceAccount's token
from the TokenRequest API), and the check that the operator was never refused with it.

Used by test_rbac.py and test_kubectl_logs.py through the `restricted` fixture (conftest).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller.testbed.operator_process import OperatorProcess

REPO = Path(__file__).resolve().parents[2]
CLUSTER_ROLE_FILE = REPO / "manifests" / "02-clusterrole.yaml"
SERVICE_ACCOUNT = "module-controller"
TOKEN_SECONDS = 3600
# "Forbidden" in any case, an HTTP 403 (not the milliseconds of a time stamp: ",403"), or
# Kopf's "Not enough permissions" when it falls back instead of failing.
FORBIDDEN = re.compile(r"forbidden|not enough permissions|(?<![\w,.:-])403(?!\w)", re.IGNORECASE)


@dataclass(frozen=True)
class Restricted:
    """A kubeconfig whose only rights are the shipped ClusterRole's."""

    kubeconfig: Path
    cluster_role: str


def cluster_role_manifest(name: str) -> Any:
    (role,) = [
        doc
        for doc in yaml.safe_load_all(CLUSTER_ROLE_FILE.read_text())
        if doc and doc["kind"] == "ClusterRole"
    ]
    role["metadata"]["name"] = name
    return role


def current_cluster(kubeconfig: Path) -> dict[str, Any]:
    """The cluster entry (server, CA) of the kubeconfig's current context, CA path absolute."""
    config = yaml.safe_load(kubeconfig.read_text())
    context_name = config["current-context"]
    context = next(c["context"] for c in config["contexts"] if c["name"] == context_name)
    cluster = dict(
        next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
    )
    authority = cluster.get("certificate-authority")
    if authority and not Path(authority).is_absolute():
        cluster["certificate-authority"] = str((kubeconfig.parent / authority).resolve())
    return cluster


def write_token_kubeconfig(path: Path, cluster: dict[str, Any], token: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": cluster}],
        "users": [{"name": SERVICE_ACCOUNT, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "cluster", "user": SERVICE_ACCOUNT}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)


@asynccontextmanager
async def restricted_kubeconfig(
    k8s_api: client.ApiClient, kubeconfig: Path, namespace: str, tmp_path: Path
) -> AsyncIterator[Restricted]:
    core = client.CoreV1Api(k8s_api)
    rbac = client.RbacAuthorizationV1Api(k8s_api)
    name = f"module-controller-rbac-test-{uuid.uuid4().hex[:8]}"
    await core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=SERVICE_ACCOUNT))
    )
    await rbac.create_cluster_role(cluster_role_manifest(name))
    binding: Any = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": namespace}],
    }
    await rbac.create_cluster_role_binding(binding)
    try:
        request: Any = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": TOKEN_SECONDS},
        }
        answer = await core.create_namespaced_service_account_token(
            SERVICE_ACCOUNT, namespace, request
        )
        path = tmp_path / "service-account.kubeconfig"
        write_token_kubeconfig(path, current_cluster(kubeconfig), answer.status.token)
        yield Restricted(path, name)
    finally:
        for delete in (rbac.delete_cluster_role_binding, rbac.delete_cluster_role):
            try:
                await delete(name)
            except ApiException as error:
                if error.status != 404:
                    raise


def assert_never_forbidden(operator: OperatorProcess) -> None:
    text = operator.log.read_text(errors="replace")
    refused = [line for line in text.splitlines() if FORBIDDEN.search(line)]
    assert not refused, "the API server refused the operator:\n" + "\n".join(refused[:20])
    assert operator.alive, operator.tail()
