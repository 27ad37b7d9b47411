"""The baseline of a base that starts while a ModuleRollout paces its Deployment.

The Deployment's template is the new version as soon as the user releases it; during a
paced release the new version may reach a base only through the rollout's steps. The
cluster is the rollout tests' model (a paused Deployment, its ReplicaSets, the canary),
driven by the real rollout decisions.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller.modules.baseline import baseline_for, baseline_lister
from module_controller.rollouts.model import ROLLOUT_LABEL, Phase
from tests.unit.test_rollouts_fake import NAMESPACE, FakeCluster
from tests.unit.test_rollouts_release import Driver, attached

MODULE_LABEL = "module-controller.koupleless.io/component"
BASE_LABELS = {"base.koupleless.io/name": "base"}


class Lister:
    """The API as the baseline lists it: the cluster's Deployments (and `others`), and
    the ReplicaSets of a namespace; remembers which namespaces were asked."""

    def __init__(self, cluster: FakeCluster, others: list[dict[str, Any]] | None = None) -> None:
        self.cluster = cluster
        self.others = others or []
        self.asked: list[str] = []
        self.refuse: ApiException | None = None

    async def deployments(self) -> list[dict[str, Any]]:
        deployment, _, _ = self.cluster.world()
        return [*([deployment] if deployment else []), *copy.deepcopy(self.others)]

    async def replica_sets(self, namespace: str) -> list[dict[str, Any]]:
        self.asked.append(namespace)
        if self.refuse is not None:
            raise self.refuse
        _, replica_sets, _ = self.cluster.world()
        return [rs for rs in replica_sets if rs["metadata"]["namespace"] == namespace]

    async def baseline(self) -> dict[str | None, str | None]:
        listed = await baseline_lister(self.deployments, self.replica_sets)()
        return {m.biz_name: m.biz_version for m in baseline_for(listed, BASE_LABELS, MODULE_LABEL)}


def released(**spec: Any) -> tuple[FakeCluster, Driver, Lister]:
    """A ModuleRollout attached to a Deployment of 1.0.0, and 2.0.0 released."""
    cluster = FakeCluster()
    driver = attached(cluster, **spec)
    cluster.release("2.0.0")
    return cluster, driver, Lister(cluster)


async def test_a_base_starting_during_the_paused_beta_gets_the_stable_version() -> None:
    cluster, driver, lister = released()
    driver.run(driver.phase_is(Phase.PAUSED, 0))
    assert cluster.ready_of_version("2.0.0") == 1
    # What the baseline said before: the Deployment's own template, the new version.
    raw = baseline_for([cluster.d], BASE_LABELS, MODULE_LABEL)
    assert [(m.biz_name, m.biz_version) for m in raw] == [("biz1", "2.0.0")]

    assert await lister.baseline() == {"biz1": "1.0.0"}
    assert lister.asked == [NAMESPACE]


async def test_every_step_before_the_hand_over_keeps_the_stable_version() -> None:
    cluster, driver, lister = released()
    driver.run(driver.phase_is(Phase.PAUSED, 0))
    driver.approve()
    driver.run(driver.phase_is(Phase.PAUSED, 1))
    assert cluster.ready_of_version("2.0.0") == 3, "50% of 6, in its grace time"
    assert await lister.baseline() == {"biz1": "1.0.0"}


async def test_once_handed_over_the_new_version_is_the_baseline() -> None:
    cluster, driver, lister = released()
    driver.run(driver.phase_is(Phase.PAUSED, 0))
    driver.approve()
    driver.run(driver.phase_is(Phase.SUCCEEDED), seconds=5)
    assert cluster.d["metadata"]["labels"][ROLLOUT_LABEL] == "biz1", "still paced"
    assert await lister.baseline() == {"biz1": "2.0.0"}


async def test_a_release_that_has_not_started_yet_keeps_the_stable_version() -> None:
    # The template changed and the rollout has not looked yet: no canary at all.
    _, _, lister = released()
    assert await lister.baseline() == {"biz1": "1.0.0"}


async def test_the_template_put_back_is_the_baseline() -> None:
    cluster, driver, lister = released()
    driver.run(driver.phase_is(Phase.PAUSED, 0))
    cluster.release("1.0.0")
    driver.run(driver.phase_is(Phase.ROLLED_BACK))
    assert await lister.baseline() == {"biz1": "1.0.0"}


async def test_a_deployment_no_rollout_paces_counts_with_its_own_template() -> None:
    # The Deployment controller rolls it out at once: no pacing to keep to, and no
    # ReplicaSet list for it.
    cluster = FakeCluster()
    cluster.release("2.0.0")
    other = copy.deepcopy(cluster.d)
    other["metadata"].update(name="biz2", namespace="elsewhere", uid="uid-other")
    other["spec"]["template"]["spec"]["containers"][0]["name"] = "biz2"
    lister = Lister(cluster, others=[other])
    assert await lister.baseline() == {"biz1": "2.0.0", "biz2": "2.0.0"}
    assert lister.asked == []


async def test_replica_sets_that_cannot_be_listed_leave_the_deployments_template(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, driver, lister = released()
    driver.run(driver.phase_is(Phase.PAUSED, 0))
    lister.refuse = ApiException(status=403, reason="Forbidden")
    with caplog.at_level(logging.WARNING):
        assert await lister.baseline() == {"biz1": "2.0.0"}
    assert f"the ReplicaSets of namespace {NAMESPACE} could not be listed (403" in caplog.text
