"""A module pod's containers as modules: name = bizName, image = jar URL, BIZ_VERSION.

Pure functions of the pod body. A container that cannot be a module is reported with a
sentence saying why, so the pod's status and a Warning Event can tell the user (values are
quoted cut to a few dozen characters: a pod's status must not grow with a user's typo).

Upgrading a module on a base, per pod, with the annotation
``module-controller.koupleless.io/upgrade``:

- absent (the default): side by side. The new version is installed next to the old one;
  the old version's pod goes NotReady when the new version is ACTIVATED, then the new pod
  goes Ready; the old version is uninstalled when its pod is deleted.
- ``uninstall-then-install``: the old version is uninstalled first. On the base, the pods of
  the other versions of the module go NotReady, those versions are uninstalled, the pod's
  version is installed, and the pod goes Ready. Use it for web modules: a base cannot run two
  versions of a module that share one web context path (the second goes BROKEN with
  ``Child name [/biz1] is not unique``). The base serves no version of the module between
  the uninstall and the install.

The annotation of the newest pod that wants a module on a base decides for that module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from module_controller.modules.text import shown
from module_controller.protocol import BizModel, biz_key

VERSION_ENV = "BIZ_VERSION"
UPGRADE_ANNOTATION = "module-controller.koupleless.io/upgrade"
UNINSTALL_THEN_INSTALL = "uninstall-then-install"
URL_SCHEMES = frozenset({"http", "https", "file"})
# bizName is the module's Maven artifactId; container names are DNS labels anyway.
_MODULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


@dataclass(frozen=True)
class ModuleSpec:
    """One module a pod wants on its base."""

    container: str
    name: str
    version: str
    url: str

    @property
    def key(self) -> str:
        return biz_key(self.name, self.version)

    def biz(self) -> BizModel:
        return BizModel(biz_name=self.name, biz_version=self.version, biz_url=self.url)


@dataclass(frozen=True)
class PodModules:
    """What a pod wants, or why it cannot be served."""

    modules: tuple[ModuleSpec, ...]
    problems: tuple[str, ...]

    @property
    def valid(self) -> bool:
        return not self.problems and bool(self.modules)


def _version_of(container: dict[str, Any]) -> tuple[str | None, str | None]:
    for variable in container.get("env") or []:
        if variable.get("name") != VERSION_ENV:
            continue
        if "value" not in variable or variable.get("valueFrom"):
            return None, f"container {container.get('name')}: {VERSION_ENV} must be a literal value"
        return str(variable.get("value") or ""), None
    return (
        None,
        f"container {container.get('name')}: env {VERSION_ENV} (the module version) is missing",
    )


def url_problem(url: str) -> str | None:
    parsed = urlparse(url)
    if parsed.scheme.lower() not in URL_SCHEMES:
        return "is not a URL with scheme http, https or file"
    if parsed.scheme.lower() in ("http", "https") and not parsed.netloc:
        return "has no host"
    if not parsed.path or parsed.path == "/":
        return "names no jar"
    return None


def pod_modules(pod: dict[str, Any]) -> PodModules:
    """The modules of a pod's containers; every problem found, not just the first."""
    modules = []
    problems = []
    containers = (pod.get("spec") or {}).get("containers") or []
    if not containers:
        problems.append("the pod has no containers, so no module")
    for container in containers:
        name = str(container.get("name") or "")
        image = str(container.get("image") or "")
        if not _MODULE_NAME.match(name):
            problems.append(f"container name {shown(name)} is not a valid module (biz) name")
            continue
        version, problem = _version_of(container)
        if problem is not None:
            problems.append(problem)
            continue
        assert version is not None
        if not _VERSION.match(version):
            problems.append(
                f"container {name}: {VERSION_ENV}={shown(version)} is not a valid version "
                "(at most 128 letters, digits, '.', '_', '+' or '-')"
            )
            continue
        bad_url = url_problem(image)
        if bad_url is not None:
            problems.append(
                f"container {name}: image {shown(image, 200)} {bad_url} (a module jar URL)"
            )
            continue
        modules.append(ModuleSpec(container=name, name=name, version=version, url=image))
    return PodModules(tuple(modules), tuple(problems))
