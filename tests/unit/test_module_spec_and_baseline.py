"""Containers as modules, and the baseline a starting base gets."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from module_controller.modules.baseline import baseline_for, template_targets
from module_controller.modules.spec import pod_modules
from tests.e2e.modules_support import SAMPLE

MODULE_LABEL = "module-controller.koupleless.io/component"
BASE_LABELS = {
    "base.koupleless.io/name": "base",
    "base.koupleless.io/version": "1.1.1",
    "base.koupleless.io/cluster-name": "default",
}


def sample() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SAMPLE.read_text())
    return loaded


def test_the_seeds_sample_container_is_one_module() -> None:
    wanted = pod_modules({"spec": sample()["spec"]["template"]["spec"]})
    assert wanted.valid
    [module] = wanted.modules
    assert (module.name, module.version) == ("biz1", "0.0.1-SNAPSHOT")
    assert module.url.startswith("https://") and module.url.endswith("ark-biz.jar")
    assert module.biz().biz_url == module.url


@pytest.mark.parametrize(
    ("container", "problem"),
    [
        ({"name": "biz1", "image": "https://h/a.jar"}, "BIZ_VERSION"),
        (
            {
                "name": "biz1",
                "image": "biz1:latest",
                "env": [{"name": "BIZ_VERSION", "value": "1"}],
            },
            "not a URL",
        ),
        (
            {
                "name": "biz1",
                "image": "https:///a.jar",
                "env": [{"name": "BIZ_VERSION", "value": "1"}],
            },
            "no host",
        ),
        (
            {
                "name": "biz1",
                "image": "https://h/a.jar",
                "env": [{"name": "BIZ_VERSION", "valueFrom": {"fieldRef": {}}}],
            },
            "literal",
        ),
        (
            {
                "name": "biz1",
                "image": "https://h/a.jar",
                "env": [{"name": "BIZ_VERSION", "value": "has space"}],
            },
            "not a valid version",
        ),
        (
            {
                "name": "-x",
                "image": "https://h/a.jar",
                "env": [{"name": "BIZ_VERSION", "value": "1"}],
            },
            "not a valid module",
        ),
    ],
)
def test_bad_containers_are_explained(container: dict[str, Any], problem: str) -> None:
    wanted = pod_modules({"spec": {"containers": [container]}})
    assert not wanted.valid
    assert problem in " ".join(wanted.problems)


def test_file_urls_are_modules_too() -> None:
    container = {
        "name": "biz1",
        "image": "file:///opt/biz1.jar",
        "env": [{"name": "BIZ_VERSION", "value": "1"}],
    }
    assert pod_modules({"spec": {"containers": [container]}}).valid


def test_the_sample_targets_a_matching_base_only() -> None:
    spec = sample()["spec"]["template"]["spec"]
    assert template_targets(spec, BASE_LABELS)
    assert not template_targets(spec, {**BASE_LABELS, "base.koupleless.io/version": "2.0.0"})
    assert not template_targets(spec, {**BASE_LABELS, "base.koupleless.io/name": "other"})


def test_baseline_lists_the_modules_of_targeting_module_deployments() -> None:
    first = sample()
    first["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    second = copy.deepcopy(first)
    second["metadata"]["creationTimestamp"] = "2026-01-02T00:00:00Z"
    second["spec"]["template"]["spec"]["containers"][0]["name"] = "biz2"
    elsewhere = copy.deepcopy(first)
    elsewhere["spec"]["template"]["spec"]["containers"][0]["name"] = "biz3"
    elsewhere["spec"]["template"]["spec"]["nodeSelector"] = {"zone": "far"}
    not_modules = copy.deepcopy(first)
    not_modules["spec"]["template"]["metadata"]["labels"] = {"app": "web"}
    modules = baseline_for([second, elsewhere, not_modules, first], BASE_LABELS, MODULE_LABEL)
    assert [m.biz_name for m in modules] == ["biz1", "biz2"], "oldest first, targeting only"
    assert baseline_for([first, first], BASE_LABELS, MODULE_LABEL)[0].biz_version == (
        "0.0.1-SNAPSHOT"
    )
    assert len(baseline_for([first, copy.deepcopy(first)], BASE_LABELS, MODULE_LABEL)) == 1
