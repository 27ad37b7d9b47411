"""The operator loads no dev tooling: `module-controller run`, `kopf run -m
module_controller.handlers` and the top-level `--help` import none of the testbed, simulator
or demo modules, and every runtime dependency (what the image installs) is one the operator
itself loads.

Each check runs in a fresh interpreter: this test process has imported everything already.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from module_controller import cli

REPO = Path(__file__).resolve().parents[2]
DEV_TOOLING = ("module_controller.demo", "module_controller.testbed", "module_controller.simulator")

# Prints, as JSON, the module_controller modules loaded by then and the distributions that
# provide the other non-standard modules.
_REPORT = """
import importlib.metadata, json, sys
providers = importlib.metadata.packages_distributions()
tops = {name.split(".")[0] for name in sys.modules}
print(json.dumps({
    "modules": sorted(m for m in sys.modules if m.startswith("module_controller")),
    "distributions": sorted({d for top in tops for d in providers.get(top, [])}),
}))
"""


def _loaded_after(code: str) -> dict[str, list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\n{_REPORT}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    # The report is the last line; a --help run prints the help before it.
    report: dict[str, list[str]] = json.loads(done.stdout.splitlines()[-1])
    return report


def _dev_modules(report: dict[str, list[str]]) -> list[str]:
    return [m for m in report["modules"] if m.startswith(DEV_TOOLING)]


def _through_the_cli(argv: list[str]) -> str:
    return f"""
from module_controller import cli
try:
    cli.main({argv!r})
except SystemExit:
    pass
"""


def test_importing_run_cli_loads_no_dev_tooling() -> None:
    report = _loaded_after("import module_controller.run_cli")
    assert "module_controller.run_cli" in report["modules"]
    assert _dev_modules(report) == []


def test_the_run_command_loads_no_dev_tooling() -> None:
    report = _loaded_after(_through_the_cli(["run", "--help"]))
    assert "module_controller.run_cli" in report["modules"]
    assert _dev_modules(report) == []


def test_the_kopf_handlers_load_no_dev_tooling() -> None:
    # What `kopf run -m module_controller.handlers` imports.
    report = _loaded_after("import module_controller.handlers")
    assert "module_controller.handlers.lifecycle" in report["modules"]
    assert _dev_modules(report) == []


def test_the_top_level_help_lists_every_command_without_loading_any() -> None:
    report = _loaded_after(_through_the_cli(["--help"]))
    assert _dev_modules(report) == []
    assert "module_controller.run_cli" not in report["modules"]


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_the_listed_help_is_the_one_the_command_registers(command: str) -> None:
    # The top-level --help reads the table in cli.py; loading the command itself must not
    # change a word of it.
    assert cli.build_parser(command).format_help() == cli.build_parser().format_help()


def _name(requirement: str) -> str:
    """`pyyaml>=6` -> `pyyaml`, normalized as PyPI compares names."""
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group()).lower()


def test_every_runtime_dependency_is_one_the_operator_loads() -> None:
    """The image installs the package without extras: a package only the dev tooling needs
    belongs in an extra, not in `dependencies`."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {_name(requirement) for requirement in project["dependencies"]}
    report = _loaded_after("import module_controller.run_cli, module_controller.handlers")
    loaded = {_name(distribution) for distribution in report["distributions"]}
    assert declared - loaded == set(), "not needed by the operator: move to an extra"
