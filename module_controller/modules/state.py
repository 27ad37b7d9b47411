"""What the operator knows about module pods and about the modules on each base.

Plain data, updated from pod events and from what bases report; no I/O here.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from module_controller.modules.spec import PodModules, pod_modules
from module_controller.protocol import (
    BatchInstallBizResponse,
    BizOperationResponse,
    SimpleBizInfo,
    biz_key,
)
from module_controller.protocol.biz import ClientResponseCode
from module_controller.protocol.states import BizState


@dataclass
class ModulePod:
    """A module pod as last seen in a watch event (or in the start-up listing)."""

    namespace: str
    name: str
    uid: str
    node_name: str | None
    created: str
    deleting: bool
    wants: PodModules
    status: dict[str, Any]
    resource_version: str
    deletion_seen_at: float | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def observed_ready(self) -> bool:
        return any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in self.status.get("conditions") or []
        )


def module_pod_of(body: dict[str, Any]) -> ModulePod:
    metadata = body.get("metadata") or {}
    return ModulePod(
        namespace=str(metadata.get("namespace") or ""),
        name=str(metadata.get("name") or ""),
        uid=str(metadata.get("uid") or ""),
        node_name=(body.get("spec") or {}).get("nodeName") or None,
        created=str(metadata.get("creationTimestamp") or ""),
        deleting=metadata.get("deletionTimestamp") is not None,
        wants=pod_modules(body),
        status=dict(body.get("status") or {}),
        resource_version=str(metadata.get("resourceVersion") or ""),
    )


@dataclass
class InstalledModule:
    """A module as its base last reported it."""

    name: str
    version: str
    state: BizState
    reason: str | None = None
    message: str | None = None
    change_time_ms: int | None = None

    @property
    def key(self) -> str:
        return biz_key(self.name, self.version)


@dataclass
class Uninstall:
    first_sent: float
    last_sent: float
    attempts: int = 1


@dataclass
class BaseModules:
    """Modules on one base: reported inventory, and commands still in flight."""

    inventory: dict[str, InstalledModule] | None = None  # None until the base first reports
    installing: dict[str, float] = field(default_factory=dict)  # key -> when sent
    uninstalling: dict[str, Uninstall] = field(default_factory=dict)
    orphan_since: dict[str, float] = field(default_factory=dict)
    previously_wanted: set[str] = field(default_factory=set)
    # The jar URL each module was installed from by this operator (a pod's image can
    # change in place while its version cannot: same key, new jar).
    urls: dict[str, str] = field(default_factory=dict)
    # Problems already reported as Events, so each is reported once per pod and cause.
    reported: set[tuple[str, str]] = field(default_factory=set)


def _installed_of(info: SimpleBizInfo) -> InstalledModule:
    record = info.latest_state_record
    return InstalledModule(
        name=info.name,
        version=info.version,
        state=info.state,
        reason=str(record.reason) if record is not None and record.reason else None,
        message=record.message if record is not None else None,
        change_time_ms=record.change_time if record is not None else None,
    )


def _resource_version_newer(new: str, old: str) -> bool:
    """Whether an event is not older than what we hold (etcd revisions are integers)."""
    if new.isdigit() and old.isdigit():
        return int(new) >= int(old)
    return True


@dataclass
class ModuleState:
    """All module pods (by uid) and all bases' modules (by base identity)."""

    pods: dict[str, ModulePod] = field(default_factory=dict)
    bases: dict[str, BaseModules] = field(default_factory=lambda: defaultdict(BaseModules))
    listed: bool = False  # every module pod has been listed since start

    def pods_on(self, node_name: str) -> list[ModulePod]:
        return [pod for pod in self.pods.values() if pod.node_name == node_name]

    def upsert_pod(self, body: dict[str, Any], now: float) -> set[str]:
        """Record a pod; returns the node names whose plans may have changed."""
        pod = module_pod_of(body)
        old = self.pods.get(pod.uid)
        if old is not None and not _resource_version_newer(
            pod.resource_version, old.resource_version
        ):
            return set()
        if pod.deleting:
            pod.deletion_seen_at = old.deletion_seen_at if old and old.deletion_seen_at else now
        self.pods[pod.uid] = pod
        return {name for name in (pod.node_name, old.node_name if old else None) if name}

    def remove_pod(self, uid: str) -> set[str]:
        pod = self.pods.pop(uid, None)
        return {pod.node_name} if pod is not None and pod.node_name else set()

    def record_written_status(self, uid: str, body: dict[str, Any]) -> None:
        """What the API server answered to our status patch is the freshest truth."""
        pod = self.pods.get(uid)
        if pod is None:
            return
        metadata = body.get("metadata") or {}
        version = str(metadata.get("resourceVersion") or "")
        if _resource_version_newer(version, pod.resource_version):
            pod.status = dict(body.get("status") or {})
            pod.resource_version = version

    def set_inventory(self, identity: str, modules: tuple[SimpleBizInfo, ...]) -> None:
        base = self.bases[identity]
        base.inventory = {info.key: _installed_of(info) for info in modules}
        for key in list(base.installing):
            if key in base.inventory:
                del base.installing[key]
        for key in list(base.uninstalling):
            if key not in base.inventory:
                del base.uninstalling[key]

    def apply_operation(self, identity: str, result: BizOperationResponse) -> str | None:
        """Fold an install / uninstall reply into the inventory; returns the module key."""
        if not result.biz_name or not result.biz_version:
            return None
        key = biz_key(result.biz_name, result.biz_version)
        base = self.bases[identity]
        response = result.response
        data = response.data
        code = data.code if data is not None else response.code
        if result.command == "installBiz":
            base.installing.pop(key, None)
            if code == ClientResponseCode.REPEAT_BIZ:
                return key  # already there: the next inventory tells its state
            if base.inventory is None:
                return key
            if response.ok and (data is None or data.ok):
                state = BizState.ACTIVATED
                for info in (data.biz_infos if data is not None else None) or []:
                    if info.key == key and info.biz_state is not None:
                        state = info.biz_state
                known = base.inventory.get(key)
                if known is None or known.state is not state:  # keep the base's own record
                    base.inventory[key] = InstalledModule(
                        result.biz_name, result.biz_version, state
                    )
            else:
                message = (data.message if data is not None else None) or response.message
                base.inventory[key] = InstalledModule(
                    result.biz_name,
                    result.biz_version,
                    BizState.BROKEN,
                    reason="INSTALL_FAILED",
                    message=message,
                )
        elif result.command == "uninstallBiz":
            gone = (response.ok and (data is None or data.ok)) or (
                code == ClientResponseCode.NOT_FOUND_BIZ
            )
            if gone:
                base.uninstalling.pop(key, None)
                if base.inventory is not None:
                    base.inventory.pop(key, None)
        return key

    def apply_batch(self, identity: str, result: BatchInstallBizResponse) -> None:
        """A base installed its baseline: what it reports joins the inventory."""
        base = self.bases[identity]
        data = result.response.data
        if base.inventory is None or data is None:
            return
        for entry in (data.biz_url_to_response or {}).values():
            for info in entry.biz_infos or []:  # may be absent: guard, unlike the Go code
                if info.biz_state is not None:
                    base.inventory[info.key] = InstalledModule(
                        info.biz_name, info.biz_version, info.biz_state
                    )

    def forget_base(self, identity: str) -> None:
        self.bases.pop(identity, None)
