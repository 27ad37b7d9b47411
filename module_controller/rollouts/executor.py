"""The API calls of the rollout controller: reading the world, carrying out the actions.

Objects are read and written as plain JSON (`_preload_content=False`): the canary's pod
template must be the Deployment's exactly, and a round trip through the client's model
classes would drop any field they do not know. A write that fails raises; the caller
retries the whole decision, which is level-based.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller.kube import read_json
from module_controller.rollouts.actions import (
    Action,
    CreateReplicaSet,
    DeletePod,
    DeleteReplicaSet,
    PatchDeployment,
    PatchReplicaSet,
    ReplaceDeploymentTemplate,
    ResetApproval,
    ScaleReplicaSet,
)
from module_controller.rollouts.model import FIELD_MANAGER, GROUP, PLURAL, ROLLOUT_LABEL, VERSION
from module_controller.rollouts.world import Obj, selector_string, spec_of

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


async def _json(call: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
    """Call a client method and return the answer's JSON (kube.read_json)."""
    return await read_json(await call(*args, _preload_content=False, **kwargs))


def _missing(error: ApiException) -> bool:
    return error.status == 404


class RolloutApi:
    """What the controller reads and writes, on one API client."""

    def __init__(self, api: client.ApiClient) -> None:
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    # --- reads ------------------------------------------------------------------------------

    async def read_rollout(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = await self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name
            )
        except ApiException as error:
            if _missing(error):
                return None
            raise
        return found

    async def read_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = await _json(
                self.apps.read_namespaced_deployment, name, namespace
            )
        except ApiException as error:
            if _missing(error):
                return None
            raise
        return found

    async def list_replica_sets(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        found = await _json(
            self.apps.list_namespaced_replica_set, namespace, label_selector=selector
        )
        return list(found.get("items") or [])

    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        found = await _json(self.core.list_namespaced_pod, namespace, label_selector=selector)
        return list(found.get("items") or [])

    async def world_of(
        self, namespace: str, rollout: str, deployment: Obj | None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The ReplicaSets and pods the Deployment's selector matches (the canaries carry
        the template's labels, so they are among them); without a Deployment, the
        rollout's own ReplicaSets, to clean up."""
        if deployment is None:
            return await self.list_replica_sets(namespace, f"{ROLLOUT_LABEL}={rollout}"), []
        selector = selector_string(spec_of(deployment).get("selector") or {})
        if not selector:
            return [], []  # selects everything: the API server refuses such Deployments
        replica_sets = await self.list_replica_sets(namespace, selector)
        return replica_sets, await self.list_pods(namespace, selector)

    async def list_attached_deployments(self) -> list[dict[str, Any]]:
        """Every Deployment a ModuleRollout paces (labelled with its name)."""
        found = await _json(
            self.apps.list_deployment_for_all_namespaces, label_selector=ROLLOUT_LABEL
        )
        return list(found.get("items") or [])

    # --- writes -----------------------------------------------------------------------------

    async def carry_out(
        self, namespace: str, rollout: str, deployment: str, action: Action
    ) -> None:
        match action:
            case PatchDeployment(patch=patch):
                await self.patch_deployment(namespace, deployment, patch)
            case ReplaceDeploymentTemplate(template=template, replacing=replacing):
                # The test fails the patch (422) if the template changed since it was read:
                # the next look decides on the newer one instead of overwriting it.
                operations = [
                    {"op": "test", "path": "/spec/template", "value": replacing},
                    {"op": "replace", "path": "/spec/template", "value": template},
                ]
                await _json(
                    self.apps.patch_namespaced_deployment,
                    deployment,
                    namespace,
                    operations,
                    field_manager=FIELD_MANAGER,
                    _content_type=JSON_PATCH,
                )
            case CreateReplicaSet(body=body):
                try:
                    await _json(
                        self.apps.create_namespaced_replica_set,
                        namespace,
                        body,
                        field_manager=FIELD_MANAGER,
                    )
                except ApiException as error:
                    if error.status != 409:  # made by an earlier try: the next look finds it
                        raise
            case ScaleReplicaSet(name=name, replicas=replicas):
                await self._patch_replica_set(namespace, name, {"spec": {"replicas": replicas}})
            case PatchReplicaSet(name=name, patch=patch):
                await self._patch_replica_set(namespace, name, patch)
            case DeleteReplicaSet(name=name):
                await self._ignoring_missing(
                    self.apps.delete_namespaced_replica_set,
                    name,
                    namespace,
                    propagation_policy="Background",
                )
            case DeletePod(name=name):
                await self._ignoring_missing(self.core.delete_namespaced_pod, name, namespace)
            case ResetApproval():
                await self.patch_rollout(namespace, rollout, {"spec": {"approvedStep": 0}})

    async def patch_deployment(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        await _json(
            self.apps.patch_namespaced_deployment,
            name,
            namespace,
            patch,
            field_manager=FIELD_MANAGER,
            _content_type=MERGE_PATCH,
        )

    async def patch_rollout(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        patch_object: Any = self.custom.patch_namespaced_custom_object
        await patch_object(
            GROUP, VERSION, namespace, PLURAL, name, patch, _content_type=MERGE_PATCH
        )

    async def patch_rollout_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        patch_status: Any = self.custom.patch_namespaced_custom_object_status
        await patch_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": status}, _content_type=MERGE_PATCH
        )

    async def _patch_replica_set(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        await _json(
            self.apps.patch_namespaced_replica_set,
            name,
            namespace,
            patch,
            field_manager=FIELD_MANAGER,
            _content_type=MERGE_PATCH,
        )

    async def _ignoring_missing(
        self, call: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any
    ) -> None:
        try:
            await _json(call, *args, **kwargs)
        except ApiException as error:
            if not _missing(error):
                raise
