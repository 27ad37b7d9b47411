"""Which Kubernetes release the testbed builds and runs, and where each one is cached."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from module_controller.testbed import binaries


def _selected_version(value: str | None) -> str:
    """KUBERNETES_VERSION as a fresh interpreter sees it with the variable set (or unset)."""
    env = {k: v for k, v in os.environ.items() if k != binaries.KUBERNETES_VERSION_VARIABLE}
    if value is not None:
        env[binaries.KUBERNETES_VERSION_VARIABLE] = value
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from module_controller.testbed.binaries import KUBERNETES_VERSION as v; print(v)",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_without_the_variable_the_testbed_runs_the_pinned_release() -> None:
    assert _selected_version(None) == binaries.PINNED_KUBERNETES_VERSION
    assert _selected_version("") == binaries.PINNED_KUBERNETES_VERSION


def test_the_variable_names_another_release_with_or_without_a_v() -> None:
    assert _selected_version("1.30.14") == "1.30.14"
    assert _selected_version("v1.33.13") == "1.33.13"


@pytest.mark.parametrize("value", ["1.33", "latest", "1.33.13-rc.0", "2.0.0", "v"])
def test_a_malformed_release_is_refused_before_any_build(value: str) -> None:
    with pytest.raises(binaries.BuildFailed, match=binaries.KUBERNETES_VERSION_VARIABLE):
        binaries.check_kubernetes_version(value.removeprefix("v"))


def test_a_release_older_than_the_testbed_supports_is_refused() -> None:
    with pytest.raises(binaries.BuildFailed, match="older than the testbed supports"):
        binaries.check_kubernetes_version("1.29.15")
    binaries.check_kubernetes_version(f"1.{binaries.OLDEST_KUBERNETES_MINOR}.0")


def _fake_built(directory: Path, names: tuple[str, ...], content: str) -> None:
    directory.mkdir(parents=True)
    for name in names:
        (directory / name).write_text(f"{name} {content}\n")


def test_each_release_has_its_own_cache_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODULE_CONTROLLER_CACHE", str(tmp_path))
    for version in ("1.30.14", "1.33.13"):
        _fake_built(tmp_path / "kubernetes" / f"v{version}", binaries.KUBERNETES_COMMANDS, version)
    etcd = tmp_path / "etcd" / f"v{binaries.ETCD_VERSION}"
    _fake_built(etcd, ("etcd",), binaries.ETCD_VERSION)

    # Both are found where they were built: nothing is rebuilt, nothing is shared but etcd.
    old = binaries.ensure_binaries("1.30.14")
    new = binaries.ensure_binaries("1.33.13")
    assert old.directory == tmp_path / "kubernetes" / "v1.30.14"
    assert new.directory == tmp_path / "kubernetes" / "v1.33.13"
    assert old.kube_apiserver.read_text() == "kube-apiserver 1.30.14\n"
    assert new.kube_apiserver.read_text() == "kube-apiserver 1.33.13\n"
    assert old.etcd == new.etcd == etcd / "etcd"


def test_the_matrix_covers_1_30_1_33_and_the_pinned_release() -> None:
    minors = [binaries.minor_version(v) for v in binaries.MATRIX_KUBERNETES_VERSIONS]
    assert minors == [30, 33, binaries.minor_version(binaries.PINNED_KUBERNETES_VERSION)]
    for version in binaries.MATRIX_KUBERNETES_VERSIONS:
        binaries.check_kubernetes_version(version)


def test_an_older_release_is_stamped_with_its_own_version() -> None:
    flags = binaries._version_ldflags("1.30.14")
    assert "-X k8s.io/component-base/version.gitVersion=v1.30.14" in flags
    assert "-X k8s.io/component-base/version.gitMinor=30" in flags
