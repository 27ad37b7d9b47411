"""The `module-controller` command: one entry point, one sub-command per job.

Each area of the package registers its own sub-command, so this file only wires them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from module_controller import __version__

Command = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    from module_controller import demo, run_cli
    from module_controller.simulator import cli as simulator_cli
    from module_controller.testbed import cli as testbed_cli

    parser = argparse.ArgumentParser(
        prog="module-controller",
        description=(
            "Koupleless Module Controller: turns running Java bases into virtual Nodes and "
            "module pods scheduled onto them into hot-installed modules."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run_cli.register(commands)
    testbed_cli.register(commands)
    simulator_cli.register(commands)
    demo.register(commands)
    return parser


def _environment_problem(error: ValueError) -> str:
    from module_controller.settings import SettingsError, load_settings

    try:
        load_settings()
    except SettingsError as settings_error:
        return str(settings_error)  # names the variable, where `error` may not
    return f"bad environment: {error}"


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
    except ValueError as error:
        # Some sub-commands take option defaults from the operator's environment variables;
        # a bad value there is one sentence naming the variable, not a traceback.
        print(f"module-controller: {_environment_problem(error)}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    command: Command = args.handler
    try:
        return command(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
