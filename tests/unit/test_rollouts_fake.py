"""A small model of what a ModuleRollout acts on, and checks that the model is faithful.

`FakeCluster` holds one Deployment, its ReplicaSets and their pods as the API server sends
them (plain dicts), carries out the rollout's actions, and runs, on `tick()`:

- the Deployment controller as kube-controller-manager v1.36 does it for a *paused*
  Deployment (pkg/controller/deployment `sync` and `scale`): no ReplicaSet made for a new
  template; one active ReplicaSet is kept at spec.replicas; a saturated new ReplicaSet
  gets the old ones scaled to 0; two active ones have their sum pinned to replicas +
  maxSurge through the largest; ReplicaSets another controller owns are ignored. Unpaused,
  it rolls out at once (a new ReplicaSet at replicas, the old ones at 0);
- the ReplicaSet controller: pods made or removed to match spec.replicas (NotReady ones
  removed first);
- the module operator, in one line: a pod is Ready one tick after it was made, unless its
  jar is in `failing` (then it says InstallFailed).

The checks below pin the model to what the testbed's kube-controller-manager did when
tried by hand (README, "Release strategies": why the canary is not the Deployment's).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable
from typing import Any

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
from module_controller.rollouts.model import DESIRED_REPLICAS_ANNOTATION, HASH_LABEL
from module_controller.rollouts.steps import max_surge
from module_controller.rollouts.world import (
    controller_uid,
    format_time,
    is_ready,
    replicas_of,
    same_template,
    selector_matches,
    template_hash,
)

NAMESPACE = "shop"
JAR = "https://repo.example/biz1-{version}-ark-biz.jar"
_uids = (f"uid-{n}" for n in itertools.count(1))


def template(version: str) -> dict[str, Any]:
    return {
        "metadata": {
            "labels": {"app": "biz1", "module-controller.koupleless.io/component": "module"}
        },
        "spec": {
            "containers": [
                {
                    "name": "biz1",
                    "image": JAR.format(version=version),
                    "env": [{"name": "BIZ_VERSION", "value": version}],
                }
            ]
        },
    }


def merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """A JSON merge patch (RFC 7386): None removes, maps merge, the rest replaces."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


class FakeCluster:
    def __init__(self, replicas: int = 6, version: str = "1.0.0", max_surge: str = "30%") -> None:
        self.now = 1_000_000.0
        self.failing: set[str] = set()  # jar URLs whose install fails
        self.stuck: set[str] = set()  # jar URLs whose install never ends
        self.broken_pods: set[str] = set()  # pods whose install fails, whatever their jar
        self.deployment: dict[str, Any] | None = None
        self._replicas, self._max_surge = replicas, max_surge
        self.replica_sets: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, dict[str, Any]] = {}
        self.approved_step_resets = 0
        self._names = itertools.count(1)
        self._version = itertools.count(2)
        self.create_deployment(version)

    def create_deployment(self, version: str) -> None:
        """kubectl apply of the Deployment (a new object, unpaused, unlabelled); its own
        controller makes its first ReplicaSet and pods."""
        self.deployment = {
            "metadata": {
                "name": "biz1",
                "namespace": NAMESPACE,
                "uid": next(_uids),
                "generation": 1,
                "resourceVersion": "1",
                "labels": {},
                "annotations": {},
            },
            "spec": {
                "replicas": self._replicas,
                "selector": {"matchLabels": {"app": "biz1"}},
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": self._max_surge, "maxUnavailable": "30%"},
                },
                "template": template(version),
            },
            "status": {"observedGeneration": 0},
        }
        self.tick()
        self.tick()

    def delete_deployment(self) -> None:
        """kubectl delete of the Deployment: the garbage collector takes its ReplicaSets
        and their pods."""
        for rs in self.owned():
            for pod in self._pods_of(rs):
                del self.pods[pod["metadata"]["name"]]
            del self.replica_sets[rs["metadata"]["name"]]
        self.deployment = None

    # --- what users do -------------------------------------------------------------------------

    @property
    def d(self) -> dict[str, Any]:
        assert self.deployment is not None
        return self.deployment

    def release(self, version: str) -> None:
        """kubectl set image: a new template (the Deployment's generation goes up)."""
        self.d["spec"]["template"] = template(version)
        self._changed(self.d, generation=True)

    def scale(self, replicas: int) -> None:
        self.d["spec"]["replicas"] = replicas
        self._changed(self.d, generation=True)

    # --- reading --------------------------------------------------------------------------------

    def world(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]], list[dict[str, Any]]]:
        return (
            copy.deepcopy(self.deployment),
            copy.deepcopy(list(self.replica_sets.values())),
            copy.deepcopy(list(self.pods.values())),
        )

    def pods_of_version(self, version: str) -> list[dict[str, Any]]:
        jar = JAR.format(version=version)
        return [p for p in self.pods.values() if p["spec"]["containers"][0]["image"] == jar]

    def ready_of_version(self, version: str) -> int:
        return sum(1 for p in self.pods_of_version(version) if is_ready(p))

    def owned(self) -> list[dict[str, Any]]:
        uid = self.d["metadata"]["uid"]
        return [rs for rs in self.replica_sets.values() if controller_uid(rs) == uid]

    def replicas_by_owner(self) -> dict[str, int]:
        """Replicas of the Deployment's ReplicaSets and of the others, by version."""
        shown: dict[str, int] = {}
        for rs in self.replica_sets.values():
            owner = "deployment" if rs in self.owned() else "other"
            version = rs["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"]
            shown[f"{owner}:{version}"] = shown.get(f"{owner}:{version}", 0) + replicas_of(rs)
        return shown

    # --- carrying out actions -------------------------------------------------------------------

    def apply(self, actions: Iterable[Action]) -> None:
        for action in actions:
            self.apply_one(action)

    def apply_one(self, action: Action) -> None:
        match action:
            case PatchDeployment(patch=patch):
                merge(self.d, patch)
                self._changed(self.d, generation="spec" in patch)
            case ReplaceDeploymentTemplate(template=new):
                self.d["spec"]["template"] = copy.deepcopy(new)
                self._changed(self.d, generation=True)
            case CreateReplicaSet(body=body):
                name = body["metadata"]["name"]
                assert name not in self.replica_sets, f"{name} exists"
                made = copy.deepcopy(body)
                made["metadata"].update(uid=next(_uids), creationTimestamp=format_time(self.now))
                made["metadata"].setdefault("annotations", {})
                made["status"] = {"availableReplicas": 0}
                made["_order"] = next(self._names)
                self.replica_sets[name] = made
            case ScaleReplicaSet(name=name, replicas=replicas):
                self.replica_sets[name]["spec"]["replicas"] = replicas
            case PatchReplicaSet(name=name, patch=patch):
                merge(self.replica_sets[name], patch)
            case DeleteReplicaSet(name=name):
                gone = self.replica_sets.pop(name, None)
                if gone is not None:
                    for pod in self._pods_of(gone):
                        del self.pods[pod["metadata"]["name"]]
            case DeletePod(name=name):
                self.pods.pop(name, None)
            case ResetApproval():
                self.approved_step_resets += 1

    # --- the controllers ------------------------------------------------------------------------

    def tick(self, seconds: float = 1.0) -> None:
        self.now += seconds
        if self.deployment is not None:
            self._deployment_controller()
        self._replica_set_controller()
        self._module_operator()
        for rs in self.replica_sets.values():
            rs["status"] = {"availableReplicas": sum(1 for p in self._pods_of(rs) if is_ready(p))}

    def _deployment_controller(self) -> None:
        d = self.d
        total = replicas_of(d)
        owned = sorted(self.owned(), key=lambda rs: rs["_order"])
        new = next(
            (rs for rs in owned if same_template(rs["spec"]["template"], d["spec"]["template"])),
            None,
        )
        olds = [rs for rs in owned if rs is not new]
        if new is not None:
            top = max((_revision(rs) for rs in olds), default=0)
            if _revision(new) <= top:
                new["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = str(top + 1)
        if not d["spec"].get("paused"):
            if new is None:
                new = self._native_replica_set(total)
            self._scale(new, total)
            for rs in olds:
                self._scale(rs, 0)
        else:
            self._paused_scale(new, olds, total)
        d["status"]["observedGeneration"] = d["metadata"]["generation"]

    def _paused_scale(
        self, new: dict[str, Any] | None, olds: list[dict[str, Any]], total: int
    ) -> None:
        everyone = [*olds, new] if new is not None else list(olds)
        active = [rs for rs in everyone if replicas_of(rs) > 0]
        if not active:
            latest = new if new is not None else (olds[-1] if olds else None)
            if latest is not None:
                self._scale(latest, total)
            return
        if len(active) == 1:
            self._scale(active[0], total)
            return
        if new is not None and _saturated(new, total):
            for rs in olds:
                self._scale(rs, 0)
            return
        allowed = total + max_surge(self.d, total)
        to_add = allowed - sum(replicas_of(rs) for rs in active)
        if to_add == 0:
            return
        # The proportions are 0 when the max-replicas annotations are current: the whole
        # difference goes to the largest (on a tie the newer when adding, the older when
        # removing: ReplicaSetsBySizeNewer / ReplicaSetsBySizeOlder).
        if to_add > 0:
            largest = max(active, key=lambda rs: (replicas_of(rs), rs["_order"]))
        else:
            largest = max(active, key=lambda rs: (replicas_of(rs), -rs["_order"]))
        self._scale(largest, max(0, replicas_of(largest) + to_add))

    def _native_replica_set(self, total: int) -> dict[str, Any]:
        made_template = copy.deepcopy(self.d["spec"]["template"])
        value = f"native{next(self._names)}"
        made_template["metadata"]["labels"][HASH_LABEL] = value
        name = f"biz1-{value}"
        self.replica_sets[name] = {
            "metadata": {
                "name": name,
                "namespace": NAMESPACE,
                "uid": next(_uids),
                "creationTimestamp": format_time(self.now),
                "labels": dict(made_template["metadata"]["labels"]),
                "annotations": {},
                "ownerReferences": [
                    {"kind": "Deployment", "uid": self.d["metadata"]["uid"], "controller": True}
                ],
            },
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": "biz1", HASH_LABEL: value}},
                "template": made_template,
            },
            "status": {"availableReplicas": 0},
            "_order": next(self._names),
        }
        return self.replica_sets[name]

    def _scale(self, rs: dict[str, Any], replicas: int) -> None:
        rs["spec"]["replicas"] = replicas
        rs["metadata"]["annotations"][DESIRED_REPLICAS_ANNOTATION] = str(replicas_of(self.d))

    def _replica_set_controller(self) -> None:
        for rs in list(self.replica_sets.values()):
            pods = self._pods_of(rs)
            want = replicas_of(rs)
            for _ in range(want - len(pods)):
                name = f"{rs['metadata']['name']}-p{next(self._names)}"
                self.pods[name] = {
                    "metadata": {
                        "name": name,
                        "namespace": NAMESPACE,
                        "uid": next(_uids),
                        "creationTimestamp": format_time(self.now),
                        "labels": dict(rs["spec"]["template"]["metadata"]["labels"]),
                        "ownerReferences": [
                            {"kind": "ReplicaSet", "uid": rs["metadata"]["uid"], "controller": True}
                        ],
                    },
                    "spec": copy.deepcopy(rs["spec"]["template"]["spec"]),
                    "status": {
                        "conditions": [
                            {
                                "type": "Ready",
                                "status": "False",
                                "reason": "ModuleInstalling",
                                "lastTransitionTime": format_time(self.now),
                            }
                        ]
                    },
                    "_born": self.now,
                }
            if len(pods) > want:
                victims = sorted(pods, key=lambda p: (is_ready(p), -p["_born"]))[: len(pods) - want]
                for pod in victims:
                    del self.pods[pod["metadata"]["name"]]

    def _module_operator(self) -> None:
        for pod in self.pods.values():
            if is_ready(pod) or pod["_born"] >= self.now:
                continue
            jar = pod["spec"]["containers"][0]["image"]
            if jar in self.stuck:
                continue
            if jar in self.failing or pod["metadata"]["name"] in self.broken_pods:
                condition = {
                    "type": "Ready",
                    "status": "False",
                    "reason": "InstallFailed",
                    "message": f"biz1 could not be installed: java.io.FileNotFoundException: {jar}",
                }
            else:
                condition = {"type": "Ready", "status": "True", "reason": "ModulesActivated"}
            # As the operator writes it: lastTransitionTime moves only when the status does.
            (before,) = pod["status"]["conditions"]
            moved = before["status"] != condition["status"] or "lastTransitionTime" not in before
            condition["lastTransitionTime"] = (
                format_time(self.now) if moved else before["lastTransitionTime"]
            )
            pod["status"] = {"conditions": [condition]}

    def _pods_of(self, rs: dict[str, Any]) -> list[dict[str, Any]]:
        uid = rs["metadata"]["uid"]
        return [p for p in self.pods.values() if controller_uid(p) == uid]

    def _changed(self, obj: dict[str, Any], generation: bool) -> None:
        meta = obj["metadata"]
        meta["resourceVersion"] = str(next(self._version))
        if generation:
            meta["generation"] = int(meta.get("generation") or 0) + 1


def _revision(rs: dict[str, Any]) -> int:
    return int(rs["metadata"]["annotations"].get("deployment.kubernetes.io/revision", "0"))


def _saturated(rs: dict[str, Any], total: int) -> bool:
    desired = rs["metadata"]["annotations"].get(DESIRED_REPLICAS_ANNOTATION)
    return (
        replicas_of(rs) == total
        and desired == str(total)
        and rs["status"]["availableReplicas"] == total
    )


def canary_like(
    cluster: FakeCluster, version: str, replicas: int, owner_uid: str
) -> CreateReplicaSet:
    """A ReplicaSet of `version`, controlled by `owner_uid`, as the tests below make by hand."""
    made = template(version)
    value = template_hash(made)
    made["metadata"]["labels"][HASH_LABEL] = value
    return CreateReplicaSet(
        {
            "metadata": {
                "name": f"biz1-{value}",
                "namespace": NAMESPACE,
                "labels": dict(made["metadata"]["labels"]),
                "ownerReferences": [{"kind": "X", "uid": owner_uid, "controller": True}],
            },
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "biz1", HASH_LABEL: value}},
                "template": made,
            },
        }
    )


# --- the model against what the testbed's controller did -------------------------------------


def test_a_paused_deployment_makes_no_replica_set_for_a_new_template() -> None:
    cluster = FakeCluster()
    cluster.apply([PatchDeployment({"spec": {"paused": True}}, "test")])
    cluster.release("2.0.0")
    cluster.tick()
    cluster.tick()
    assert cluster.replicas_by_owner() == {"deployment:1.0.0": 6}


def test_a_second_active_replica_set_of_the_deployment_is_fought() -> None:
    """What the testbed did (maxSurge 30% of 6 = 2): a second owned ReplicaSet of 1 made the
    old one 7; the old one scaled to 5 went back to 7; the new one scaled to 4 took the old
    one down to 4 at once, before any new pod was Ready."""
    cluster = FakeCluster()
    cluster.apply([PatchDeployment({"spec": {"paused": True}}, "test")])
    cluster.release("2.0.0")
    cluster.tick()
    cluster.apply([canary_like(cluster, "2.0.0", 1, cluster.d["metadata"]["uid"])])
    cluster.tick()
    assert cluster.replicas_by_owner() == {"deployment:1.0.0": 7, "deployment:2.0.0": 1}
    old = next(rs for rs in cluster.owned() if "1.0.0" in str(rs["spec"]["template"]))
    new = next(rs for rs in cluster.owned() if rs is not old)
    cluster.apply([ScaleReplicaSet(old["metadata"]["name"], 5, "test")])
    cluster.tick()
    assert cluster.replicas_by_owner() == {"deployment:1.0.0": 7, "deployment:2.0.0": 1}
    cluster.apply([ScaleReplicaSet(new["metadata"]["name"], 4, "test")])
    cluster.tick(0)
    assert cluster.replicas_by_owner() == {"deployment:1.0.0": 4, "deployment:2.0.0": 4}


def test_a_replica_set_another_controller_owns_is_left_alone_until_handed_over() -> None:
    """The canary: ignored while another controller owns it; once the Deployment owns it,
    saturated, the Deployment scales the old one to 0 by itself."""
    cluster = FakeCluster()
    cluster.apply([PatchDeployment({"spec": {"paused": True}}, "test")])
    cluster.release("2.0.0")
    cluster.apply([canary_like(cluster, "2.0.0", 6, "someone-else")])
    cluster.tick()
    cluster.tick()
    assert cluster.replicas_by_owner() == {"deployment:1.0.0": 6, "other:2.0.0": 6}
    assert cluster.ready_of_version("2.0.0") == 6
    canary = next(rs for rs in cluster.replica_sets.values() if rs not in cluster.owned())
    owner = {"kind": "Deployment", "uid": cluster.d["metadata"]["uid"], "controller": True}
    cluster.apply(
        [
            PatchReplicaSet(
                canary["metadata"]["name"],
                {
                    "metadata": {
                        "ownerReferences": [owner],
                        "annotations": {DESIRED_REPLICAS_ANNOTATION: "6"},
                    }
                },
                "test",
            )
        ]
    )
    cluster.tick()
    assert cluster.replicas_by_owner() == {"deployment:1.0.0": 0, "deployment:2.0.0": 6}


def test_a_failing_jar_never_goes_ready() -> None:
    cluster = FakeCluster()
    cluster.failing.add(JAR.format(version="2.0.0"))
    cluster.release("2.0.0")
    cluster.tick()
    cluster.tick()
    assert cluster.ready_of_version("2.0.0") == 0
    assert all(
        p["status"]["conditions"][0]["reason"] == "InstallFailed"
        for p in cluster.pods_of_version("2.0.0")
    )


def test_selectors_match_the_canary_pods_too() -> None:
    cluster = FakeCluster()
    selector = cluster.d["spec"]["selector"]
    assert all(selector_matches(selector, p["metadata"]["labels"]) for p in cluster.pods.values())
