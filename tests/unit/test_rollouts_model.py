"""The ModuleRollout's spec rules, step math, how objects are read, and `rollout approve`."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from module_controller.rollouts.cli import ApproveError, approval_for, register
from module_controller.rollouts.model import (
    BaseWait,
    Failure,
    Phase,
    Rollout,
    RolloutSpec,
    RolloutStatus,
)
from module_controller.rollouts.steps import max_surge, plan_steps, resolve, step_label, step_of
from module_controller.rollouts.world import (
    failure_of,
    same_template,
    selector_matches,
    selector_string,
    template_hash,
    without_hash,
)
from tests.unit.test_rollouts_fake import template

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "manifests" / "06-modulerollout-crd.yaml"


def spec(**fields: Any) -> dict[str, Any]:
    return {"workloadRef": {"name": "biz1"}, "steps": [{"replicas": 1}], **fields}


def body(spec_fields: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "biz1", "namespace": "shop", "uid": "u", "generation": 2},
        "spec": spec_fields,
        "status": status or {},
    }


def test_the_issues_spec_reads_with_its_defaults() -> None:
    parsed = RolloutSpec.model_validate(
        spec(
            steps=[
                {"replicas": 1, "pause": {}},
                {"replicas": "50%", "pause": {"duration": 30}},
                {"replicas": "100%"},
            ],
            failureBudget=1,
        )
    )
    assert parsed.failure_budget == 1 and parsed.rollback_on_failure is True
    assert parsed.approved_step == 0 and parsed.ready_timeout_seconds == 300
    assert parsed.steps[1].pause is not None and parsed.steps[1].pause.duration == 30
    assert parsed.steps[0].pause is not None and parsed.steps[0].pause.duration is None


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"steps": [{"replicas": "150%"}]}, "spec.steps[0].replicas: '150%' is neither"),
        ({"steps": [{"replicas": -1}]}, "spec.steps[0].replicas: a number of pods is 0 or more"),
        ({"steps": []}, "spec.steps: List should have at least 1 item"),
        ({"failureBudget": -1}, "spec.failureBudget: Input should be greater than or equal to 0"),
        ({"workloadRef": {"name": "x", "kind": "StatefulSet"}}, "only Deployments can be paced"),
    ],
)
def test_bad_specs_say_which_field(fields: dict[str, Any], says: str) -> None:
    rollout = Rollout.from_body(body(spec(**fields)))
    assert rollout.spec is None
    assert rollout.spec_error is not None and says in rollout.spec_error, rollout.spec_error


def test_an_unreadable_status_is_rebuilt_rather_than_refused() -> None:
    rollout = Rollout.from_body(body(spec(), {"phase": "Dancing", "currentStep": "x"}))
    assert rollout.spec is not None and rollout.status.phase is None


def test_the_crd_schema_has_the_same_rules_and_the_columns_of_the_issue() -> None:
    crd = yaml.safe_load(CRD.read_text())
    version = crd["spec"]["versions"][0]
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Deployment", "Step", "New", "Phase", "Message", "Age"]
    props = version["schema"]["openAPIV3Schema"]["properties"]
    replicas = props["spec"]["properties"]["steps"]["items"]["properties"]["replicas"]
    rule = replicas["x-kubernetes-validations"][0]
    assert "0% to 100%" in rule["message"]
    # The rule lists the shares (a regular expression is refused before Kubernetes 1.36):
    # the list is exactly what the operator accepts, no more, no less.
    listed = set(re.findall(r"'([^']*)'", rule["rule"]))
    assert listed == {f"{share}%" for share in range(101)}
    for written in [*listed, "007%", "101%", "5", "%"]:
        accepted = Rollout.from_body(body(spec(steps=[{"replicas": written}]))).spec is not None
        assert accepted == (written in listed), written
    phases = props["status"]["properties"]["phase"]["enum"]
    assert phases == [phase.value for phase in Phase]
    assert version["subresources"] == {"status": {}}


def test_the_crd_refuses_a_changed_workload_ref() -> None:
    """Checked here for its form only: whether kube-apiserver accepts the rule (its cost)
    and refuses the change takes a testbed (tests/e2e)."""
    crd = yaml.safe_load(CRD.read_text())
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert "workloadRef" in spec_schema["required"], "a transition rule needs oldSelf"
    (rule,) = spec_schema["properties"]["workloadRef"]["x-kubernetes-validations"]
    assert rule["rule"] == "self == oldSelf"
    assert rule["message"].startswith("workloadRef cannot be changed")


def test_the_crd_keeps_every_status_field_the_operator_writes() -> None:
    """The API server drops fields its schema does not name (pruning)."""
    crd = yaml.safe_load(CRD.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    written = RolloutStatus(
        failures=[Failure(pod="p", reason="r", message="m")],
        baseWaits=[BaseWait(pod="p", backAt="2026-12-01T00:00:00Z")],
    ).as_patch()

    def unnamed(value: Any, schema: dict[str, Any], path: str) -> list[str]:
        if isinstance(value, dict):
            named = schema.get("properties") or {}
            return [
                miss
                for key, item in value.items()
                for miss in (
                    unnamed(item, named[key], f"{path}.{key}")
                    if key in named
                    else [f"{path}.{key}"]
                )
            ]
        if isinstance(value, list):
            return [m for item in value for m in unnamed(item, schema["items"], f"{path}[]")]
        return []

    assert unnamed(written, schema, "status") == []


def test_the_chart_ships_the_same_crd() -> None:
    shipped = REPO / "operator" / "chart" / "module-controller" / "crds" / "modulerollout-crd.yaml"
    assert shipped.read_text() == CRD.read_text()


@pytest.mark.parametrize(
    ("replicas", "total", "size"),
    [
        (1, 6, 1),
        ("50%", 6, 3),
        ("50%", 5, 3),
        ("1%", 6, 1),
        ("0%", 6, 0),
        (9, 6, 6),
        ("100%", 0, 0),
    ],
)
def test_step_sizes_round_shares_up_and_stay_within_the_replicas(
    replicas: int | str, total: int, size: int
) -> None:
    assert resolve(replicas, total) == size


def test_steps_never_shrink_and_always_end_with_every_pod() -> None:
    parsed = RolloutSpec.model_validate(
        spec(steps=[{"replicas": 3}, {"replicas": 1, "pause": {}}, {"replicas": "50%"}])
    )
    planned = plan_steps(parsed.steps, 10)
    assert [s.size for s in planned] == [3, 3, 5, 10]
    assert planned[-1].written == "100%" and planned[-1].pause is None
    assert step_of(4, planned) == 2 and step_of(0, planned) == 0 and step_of(99, planned) == 3
    assert step_label(1, planned) == "2/4" and step_label(9, planned) == "4/4"


def test_max_surge_as_the_deployment_controller_resolves_it() -> None:
    def deployment(strategy: dict[str, Any]) -> dict[str, Any]:
        return {"spec": {"strategy": strategy}}

    assert max_surge(deployment({}), 6) == 2  # 25% rounded up
    rolling = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "30%"}}
    assert max_surge(deployment(rolling), 6) == 2
    assert max_surge(deployment({"rollingUpdate": {"maxSurge": 1}}), 6) == 1
    assert max_surge(deployment({"type": "Recreate"}), 6) == 0


def test_templates_compare_and_hash_without_the_pod_template_hash_label() -> None:
    a = template("1.0.0")
    b = template("1.0.0")
    b["metadata"]["labels"]["pod-template-hash"] = "abc"
    assert same_template(a, b) and template_hash(a) == template_hash(b)
    assert not same_template(a, template("2.0.0"))
    assert template_hash(a) != template_hash(template("2.0.0"))
    assert len(template_hash(a)) == 10 and set(template_hash(a)) <= set(
        "bcdfghjkmnpqrstvwxz2456789"
    )
    assert "pod-template-hash" not in without_hash(b)["metadata"]["labels"]
    assert "pod-template-hash" in b["metadata"]["labels"], "the original is left as it was"


def test_selectors_as_query_strings_and_as_matches() -> None:
    selector = {
        "matchLabels": {"app": "biz1"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["a", "b"]},
            {"key": "canary", "operator": "DoesNotExist"},
        ],
    }
    assert selector_string(selector) == "app=biz1,tier in (a,b),!canary"
    assert selector_matches(selector, {"app": "biz1", "tier": "a"})
    assert not selector_matches(selector, {"app": "biz1", "tier": "a", "canary": "1"})
    assert not selector_matches(selector, {"app": "biz1", "tier": "c"})


def test_what_counts_as_a_failed_pod() -> None:
    def pod(reason: str, ready: str = "False") -> dict[str, Any]:
        condition = {"type": "Ready", "status": ready, "reason": reason, "message": "m"}
        return {"status": {"conditions": [condition]}}

    assert failure_of(pod("InstallFailed")) == ("InstallFailed", "m")
    assert failure_of(pod("ModuleBroken")) == ("ModuleBroken", "m")
    assert failure_of(pod("ModuleVersionMismatch")) is not None
    assert failure_of(pod("ModuleInstalling")) is None, "not yet, not failed"
    assert failure_of(pod("SupersededByNewerVersion")) is None
    assert failure_of(pod("BaseNotReady")) is None, "the base's fault, not the module's"


def test_approve_names_the_step_after_the_paused_one() -> None:
    paused = body(spec(), {"phase": "Paused", "currentStep": 1, "step": "2/3", "message": "m"})
    assert approval_for(paused) == (2, "approved step 2/3 of ModuleRollout shop/biz1")
    running = body(spec(), {"phase": "Progressing", "currentStep": 0, "step": "1/3"})
    step, told = approval_for(running)
    assert step == 1 and "ahead" in told


@pytest.mark.parametrize(
    ("fields", "status", "says"),
    [
        (spec(), {"phase": "Succeeded", "message": "6/6 pods"}, "is not paused at a step"),
        (spec(), {}, "not looked at yet"),
        (spec(approvedStep=2), {"phase": "Paused", "currentStep": 1, "step": "2/3"}, "already"),
        ({"steps": []}, {"phase": "Failed"}, "invalid spec"),
    ],
)
def test_approve_refuses_what_waits_for_no_approval(
    fields: dict[str, Any], status: dict[str, Any], says: str
) -> None:
    with pytest.raises(ApproveError, match=says):
        approval_for(body(fields, status))


def test_the_rollout_command_parses_approve() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["rollout", "approve", "biz1", "-n", "shop"])
    assert (args.name, args.namespace, args.kubeconfig) == ("biz1", "shop", None)
