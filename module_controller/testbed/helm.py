"""The `helm` command the shipping tests run, built with `go` and cached by version.

Like the Kubernetes binaries (`binaries.py`), helm comes from the Go module proxy through a
small wrapper module, `gomod/helm/`, and is built once into the cache directory keyed by
its version. helm.sh/helm/v3's go.mod has no replace directives, so the wrapper only
requires it; moving to another release means changing HELM_VERSION (the wrapper's go.mod
is re-tidied for the new version on the first build).
"""

from __future__ import annotations

import logging
from pathlib import Path

from module_controller.testbed.binaries import build_pinned_module, ensure_built, go

log = logging.getLogger(__name__)

HELM_VERSION = "3.22.0"
HELM_MODULE = "helm.sh/helm/v3"


def ensure_helm() -> Path:
    """Return the cached `helm` binary, building it when missing (minutes when cold)."""
    return ensure_built(f"helm/v{HELM_VERSION}", ("helm",), _build_helm) / "helm"


def _build_helm(out: Path) -> None:
    build_pinned_module(
        "helm",
        HELM_MODULE,
        HELM_VERSION,
        f"{HELM_MODULE}/cmd/helm",
        out / "helm",
        lambda work: _ldflags(_client_go_version(work)),
    )


def _client_go_version(work: Path) -> str:
    """The k8s.io/client-go version helm is built against, e.g. `v0.37.0`."""
    return go(["list", "-m", "-f", "{{.Version}}", "k8s.io/client-go"], work).strip()


def _ldflags(client_go_version: str) -> str:
    """Stamp what helm's own Makefile stamps.

    Without it `helm version` says `v3.22` with no patch level, and `helm template` /
    `helm lint` assume Kubernetes 1.20 instead of the release helm was built against
    (client-go v0.X.Y means Kubernetes 1.X).
    """
    minor = client_go_version.lstrip("v").split(".")[1]
    flags = ["-s", "-w", f"-X {HELM_MODULE}/internal/version.version=v{HELM_VERSION}"]
    for package in (f"{HELM_MODULE}/pkg/lint/rules", f"{HELM_MODULE}/pkg/chartutil"):
        flags += [f"-X {package}.k8sVersionMajor=1", f"-X {package}.k8sVersionMinor={minor}"]
    return " ".join(flags)


def main() -> None:
    """`python -m module_controller.testbed.helm`: build (or find) helm and print its path."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(ensure_helm())


if __name__ == "__main__":
    main()
