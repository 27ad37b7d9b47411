"""The Kubernetes and etcd binaries the testbed runs, built with `go` and cached by version.

The binaries come from the Go module proxy through small wrapper modules kept in
`gomod/` (their go.mod and go.sum live in the repository, the binaries never do). To move
to another release, change the version constant: the wrapper's go.mod is regenerated from
upstream's own go.mod when it names another version, and the new binaries are built once
into a cache directory keyed by that version.

`MODULE_CONTROLLER_KUBERNETES_VERSION=1.33.13` runs the testbed on another release without
changing the pin (`./dev e2e-matrix` sets it); each version keeps its own cache directory.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PINNED_KUBERNETES_VERSION = "1.36.3"
KUBERNETES_VERSION_VARIABLE = "MODULE_CONTROLLER_KUBERNETES_VERSION"
# The release the testbed builds and runs: the pinned one unless the variable names another.
# Read once, at import, so the testbed, the state it records and the tests all agree; a
# malformed value is reported by ensure_binaries(), not here, so imports never fail on it.
KUBERNETES_VERSION = (
    os.environ.get(KUBERNETES_VERSION_VARIABLE, "").strip().removeprefix("v")
    or PINNED_KUBERNETES_VERSION
)
# Older minors `./dev e2e-matrix` runs by default, besides the pinned one: the newest patch
# of each that the Go module proxy serves (`go list -m -versions k8s.io/kubernetes`).
MATRIX_KUBERNETES_VERSIONS = ("1.30.14", "1.33.13", PINNED_KUBERNETES_VERSION)
# The oldest minor the testbed's command lines (cluster.py) were run on. Older ones are
# refused before a build of minutes that might not start: the scheduler's config API, for
# one, is v1 only from 1.25.
OLDEST_KUBERNETES_MINOR = 30
ETCD_VERSION = "3.6.16"

KUBERNETES_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
GOMOD_DIR = Path(__file__).parent / "gomod"


class BuildFailed(RuntimeError):
    """`go` could not produce a binary; the message carries the end of its output."""


def cache_root() -> Path:
    """Where built binaries live: outside the repository, kept across runs."""
    explicit = os.environ.get("MODULE_CONTROLLER_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "module-controller"


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path

    @property
    def directory(self) -> Path:
        return self.kubectl.parent


def check_kubernetes_version(version: str) -> None:
    """A release like 1.33.13: the build derives the staging modules' v0.33.13 from it."""
    if not re.fullmatch(r"1\.\d+\.\d+", version):
        raise BuildFailed(
            f"{KUBERNETES_VERSION_VARIABLE}={version!r} is not a Kubernetes release such as "
            f"{PINNED_KUBERNETES_VERSION}"
        )
    if minor_version(version) < OLDEST_KUBERNETES_MINOR:
        raise BuildFailed(
            f"Kubernetes {version} is older than the testbed supports "
            f"(1.{OLDEST_KUBERNETES_MINOR} and later; see OLDEST_KUBERNETES_MINOR)"
        )


def minor_version(version: str) -> int:
    """1.33.13 -> 33."""
    return int(version.split(".")[1])


def ensure_binaries(version: str = KUBERNETES_VERSION) -> Binaries:
    """Return the cached binaries, building whatever is missing (minutes when cold)."""
    check_kubernetes_version(version)
    kube_dir = ensure_built(
        f"kubernetes/v{version}",
        KUBERNETES_COMMANDS,
        lambda out: _build_kubernetes(out, version),
    )
    etcd_dir = ensure_built(f"etcd/v{ETCD_VERSION}", ("etcd",), _build_etcd)
    return Binaries(
        etcd=etcd_dir / "etcd",
        kube_apiserver=kube_dir / "kube-apiserver",
        kube_controller_manager=kube_dir / "kube-controller-manager",
        kube_scheduler=kube_dir / "kube-scheduler",
        kubectl=kube_dir / "kubectl",
    )


def ensure_built(key: str, names: tuple[str, ...], build: Callable[[Path], None]) -> Path:
    target = cache_root() / key
    if all((target / name).is_file() for name in names):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # One build at a time per version: parallel test sessions wait for the first.
    with (target.parent / f".{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if all((target / name).is_file() for name in names):
            return target
        partial = target.parent / f"{target.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        began = time.monotonic()
        log.warning("Building %s with go (cold builds take many minutes) ...", key)
        build(partial)
        missing = [name for name in names if not (partial / name).is_file()]
        if missing:
            raise BuildFailed(f"go build of {key} produced no {', '.join(missing)}")
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        log.warning("Built %s in %.0fs into %s", key, time.monotonic() - began, target)
    return target


def go(args: list[str], cwd: Path, extra_env: dict[str, str] | None = None) -> str:
    go = shutil.which("go")
    if go is None:
        raise BuildFailed("the `go` command is not on PATH; install Go to build the testbed")
    env = {**os.environ, "CGO_ENABLED": "0", **(extra_env or {})}
    result = subprocess.run(
        [go, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
        raise BuildFailed(f"go {' '.join(args[:2])} failed in {cwd}:\n{tail}")
    return result.stdout


def working_copy(name: str) -> Path:
    """Copy a wrapper module to a scratch directory: the package may be read-only."""
    scratch = Path(tempfile.mkdtemp(prefix=f"module-controller-{name}-"))
    for item in (GOMOD_DIR / name).iterdir():
        shutil.copy(item, scratch / item.name)
    return scratch


def _version_ldflags(version: str) -> str:
    """Stamp the version the way Kubernetes' own build does, so /version tells the truth."""
    major, minor, _ = version.split(".")
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        for key, value in (
            ("gitVersion", f"v{version}"),
            ("gitMajor", major),
            ("gitMinor", minor),
            ("gitTreeState", "clean"),
            ("gitCommit", "unknown"),
            ("buildDate", now),
        ):
            flags.append(f"-X {package}.{key}={value}")
    return " ".join(flags)


def _build_kubernetes(out: Path, version: str) -> None:
    work = working_copy("kubernetes")
    try:
        if required_version(work / "go.mod", "k8s.io/kubernetes") != f"v{version}":
            regenerate_kubernetes_gomod(work, version)
        go(
            [
                "build",
                "-trimpath",
                "-buildvcs=false",
                "-ldflags",
                _version_ldflags(version),
                "-o",
                f"{out}/",
                *(f"k8s.io/kubernetes/cmd/{name}" for name in KUBERNETES_COMMANDS),
            ],
            cwd=work,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build_pinned_module(
    wrapper: str,
    module: str,
    version: str,
    package: str,
    binary: Path,
    ldflags: Callable[[Path], str] = lambda _: "-s -w",
) -> None:
    """Build `package` from a wrapper module that requires `module` at `version`.

    A wrapper whose go.mod names another version is re-pinned and tidied first, so moving
    to another release is a change of one constant. `ldflags` may read the tidied module.
    """
    work = working_copy(wrapper)
    try:
        if required_version(work / "go.mod", module) != f"v{version}":
            go(["mod", "edit", f"-require={module}@v{version}"], work)
            go(["mod", "tidy"], work)
        go(
            [
                "build",
                "-trimpath",
                "-buildvcs=false",
                "-ldflags",
                ldflags(work),
                "-o",
                str(binary),
                package,
            ],
            cwd=work,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build_etcd(out: Path) -> None:
    module = "go.etcd.io/etcd/server/v3"
    build_pinned_module("etcd", module, ETCD_VERSION, module, out / "etcd")


def required_version(gomod: Path, module: str) -> str | None:
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", gomod.read_text(), re.M)
    return match.group(1) if match else None


_STAGING_REPLACE = re.compile(r"^\s+(k8s\.io/[A-Za-z0-9._-]+) => \./staging/", re.M)


def regenerate_kubernetes_gomod(directory: Path, version: str) -> None:
    """Write a wrapper go.mod for `version` from upstream's go.mod, then tidy it.

    k8s.io/kubernetes requires its staging modules at v0.0.0 and maps them to local
    directories; as a dependency those replaces are ignored, so the wrapper replaces each
    staging module with its published v0.X.Y tag. Upstream's own go.mod names them all.
    """
    info = json.loads(go(["mod", "download", "-json", f"k8s.io/kubernetes@v{version}"], directory))
    upstream = Path(info["GoMod"]).read_text()
    go_line = re.search(r"^go (\S+)", upstream, re.M)
    godebug = re.search(r"^godebug (\S+)", upstream, re.M)
    staging = f"v0.{version.split('.', 1)[1]}"
    lines = [
        "module local.test/kubernetes-binaries",
        "",
        f"go {go_line.group(1) if go_line else '1.26.0'}",
        "",
    ]
    if godebug:
        lines += [f"godebug {godebug.group(1)}", ""]
    lines += [f"require k8s.io/kubernetes v{version}", "", "replace ("]
    lines += [f"\t{name} => {name} {staging}" for name in _STAGING_REPLACE.findall(upstream)]
    lines += [")", ""]
    (directory / "go.mod").write_text("\n".join(lines))
    (directory / "go.sum").unlink(missing_ok=True)
    go(["mod", "tidy"], directory)


def main() -> None:
    """`python -m module_controller.testbed.binaries`: build (or find) and print the paths."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        binaries = ensure_binaries()
    except BuildFailed as error:
        raise SystemExit(f"error: {error}") from None
    for name, path in vars(binaries).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
