"""`module-controller run`: the operator itself.

Exit status: 0 after a shut-down asked for (SIGTERM, SIGINT), 1 when the operator could not
start or stopped on a fatal failure, 2 for bad settings. Whatever makes it exit early is one
line on stderr, never a traceback: bad settings and a missing or broken kubeconfig are found
before anything starts.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any

from module_controller.go_compat import describe_go_settings, ignored_go_settings_notes
from module_controller.kube import ClusterConfigError, check_cluster_config
from module_controller.observability.logging import configure_logging
from module_controller.operator_memo import OperatorMemo
from module_controller.settings import SettingsError, load_settings
from module_controller.settings_help import describe_settings

log = logging.getLogger(__name__)


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "run",
        help="run the operator against the cluster of KUBECONFIG (or in-cluster config)",
        description=(
            "Run the Module Controller: bases heard on the MQTT broker become virtual Nodes, "
            "module pods scheduled onto them become modules installed on the bases. The "
            "cluster comes from in-cluster config, else KUBECONFIG or ~/.kube/config. "
            "Everything else is set with environment variables:"
        ),
        epilog="settings (environment variables):\n"
        + describe_settings()
        + "\n\n"
        + describe_go_settings(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=run)


def _say(message: str) -> None:
    print(f"module-controller: {message}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
    except SettingsError as error:
        _say(str(error))
        return 2
    try:
        cluster = asyncio.run(check_cluster_config())
    except ClusterConfigError as error:
        _say(str(error))
        return 1
    configure_logging(settings.log_level, settings.log_format)
    # A Go manifest's variables for parts we do not have: say so once, rather than let them
    # look like they took effect.
    for note in ignored_go_settings_notes(os.environ):
        log.info(note)
    # Kopf reports every handled event at INFO; our own log lines say what happened.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    import kopf

    import module_controller.handlers  # noqa: F401  (registers the handlers)

    log.info("Using the cluster of %s.", cluster)
    # A fatal failure sets the stop flag: Kopf stops as on SIGTERM (which it still handles).
    memo = OperatorMemo(stop_flag=asyncio.Event())
    try:
        asyncio.run(
            kopf.operator(standalone=True, clusterwide=True, memo=memo, stop_flag=memo.stop_flag)
        )
    except Exception:
        if memo.startup_failure is None:
            # Not a start-up failure we described: a bug, whose traceback is the report.
            log.critical("The operator failed.", exc_info=True)
            return 1
        _say(memo.startup_failure)
        return 1
    if memo.health is not None and memo.health.fatal is not None:
        _say(f"stopped after a fatal failure: {memo.health.fatal}")
        return 1
    return 0
