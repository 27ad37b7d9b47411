"""`module-controller simulate`: run simulated bases until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from typing import Any

from module_controller.simulator.addresses import DEFAULT_FIRST_IP
from module_controller.simulator.config import BaseConfig, IdentityStyle, MqttSettings
from module_controller.simulator.fleet import Fleet
from module_controller.simulator.http_tunnel import check_loopback_endpoint


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "simulate",
        help="run simulated Koupleless bases against the MQTT broker",
        description=(
            "Run N simulated bases. The broker comes from MQTT_BROKER, MQTT_PORT, "
            "MQTT_USERNAME, MQTT_PASSWORD (and MQTT_CLIENT_PREFIX, MQTT_CA_PATH, "
            "MQTT_CLIENT_CRT_PATH, MQTT_CLIENT_KEY_PATH)."
        ),
    )
    parser.add_argument("--bases", type=int, default=1, help="how many bases (default 1)")
    parser.add_argument("--name", required=True, help="base name (node label)")
    parser.add_argument("--version", required=True, help="base version (node label)")
    parser.add_argument("--cluster", default="default", help="cluster name (default 'default')")
    parser.add_argument("--env", default="dev", help="topic env, lower-cased (default dev)")
    parser.add_argument(
        "--identity",
        choices=[style.value for style in IdentityStyle],
        default=IdentityStyle.UUID.value,
        help="uuid: a new UUID per start (default); ip: the base's loopback IP",
    )
    parser.add_argument(
        "--first-ip", default=DEFAULT_FIRST_IP, help=f"first base IP (default {DEFAULT_FIRST_IP})"
    )
    parser.add_argument("--port", type=int, default=1238, help="first Arklet HTTP port to try")
    parser.add_argument("--no-http", action="store_true", help="do not serve the Arklet HTTP API")
    parser.add_argument("--no-mqtt", action="store_true", help="no MQTT tunnel (HTTP only)")
    parser.add_argument(
        "--http-heartbeat",
        metavar="URL",
        default=None,
        help="HTTP tunnel: POST heartbeats to URL/heartbeat (loopback only)",
    )
    parser.add_argument(
        "--no-activate-new-module",
        action="store_true",
        help="a second version of a module starts DEACTIVATED instead of taking over",
    )
    parser.add_argument(
        "--auto-uninstall-failed",
        action="store_true",
        help="remove a module whose start failed (default: keep it BROKEN, as the sample base)",
    )
    parser.add_argument(
        "--fetch-jars",
        action="store_true",
        help="fetch file:// and loopback http(s) jars; a jar's manifest names its module",
    )
    parser.add_argument("--quiet", action="store_true", help="log warnings only")
    parser.set_defaults(handler=run)


def mqtt_from_environment(environ: dict[str, str] | None = None) -> MqttSettings:
    env = os.environ if environ is None else environ
    return MqttSettings(
        host=env.get("MQTT_BROKER", "127.0.0.1"),
        port=int(env.get("MQTT_PORT", "1883")),
        username=env.get("MQTT_USERNAME", ""),
        password=env.get("MQTT_PASSWORD", ""),
        client_prefix=env.get("MQTT_CLIENT_PREFIX", "koupleless"),
        ca_path=env.get("MQTT_CA_PATH") or None,
        client_crt_path=env.get("MQTT_CLIENT_CRT_PATH") or None,
        client_key_path=env.get("MQTT_CLIENT_KEY_PATH") or None,
    )


def config_from_args(args: argparse.Namespace) -> BaseConfig:
    endpoint = check_loopback_endpoint(args.http_heartbeat) if args.http_heartbeat else None
    return BaseConfig(
        name=args.name,
        version=args.version,
        cluster_name=args.cluster,
        env=args.env.lower(),
        identity_style=IdentityStyle(args.identity),
        mqtt=None if args.no_mqtt else mqtt_from_environment(),
        http_api=not args.no_http,
        port=args.port,
        http_heartbeat_endpoint=endpoint,
        activate_new_module=not args.no_activate_new_module,
        auto_uninstall_when_failed=args.auto_uninstall_failed,
        fetch_jars=args.fetch_jars,
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    if args.bases < 1:
        raise SystemExit("--bases must be at least 1")
    asyncio.run(_simulate(config_from_args(args), args.bases, args.first_ip))
    return 0


async def _simulate(template: BaseConfig, count: int, first_ip: str) -> None:
    fleet = Fleet(template, first_ip=first_ip)
    try:
        bases = await fleet.start(count)
        for base in bases:
            logging.info(
                "base %s identity=%s ip=%s arklet=%s:%s",
                base.config.name,
                base.identity,
                base.config.ip,
                base.config.ip,
                base.port or "-",
            )
        # Until interrupted: Ctrl-C cancels this task; SIGTERM ends it the same clean way.
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
    finally:
        await fleet.stop()
