"""`module-controller run`: the operator itself."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from module_controller.observability.logging import configure_logging
from module_controller.settings import SettingsError, describe_settings, load_settings


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
        epilog="settings (environment variables):\n" + describe_settings(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"module-controller: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    # Kopf reports every handled event at INFO; our own log lines say what happened.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    import kopf

    import module_controller.handlers  # noqa: F401  (registers the handlers)

    asyncio.run(kopf.operator(standalone=True, clusterwide=True))
    return 0
