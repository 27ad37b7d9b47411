"""`module-controller rollout approve NAME`: let a paused ModuleRollout go on.

The same as `kubectl patch modulerollout NAME --type merge -p '{"spec":{"approvedStep":N}}'`
with N the step after the one it waits at, read from its status. Exit status 0 when
approved, 1 when the rollout does not exist, is not in a step that waits, or the cluster
cannot be reached (one line on stderr saying which).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from module_controller.rollouts.model import Phase, Rollout


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "rollout",
        help="approve the paused step of a ModuleRollout",
        description="Act on ModuleRollouts (release strategies of module Deployments).",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    approve = actions.add_parser(
        "approve",
        help="let a rollout paused at a step go on to the next one",
        description=(
            "Approve the step a ModuleRollout waits at: spec.approvedStep becomes the index "
            "of the next step. A step with a grace time goes on at once."
        ),
    )
    approve.add_argument("name", help="the ModuleRollout's name")
    approve.add_argument(
        "-n", "--namespace", default="default", help="its namespace (default: default)"
    )
    approve.add_argument(
        "--kubeconfig", default=None, help="kubeconfig file (default: KUBECONFIG, ~/.kube/config)"
    )
    approve.set_defaults(handler=run_approve)


def run_approve(args: argparse.Namespace) -> int:
    try:
        print(asyncio.run(approve(args.namespace, args.name, args.kubeconfig)))
    except ApproveError as error:
        print(f"module-controller: {error}", file=sys.stderr)
        return 1
    return 0


class ApproveError(Exception):
    """Why nothing was approved: one sentence."""


def approval_for(body: dict[str, Any]) -> tuple[int, str]:
    """(the approvedStep to set, what to tell the user) for this rollout; raises
    ApproveError when it waits for no approval."""
    rollout = Rollout.from_body(body)
    where = f"ModuleRollout {rollout.key}"
    if rollout.spec is None:
        raise ApproveError(f"{where} has an invalid spec: {rollout.spec_error}")
    status = rollout.status
    if status.phase not in (Phase.PAUSED, Phase.PROGRESSING):
        phase = status.phase.value if status.phase else "not looked at yet"
        raise ApproveError(f"{where} is not paused at a step ({phase}: {status.message})")
    step = status.current_step
    if rollout.spec.approved_step > step:
        raise ApproveError(f"{where}: step {status.step} is approved already")
    told = f"approved step {status.step} of {where}"
    if status.phase == Phase.PROGRESSING:
        told += " ahead: it goes on as soon as the step's pods are Ready"
    return step + 1, told


async def approve(namespace: str, name: str, kubeconfig: str | None) -> str:
    # Loaded here: `module-controller --help` and the other commands do not need them.
    from kubernetes_asyncio.client.exceptions import ApiException

    from module_controller.kube import ClusterConfigError, check_cluster_config, new_api_client
    from module_controller.rollouts.executor import RolloutApi

    try:
        await check_cluster_config(kubeconfig)
    except ClusterConfigError as error:
        raise ApproveError(str(error)) from None
    api = await new_api_client(kubeconfig)
    try:
        rollouts = RolloutApi(api)
        body = await rollouts.read_rollout(namespace, name)
        if body is None:
            raise ApproveError(f"ModuleRollout {namespace}/{name} not found")
        step, told = approval_for(body)
        await rollouts.patch_rollout(namespace, name, {"spec": {"approvedStep": step}})
        return told
    except ApiException as error:
        raise ApproveError(f"the API server answered {error.status} {error.reason}") from None
    except (OSError, TimeoutError) as error:
        raise ApproveError(f"cannot reach the Kubernetes API server: {error}") from None
    finally:
        await api.close()
