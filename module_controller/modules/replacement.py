"""Which module each key should be on a base, and which pods lose theirs to a newer pod.

A base holds one biz per name:version. So:

- same name:version, another jar (`kubectl set image` with the same BIZ_VERSION, or a bare
  Pod updated in place): the newest pod's jar wins. The old jar must leave before the new
  one comes, in the seed's order on that base: the pods on the old jar go NotReady, it is
  uninstalled, the new jar is installed, the new pod goes Ready — never Ready on the old jar.
- the annotation `module-controller.koupleless.io/upgrade: uninstall-then-install` on the
  newest pod of a module name (see spec.py): every other version of that name goes first,
  in the same order.
- a version left DEACTIVATED (a newer one was switched on over it) while its pod is the
  newest of its name again (the newer pod left: a rollback, a canary taken away): nothing
  on the base switches it back on (MQTT bases have no switchBiz), so it is uninstalled
  and installed again once the versions still active have left — else its pod would stay
  NotReady for good.

Which jar an installed module came from is `BaseModules.urls`; after an operator restart it
is unknown, and is taken from the pod that shows Ready on it (else the newest pod's jar).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from module_controller.modules import reasons
from module_controller.modules.spec import UNINSTALL_THEN_INSTALL, ModuleSpec
from module_controller.modules.state import BaseModules, InstalledModule, ModulePod
from module_controller.modules.text import bounded
from module_controller.protocol.states import BizState


@dataclass
class Intent:
    """What should be on one base, from its live pods (oldest first)."""

    wanted: dict[str, ModuleSpec] = field(default_factory=dict)  # key -> the newest pod's
    wanting: dict[str, list[ModulePod]] = field(default_factory=dict)  # key -> its pods
    # Pods whose module makes way for a newer pod's: uid -> (reason, message); never Ready.
    displaced: dict[str, tuple[str, str]] = field(default_factory=dict)
    replaced: set[str] = field(default_factory=set)  # installed from another jar than wanted
    evicted: set[str] = field(default_factory=set)  # other versions an upgrade uninstalls
    # key -> keys that must have left the base before it is installed
    clear_first: dict[str, set[str]] = field(default_factory=dict)
    # Wanted versions left DEACTIVATED that nothing switches back on: installed again.
    reinstalled: set[str] = field(default_factory=set)


def intent_of(
    served: list[ModulePod], base: BaseModules, inventory: dict[str, InstalledModule]
) -> Intent:
    """The modules the base should hold. Records adopted jar URLs in `base.urls`."""
    intent = Intent()
    newest: dict[str, tuple[ModulePod, ModuleSpec]] = {}
    newest_of_name: dict[str, tuple[ModulePod, ModuleSpec]] = {}
    for pod in served:  # oldest first: the last one seen is the newest
        for spec in pod.wants.modules:
            newest[spec.key] = (pod, spec)
            newest_of_name[spec.name] = (pod, spec)
            intent.wanting.setdefault(spec.key, []).append(pod)

    for name, (pod, spec) in newest_of_name.items():
        if pod.upgrade != UNINSTALL_THEN_INSTALL:
            continue
        others = {k for k, (_, s) in newest.items() if s.name == name and k != spec.key}
        others |= {k for k, m in inventory.items() if m.name == name and k != spec.key}
        if not others:
            continue
        intent.clear_first[spec.key] = others
        intent.evicted |= others
        for key in others:
            for other in intent.wanting.get(key, []):
                intent.displaced[other.uid] = (
                    reasons.SUPERSEDED,
                    bounded(
                        f"{key} is uninstalled so that {spec.key} can be installed "
                        f"(pod {pod.name} upgrades with uninstall-then-install)"
                    ),
                )

    for key, (pod, spec) in newest.items():
        if key in intent.evicted:
            continue
        intent.wanted[key] = spec
        for other in intent.wanting[key]:
            if other.uid != pod.uid and _url_of(other, key) != spec.url:
                intent.displaced.setdefault(
                    other.uid,
                    (
                        reasons.REPLACED,
                        bounded(f"{key} is replaced by the jar {spec.url} of pod {pod.name}"),
                    ),
                )
        if key in inventory and key not in base.urls:
            base.urls[key] = _adopted_url(intent.wanting[key], key, spec.url)
        if key in inventory and base.urls.get(key, spec.url) != spec.url:
            intent.replaced.add(key)
    for _, spec in newest_of_name.values():
        _reinstall_if_left_deactivated(intent, spec, base, inventory)
    return intent


def _reinstall_if_left_deactivated(
    intent: Intent, spec: ModuleSpec, base: BaseModules, inventory: dict[str, InstalledModule]
) -> None:
    """The newest pod of a name wants a version the base keeps DEACTIVATED.

    While a live pod still wants a version that is active, that one serves (an older pod
    mid-update): wait. Otherwise the active versions are leaving (no pod wants them), and
    ours is installed again after them, so it comes back ACTIVATED whatever the base's
    activation policy (an install next to an active version may start DEACTIVATED).
    `base.reinstalls` (the planner's) names a version uninstalled for that.
    """
    if spec.key not in intent.wanted:
        return
    installed = inventory.get(spec.key)
    coming_back = installed is None and spec.key in base.reinstalls
    if not coming_back and (installed is None or installed.state is not BizState.DEACTIVATED):
        return
    active = {
        key
        for key, other in inventory.items()
        if other.name == spec.name
        and key != spec.key
        and (other.state is BizState.ACTIVATED or key in base.uninstalling)
    }
    if not coming_back:
        if active & intent.wanted.keys():
            return
        intent.reinstalled.add(spec.key)
    if active:
        intent.clear_first.setdefault(spec.key, set()).update(active)


def _url_of(pod: ModulePod, key: str) -> str | None:
    return next((s.url for s in pod.wants.modules if s.key == key), None)


def _adopted_url(pods: list[ModulePod], key: str, newest: str) -> str:
    """The jar a module found on the base most likely came from: a Ready pod's, else ours."""
    for pod in pods:
        if pod.observed_ready:
            return _url_of(pod, key) or newest
    return newest
