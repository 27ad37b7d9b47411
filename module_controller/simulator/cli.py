"""`module-controller simulate`: run simulated bases until interrupted."""

from __future__ import annotations

import argparse
from typing import Any


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "simulate", help="run simulated Koupleless bases against the MQTT broker"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    raise SystemExit("module-controller simulate: not implemented yet")
