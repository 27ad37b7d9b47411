"""The `module-controller` command: one entry point, one sub-command per job.

Each area of the package registers its own sub-command, so this file only wires them. Only
the chosen sub-command's module is imported: `module-controller run` (the operator's image)
does not load the dev tooling (testbed, simulator, demo) at all.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from module_controller import __version__

Command = Callable[[argparse.Namespace], int]

# Sub-command -> (module with `register(commands)`, its one-line help). The help is repeated
# here so that `module-controller --help` can list every sub-command without importing it;
# tests/unit/test_operator_imports.py checks it matches what the module registers.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": (
        "module_controller.run_cli",
        "run the operator against the cluster of KUBECONFIG (or in-cluster config)",
    ),
    "testbed": (
        "module_controller.testbed.cli",
        "start or stop a local Kubernetes control plane and MQTT broker",
    ),
    "simulate": (
        "module_controller.simulator.cli",
        "run simulated Koupleless bases against the MQTT broker",
    ),
    "demo": (
        "module_controller.demo",
        "run the whole product locally and watch it: cluster, broker, operator, bases",
    ),
    "rollout": (
        "module_controller.rollouts.cli",
        "approve the paused step of a ModuleRollout",
    ),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with `command`'s full sub-parser; the other sub-commands are only named
    (enough for the top-level --help and for "invalid choice" messages)."""
    parser = argparse.ArgumentParser(
        prog="module-controller",
        description=(
            "Koupleless Module Controller: turns running Java bases into virtual Nodes and "
            "module pods scheduled onto them into hot-installed modules."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, one_line_help) in COMMANDS.items():
        if name == command:
            importlib.import_module(module).register(commands)
        else:
            commands.add_parser(name, help=one_line_help)
    return parser


def chosen_command(argv: Sequence[str]) -> str | None:
    """The sub-command named in `argv`: the first word that is not an option (the top-level
    options, --help and --version, take no value)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def _environment_problem(error: ValueError) -> str:
    from module_controller.settings import SettingsError, load_settings

    try:
        load_settings()
    except SettingsError as settings_error:
        return str(settings_error)  # names the variable, where `error` may not
    return f"bad environment: {error}"


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(chosen_command(arguments))
    except ValueError as error:
        # Some sub-commands take option defaults from the operator's environment variables;
        # a bad value there is one sentence naming the variable, not a traceback.
        print(f"module-controller: {_environment_problem(error)}", file=sys.stderr)
        return 2
    args = parser.parse_args(arguments)
    command: Command = args.handler
    try:
        return command(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
