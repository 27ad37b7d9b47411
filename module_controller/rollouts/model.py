"""The ModuleRollout resource: names, labels, spec and status (pydantic).

The CRD's OpenAPI schema (manifests/06-modulerollout-crd.yaml) already refuses bad specs at
`kubectl apply`; the same rules are checked here, so a spec that got past an older CRD, or
a unit test, ends in phase Failed with the reason instead of an exception.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

GROUP = "module-controller.koupleless.io"
VERSION = "v1alpha1"
PLURAL = "modulerollouts"
KIND = "ModuleRollout"
API_VERSION = f"{GROUP}/{VERSION}"

# On the Deployment a rollout paces (its name), and on the ReplicaSets it makes.
ROLLOUT_LABEL = "module-controller.koupleless.io/rollout"
# On a Deployment the user had paused before a rollout attached: it stays paused after.
PAUSED_BEFORE_ANNOTATION = "module-controller.koupleless.io/paused-before-rollout"
# The Deployment controller's label tying a ReplicaSet's pods to its template.
HASH_LABEL = "pod-template-hash"
# Who writes what we write on Deployments and ReplicaSets (managedFields).
FIELD_MANAGER = "module-controller-rollout"
# The Deployment controller's annotations on its ReplicaSets; a handed-over canary gets
# them so that the paused Deployment sees it "saturated" and scales the old one to 0.
DESIRED_REPLICAS_ANNOTATION = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS_ANNOTATION = "deployment.kubernetes.io/max-replicas"

DEFAULT_READY_TIMEOUT_SECONDS = 300

_PERCENT = re.compile(r"^(100|[1-9]?[0-9])%$")


class Phase(StrEnum):
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    SUCCEEDED = "Succeeded"
    ROLLED_BACK = "RolledBack"
    FAILED = "Failed"


class _Model(BaseModel):
    # The API server adds nothing unknown to our objects, but an older or newer CRD may:
    # extra fields are ignored rather than refused.
    model_config = ConfigDict(populate_by_name=True, extra="ignore")


class Pause(_Model):
    # None: wait for approval; a number: the grace time in seconds, then go on by itself.
    duration: int | None = Field(default=None, ge=0)


class Step(_Model):
    # Cumulative new-version pods: a count, or a share of the Deployment's replicas.
    replicas: int | str
    pause: Pause | None = None

    @field_validator("replicas")
    @classmethod
    def _count_or_share(cls, value: int | str) -> int | str:
        if isinstance(value, int):
            if value < 0:
                raise ValueError("a number of pods is 0 or more")
            return value
        if not _PERCENT.match(value):
            raise ValueError(f"{value!r} is neither a number of pods nor a share from 0% to 100%")
        return value


class WorkloadRef(_Model):
    api_version: str = Field(default="apps/v1", alias="apiVersion")
    kind: str = "Deployment"
    name: str = Field(min_length=1)

    @field_validator("kind")
    @classmethod
    def _deployment(cls, value: str) -> str:
        if value != "Deployment":
            raise ValueError(f"only Deployments can be paced, not {value}")
        return value


class RolloutSpec(_Model):
    workload_ref: WorkloadRef = Field(alias="workloadRef")
    steps: list[Step] = Field(min_length=1, max_length=20)
    failure_budget: int = Field(default=0, alias="failureBudget", ge=0)
    rollback_on_failure: bool = Field(default=True, alias="rollbackOnFailure")
    approved_step: int = Field(default=0, alias="approvedStep", ge=0)
    ready_timeout_seconds: int = Field(
        default=DEFAULT_READY_TIMEOUT_SECONDS, alias="readyTimeoutSeconds", ge=1
    )


class Failure(_Model):
    """A new-version pod that counted against the step's failure budget."""

    pod: str
    reason: str
    message: str = ""


class BaseWait(_Model):
    """A new pod of the step seen waiting for its base, and when it was first seen back
    (not Ready for another reason). Its Ready timeout counts from then: the pod's own
    conditions cannot tell, its Ready condition has been False since the base went."""

    pod: str
    back_at: str | None = Field(default=None, alias="backAt")


class RolloutStatus(_Model):
    phase: Phase | None = None
    message: str = ""
    observed_generation: int | None = Field(default=None, alias="observedGeneration")
    # The pod-template-hash of the release being paced (of the Deployment's template).
    release: str | None = None
    # The pod-template-hash of the stable ReplicaSet (the version being replaced).
    stable: str | None = None
    # 0-based index of the step being worked on; the number of steps once done.
    current_step: int = Field(default=0, alias="currentStep")
    # For kubectl's columns: "2/3" and "3/6" (new pods Ready / the Deployment's replicas).
    step: str = ""
    pods: str = ""
    replicas: int = 0
    new_ready: int = Field(default=0, alias="newReady")
    # When the current step's pods were all Ready (RFC 3339): the grace time counts from it.
    step_ready_at: str | None = Field(default=None, alias="stepReadyAt")
    # New-version pods that failed in the current step, oldest first.
    failures: list[Failure] = Field(default_factory=list)
    # New pods of the current step whose base went away (see BaseWait).
    base_waits: list[BaseWait] = Field(default_factory=list, alias="baseWaits")

    def as_patch(self) -> dict[str, Any]:
        """The whole status for a merge patch: a field now None is removed (null)."""
        return self.model_dump(by_alias=True, mode="json")


def describe_validation_error(error: ValidationError) -> str:
    """One line naming each bad field as kubectl would (spec.steps[0].replicas)."""
    parts = []
    for problem in error.errors():
        path = "spec"
        for item in problem["loc"]:
            if isinstance(item, int):
                path += f"[{item}]"
            elif item in ("int", "str") or "[" in str(item):
                continue  # pydantic's union branch names, not fields
            else:
                path += f".{item}"
        message = str(problem["msg"]).removeprefix("Value error, ")
        parts.append(f"{path}: {message}")
    return "; ".join(dict.fromkeys(parts))


@dataclass(frozen=True)
class Rollout:
    """A ModuleRollout as the decision needs it; `spec` is None when it is invalid."""

    namespace: str
    name: str
    uid: str
    generation: int
    spec: RolloutSpec | None
    spec_error: str | None
    status: RolloutStatus

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Rollout:
        metadata = body.get("metadata") or {}
        spec: RolloutSpec | None = None
        error: str | None = None
        try:
            spec = RolloutSpec.model_validate(body.get("spec") or {})
        except ValidationError as problem:
            error = describe_validation_error(problem)
        try:
            status = RolloutStatus.model_validate(body.get("status") or {})
        except ValidationError:
            status = RolloutStatus()  # unreadable: rebuilt from the cluster
        return cls(
            namespace=str(metadata.get("namespace") or ""),
            name=str(metadata.get("name") or ""),
            uid=str(metadata.get("uid") or ""),
            generation=int(metadata.get("generation") or 0),
            spec=spec,
            spec_error=error,
            status=status,
        )

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"
