"""Release strategies for module Deployments: the `ModuleRollout` custom resource.

A ModuleRollout attaches to the user's own Deployment and paces what it does: a beta, batches,
approval, grace time, a failure budget with rollback. Users keep releasing with
`kubectl apply` / `kubectl set image` on the Deployment.

How (README, "Release strategies"): while attached, the Deployment is kept paused, so it
creates no ReplicaSet for a new template and keeps its one active ReplicaSet (the stable,
old version) at `spec.replicas`. The new version runs in a *canary* ReplicaSet of ours,
controlled by the ModuleRollout (the Deployment ignores ReplicaSets another controller
owns), scaled step by step; on each base the operator's lossless order takes the old pod
out of Ready before the new one goes Ready. Once the last step is Ready the canary is handed
over to the Deployment (it becomes the Deployment's new ReplicaSet, a new revision) and the
paused Deployment itself scales the old ReplicaSet to 0. A rollback puts the Deployment's
template back and deletes the canary: the old pods never went away.

- `model.py`: the spec and status (pydantic), names, labels;
- `steps.py`: step math (sizes, percentages);
- `world.py`: reading Deployments, ReplicaSets and pods (plain dicts);
- `decide.py` / `release.py`: what to do next, with no I/O;
- `actions.py`: the actions a decision lists;
- `executor.py`: the API calls; `controller.py`: the work queue that runs it all;
- `cli.py`: `module-controller rollout approve`.
"""
