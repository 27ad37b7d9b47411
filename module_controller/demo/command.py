"""`module-controller demo`: its command line, the state-directory lock, and --exports."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from module_controller.demo.options import (
    BASE_NAME,
    BASE_VERSION,
    DEFAULT_BASES,
    DEFAULT_ENV,
    DEFAULT_ONCE_TIMEOUT_SECONDS,
    DEFAULT_REFRESH_SECONDS,
    DEFAULT_REPLICAS,
    EXIT_NOT_READY,
    EXIT_OK,
    EXIT_SETUP_FAILED,
    LOCK_FILE,
    default_sample,
    default_state_dir,
    options_from_args,
)
from module_controller.demo.runner import Demo
from module_controller.demo.state import load_state, shell_exports
from module_controller.simulator.addresses import DEFAULT_FIRST_IP

# --- the command line ------------------------------------------------------------------------


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "demo",
        help="run the whole product locally and watch it: cluster, broker, operator, bases",
        description=(
            "Start the testbed (a real Kubernetes control plane and a Mosquitto broker on\n"
            "loopback), the operator, and simulated bases of the seed's base (name "
            f"'{BASE_NAME}',\nversion {BASE_VERSION}); apply the seed's sample module "
            "Deployment; then show bases,\nnodes, bases per operator replica (the holders "
            "of the nodes' Leases) and module\npods live, with the kubectl lines to try "
            "next. Ctrl-C stops everything the demo\nstarted.\n\n"
            "With --kubeconfig it uses that cluster, and the broker of --mqtt-broker (or\n"
            "MQTT_BROKER), instead of the testbed; on leaving it also deletes the sample\n"
            "Deployment it created and the nodes of its ENV.\n\n"
            "Logs (the operator's, the bases') are in the state directory."
        ),
        epilog=(
            "examples:\n"
            "  module-controller demo                     # everything local, until Ctrl-C\n"
            "  module-controller demo --once              # exit 0 once the sample's pod is "
            "Ready\n"
            "  module-controller demo --replicas 3 --bases 9  # the bases shared by three "
            "operators\n"
            '  eval "$(module-controller demo --exports)"  # another shell: kubectl and '
            "the broker of the running demo\n"
            "  module-controller demo --kubeconfig ~/.kube/config --mqtt-broker mqtt.local "
            "--env demo"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = parser.add_argument_group("where it runs")
    where.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"logs, the testbed and what --exports reads (default: {default_state_dir()})",
    )
    where.add_argument(
        "--kubeconfig",
        type=Path,
        default=None,
        metavar="PATH",
        help="use this cluster instead of starting the testbed (also needs a broker)",
    )
    where.add_argument(
        "--mqtt-broker",
        default=os.environ.get("MQTT_BROKER"),
        metavar="HOST",
        help="broker host with --kubeconfig (default: $MQTT_BROKER)",
    )
    where.add_argument(
        "--mqtt-port",
        type=int,
        default=os.environ.get("MQTT_PORT") or "1883",
        metavar="PORT",
        help="broker port (default: $MQTT_PORT, else 1883)",
    )
    where.add_argument(
        "--mqtt-username",
        default=os.environ.get("MQTT_USERNAME", ""),
        metavar="USER",
        help="broker user (default: $MQTT_USERNAME)",
    )
    where.add_argument(
        "--mqtt-password",
        default=os.environ.get("MQTT_PASSWORD", ""),
        metavar="PASSWORD",
        help="broker password (default: $MQTT_PASSWORD)",
    )
    what = parser.add_argument_group("what it runs")
    what.add_argument(
        "--env",
        default=DEFAULT_ENV,
        metavar="ENV",
        help="the operator's and the bases' ENV (MQTT topics koupleless_<ENV>/...); pick a "
        "private one on a broker that real bases use (default: %(default)s)",
    )
    what.add_argument(
        "--bases",
        type=int,
        default=DEFAULT_BASES,
        metavar="N",
        help=f"simulated bases '{BASE_NAME}' {BASE_VERSION} to start (default: %(default)s)",
    )
    what.add_argument(
        "--replicas",
        type=int,
        default=DEFAULT_REPLICAS,
        metavar="N",
        help="operator processes that share the bases, each holding its bases' node "
        "Leases; the view shows bases per replica. CLIENT_IDs replica-1..N, "
        "<ENV>-replica-1..N on a broker given with --kubeconfig (default: %(default)s)",
    )
    what.add_argument(
        "--first-ip",
        default=DEFAULT_FIRST_IP,
        metavar="IP",
        help="loopback address of the first base; the next ones count up (default: %(default)s)",
    )
    what.add_argument(
        "--sample",
        type=Path,
        default=default_sample(),
        metavar="PATH",
        help="the module Deployment to apply (default: the seed's samples/module-deployment.yaml)",
    )
    what.add_argument(
        "--namespace",
        default=None,
        metavar="NS",
        help="apply the sample in this namespace instead of its own (must exist)",
    )
    how = parser.add_argument_group("how it shows and ends")
    how.add_argument(
        "--once",
        action="store_true",
        help="exit 0 as soon as the sample's pod is Running and Ready (no live view); "
        "non-zero with a diagnosis when --timeout passes first",
    )
    how.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"implies --once: give up after this long (default with --once: "
        f"{DEFAULT_ONCE_TIMEOUT_SECONDS:.0f})",
    )
    how.add_argument(
        "--refresh",
        type=float,
        default=DEFAULT_REFRESH_SECONDS,
        metavar="SECONDS",
        help="redraw interval of the live view (default: %(default)s)",
    )
    how.add_argument(
        "--exports",
        action="store_true",
        help="print the shell exports (KUBECONFIG, MQTT_*, PATH) of the demo running in "
        "--state-dir, and exit",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    began = time.monotonic()
    if args.exports:
        return print_exports(args.state_dir or default_state_dir())
    try:
        options = options_from_args(args)
    except ValueError as error:
        print(f"module-controller demo: {error}", file=sys.stderr)
        return EXIT_SETUP_FAILED
    options.state_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(options.state_dir) as locked:
        if not locked:
            print(
                f"module-controller demo: a demo is already running with state in "
                f"{options.state_dir}; stop it with Ctrl-C in its terminal, or give another "
                "--state-dir.",
                file=sys.stderr,
            )
            return EXIT_SETUP_FAILED
        _log_to_file(options.state_dir / "demo.log")
        return asyncio.run(Demo(options, began).main())


@contextlib.contextmanager
def _exclusive(state_dir: Path) -> Iterator[bool]:
    """Hold the state directory's lock while the demo runs (released when it dies)."""
    with (state_dir / LOCK_FILE).open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def _demo_running(state_dir: Path) -> bool:
    path = state_dir / LOCK_FILE
    if not path.is_file():
        return False
    with path.open("r") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False


def _log_to_file(path: Path) -> None:
    """The simulated bases and the demo log here; the terminal is the live view's."""
    handler = logging.FileHandler(path, mode="w")  # this run's, not the last one's too
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def print_exports(state_dir: Path) -> int:
    state = load_state(state_dir)
    if state is None or not _demo_running(state_dir):
        print(
            f"No demo is running with state in {state_dir}; start one with "
            "`module-controller demo` (or ./dev demo).",
            file=sys.stderr,
        )
        return EXIT_NOT_READY
    print(shell_exports(state))
    return EXIT_OK
