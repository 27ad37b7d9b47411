"""`module-controller demo`: the whole product running on this machine, in one command.

It starts the testbed (a real control plane and Mosquitto on loopback), the operator as a
child process, a few simulated bases of the seed's base (`base`, `1.1.1`), applies the
seed's sample Deployment, and then redraws bases, nodes and module pods every couple of
seconds, with the kubectl lines to try next. Ctrl-C stops everything it started, in order:
the sample (on an existing cluster), the bases, the operator, the testbed.

With `--kubeconfig` and a broker it runs against a cluster and broker that already exist
instead. `--once` (or `--timeout`) exits as soon as the sample's pod is Running and Ready,
with a diagnosis when it is not in time: tests and timing runs use that.

`--replicas N` starts N operator processes (CLIENT_IDs replica-1..N) that share the bases;
the view shows how many bases each holds, from the node Leases' holders.

The package: `command` (the command line), `options`, `state` (what a running demo
remembers), `view` (the live view), `replicas` (its bases-per-replica table, from Leases),
`operators` (the operator processes), `cluster_io` (what it reads from and removes in the
cluster) and `runner` (the demo itself).
"""

from module_controller.demo.command import register, run
from module_controller.demo.options import Options, default_sample, default_state_dir
from module_controller.demo.replicas import ReplicaRow, replica_rows, replicas_summary
from module_controller.demo.state import DemoState, load_state, shell_exports
from module_controller.demo.view import (
    BaseRow,
    NodeRow,
    PodRow,
    Sample,
    Snapshot,
    kubectl_hints,
    next_version,
    node_row,
    pod_row,
    render,
    status_line,
    update_patch,
)

__all__ = [
    "BaseRow",
    "DemoState",
    "NodeRow",
    "Options",
    "PodRow",
    "ReplicaRow",
    "Sample",
    "Snapshot",
    "default_sample",
    "default_state_dir",
    "kubectl_hints",
    "load_state",
    "next_version",
    "node_row",
    "pod_row",
    "register",
    "render",
    "replica_rows",
    "replicas_summary",
    "run",
    "shell_exports",
    "status_line",
    "update_patch",
]
