"""`module-controller testbed up|down|env`: a local cluster and broker for tests and demos."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from module_controller.testbed import testbed
from module_controller.testbed.binaries import BuildFailed
from module_controller.testbed.process import ComponentFailed


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "testbed",
        help="start or stop a local Kubernetes control plane and MQTT broker",
        description=(
            "A real kube-apiserver, kube-controller-manager, kube-scheduler and etcd, and a "
            "Mosquitto broker with generated credentials, all on loopback. The Kubernetes "
            "binaries are built with `go` on first use and cached outside the repository."
        ),
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    up = actions.add_parser(
        "up",
        help="start everything and print the shell exports to use it",
        description=(
            "Start the testbed and return once every component is ready. Prints lines to "
            "eval in a shell: KUBECONFIG, MQTT_BROKER, MQTT_PORT, MQTT_USERNAME, "
            "MQTT_PASSWORD and a PATH holding the matching kubectl. Progress goes to stderr."
        ),
    )
    _state_dir_option(up)
    up.add_argument(
        "--node-monitor-grace-period",
        type=int,
        default=testbed.DEFAULT_NODE_MONITOR_GRACE_PERIOD,
        metavar="SECONDS",
        help="how long the node-lifecycle controller waits for a node heartbeat (default: "
        "%(default)s, Kubernetes' own)",
    )
    up.add_argument("--no-cluster", action="store_true", help="start only the MQTT broker")
    up.add_argument(
        "--tls",
        action="store_true",
        help="also give the broker a TLS listener that requires a client certificate "
        "(certificates made with openssl), and export it: MQTT_PORT, MQTT_CA_PATH, "
        "MQTT_CLIENT_CRT_PATH, MQTT_CLIENT_KEY_PATH",
    )
    up.set_defaults(handler=_up)

    down = actions.add_parser("down", help="stop every process the testbed started")
    _state_dir_option(down)
    down.set_defaults(handler=_down)

    env = actions.add_parser("env", help="print the shell exports of a running testbed")
    _state_dir_option(env)
    env.set_defaults(handler=_env)


def _state_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"where the testbed keeps its state, logs and data (default: "
        f"{testbed.default_state_dir()})",
    )


def _up(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        state = testbed.up(
            args.state_dir,
            with_cluster=not args.no_cluster,
            with_tls=args.tls,
            node_monitor_grace_period=args.node_monitor_grace_period,
        )
    except (ComponentFailed, BuildFailed) as error:
        print(f"testbed up failed: {error}", file=sys.stderr)
        return 1
    print(testbed.shell_exports(state))
    return 0


def _down(args: argparse.Namespace) -> int:
    stopped = testbed.down(args.state_dir)
    where = args.state_dir or testbed.default_state_dir()
    if stopped:
        print(f"Stopped {', '.join(stopped)} ({where}).", file=sys.stderr)
    else:
        print(f"Nothing was running in {where}.", file=sys.stderr)
    return 0


def _env(args: argparse.Namespace) -> int:
    state = testbed.load_state(args.state_dir or testbed.default_state_dir())
    if state is None or not testbed.is_alive(state):
        print(
            "No testbed is running there; start one with `module-controller testbed up`.",
            file=sys.stderr,
        )
        return 1
    print(testbed.shell_exports(state))
    return 0
