"""The Go Module Controller V2's environment variables: how we read them.

Every variable the Go controller reads is accepted here: most keep their Go meaning (they
are fields of `Settings`, listed in `GO_NAMES_WITH_MEANING`); the few that configure parts
our design does not have are accepted and ignored, each with its reason
(`IGNORED_GO_SETTINGS`), shown in `module-controller run --help` and logged at start when
set. Booleans are read as Go reads them (`GoBool`), so a Go manifest means the same here.

Nothing here imports the settings: `settings.py` imports this module, not the other way.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

from pydantic import BeforeValidator

# Go's strconv.ParseBool words. The Go controller itself compares with "true" only, so
# anything else (TRUE, 1, yes, a typo) silently means false there; here the ParseBool
# forms work, and any other word stops start-up naming the variable instead of meaning false.
GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def parse_go_bool(value: object) -> object:
    """`value` as a bool when it is a string; anything else is left to pydantic (a bool
    passed in code stays as it is)."""
    if not isinstance(value, str):
        return value
    # A Secret made from a file often ends in a newline; the word is what counts.
    word = value.strip()
    if word in GO_TRUE:
        return True
    # Empty is false, as in the Go controller (`ENABLE_HTTP_TUNNEL=` reads as "" != "true").
    if word in GO_FALSE or word == "":
        return False
    raise ValueError(
        f"{value!r} is not a boolean: use true or false "
        "(also 1, t, T, TRUE, True, 0, f, F, FALSE, False; empty is false)"
    )


GoBool = Annotated[bool, BeforeValidator(parse_go_bool)]

# The Go controller's variables that are settings here, with its meaning (see `run --help`
# for ours in full). tests/unit/test_go_compat.py checks each is a field of `Settings`.
GO_NAMES_WITH_MEANING = (
    "CLIENT_ID",
    "ENV",
    "ENABLE_MQTT_TUNNEL",
    "ENABLE_HTTP_TUNNEL",
    "HTTP_TUNNEL_LISTEN_PORT",
    "MQTT_BROKER",
    "MQTT_PORT",
    "MQTT_USERNAME",
    "MQTT_PASSWORD",
    "MQTT_CLIENT_PREFIX",
    "MQTT_CA_PATH",
    "MQTT_CLIENT_CRT_PATH",
    "MQTT_CLIENT_KEY_PATH",
    "ENABLE_MODULE_REPLICAS_SYNC_WITH_BASE",
    "KUBELET_PROXY_ENABLED",
    "KUBELET_PROXY_PORT",
    "NAMESPACE",
)

# Where Kubernetes writes the namespace of a pod's ServiceAccount (the pod's own namespace).
SERVICE_ACCOUNT_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def own_namespace() -> str:
    """NAMESPACE's default: the operator pod's own namespace when it runs in a pod, else
    `default` (the Go controller's default). In a pod, the kubelet proxy's Service is then
    found next to the operator without setting NAMESPACE."""
    try:
        return SERVICE_ACCOUNT_NAMESPACE_FILE.read_text().strip() or "default"
    except OSError:
        return "default"


# The Go controller's variables for parts our design has no use for: name -> why.
IGNORED_GO_SETTINGS: dict[str, str] = {
    "IS_CLUSTER": (
        "the Go controller hands it to a workload-level delay between its replicas that it "
        "never calls; here one replica (Recreate) owns every base of its ENV and renews its "
        "nodes' Leases, taking over those of a previous run at once"
    ),
    "WORKLOAD_MAX_LEVEL": "it only tunes that same unused delay (see IS_CLUSTER)",
    "VNODE_WORKER_NUM": (
        "the Go controller runs this many workers per base for each of its pod queues; here "
        "one dispatcher and one work queue per base apply every change in order, so there "
        "is no worker count to set and no status write on a base overtakes another"
    ),
    "REPORT_HOOKS": (
        "DingTalk webhooks of the Go controller's report server (:8080), which is not here: "
        "failures are Kubernetes Events on the pod or node, log lines and metrics"
    ),
    "TRACKER_CONFIG_PATH": (
        "configures the Go controller's tracker (events.log and webhook reports), which is "
        "not here: see REPORT_HOOKS"
    ),
    "ENABLE_MODULE_DEPLOYMENT_CONTROLLER": (
        "documented for the Go controller but never read by it (its deployment controller "
        "always runs); here bases' baseline queries are always answered and peer replica "
        "sync is ENABLE_MODULE_REPLICAS_SYNC_WITH_BASE"
    ),
}

# Ignored names whose value must not reach the log: webhook addresses carry access tokens.
SECRET_IGNORED = frozenset({"REPORT_HOOKS"})


def ignored_go_settings_notes(environ: Mapping[str, str]) -> list[str]:
    """One log line per ignored Go variable set in `environ`, saying it is ignored and why.

    Names are matched regardless of case, as `Settings` reads its own variables.
    """
    notes = []
    by_upper = {name.upper(): (name, value) for name, value in environ.items()}
    for name, reason in IGNORED_GO_SETTINGS.items():
        if name not in by_upper:
            continue
        given, value = by_upper[name]
        shown = f"{given} (value not shown)" if name in SECRET_IGNORED else f"{given}={value}"
        notes.append(f"{shown} is accepted and ignored: {reason}.")
    return notes


def describe_go_settings(width: int = 96) -> str:
    """The `run --help` section on the Go controller's variables."""

    def wrapped(text: str, indent: str, more: str) -> list[str]:
        return textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=more)

    lines = ["the Go Module Controller V2's variables:"]
    lines += wrapped(
        "accepted with the Go meaning (listed above): " + ", ".join(GO_NAMES_WITH_MEANING) + ".",
        "  ",
        "    ",
    )
    lines.append("  accepted and ignored (the log says so at start when one is set):")
    for name, reason in IGNORED_GO_SETTINGS.items():
        lines += wrapped(f"{name}: {reason}.", "    ", "      ")
    lines += wrapped(
        "Booleans read as in Go: true or false, also 1, t, T, TRUE, True, 0, f, F, FALSE, "
        "False (Go's strconv.ParseBool); empty is false. Any other word stops start-up "
        "(the Go controller would read it as false).",
        "  ",
        "  ",
    )
    return "\n".join(lines)
