"""What the operator knows about module pods and about the modules on each base.

Plain data, updated from pod events and from what bases report; no I/O here.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from module_controller.modules import reasons
from module_controller.modules.pods import ModulePod, module_pod_of
from module_controller.modules.replies import (
    lock_conflict,
    mismatch_message,
    repeated_key,
    reply_text,
    web_context_conflict,
    web_context_message,
)
from module_controller.modules.text import bounded
from module_controller.protocol import (
    BatchInstallBizResponse,
    BizOperationResponse,
    SimpleBizInfo,
    biz_key,
)
from module_controller.protocol.biz import BizStateRecord, ClientResponseCode
from module_controller.protocol.states import BizState

# Re-exported: the planner, the sync and tests name a module pod here.
__all__ = ["BaseModules", "InstalledModule", "ModulePod", "ModuleState", "module_pod_of"]


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
class InstallFailure:
    """Why a module that pods want is not (properly) on its base, and when to try again.

    `message` is what pods and Events show: it must not change from one retry to the next
    when the base says the same, or each retry would patch every pod again.
    """

    reason: str
    message: str
    url: str  # the jar that failed
    at: float  # when the base last answered the failure
    attempts: int = 1
    retry: bool = True  # False: only a change of the pods' spec tries again
    # The pods that wanted the module when it failed (filled in by the planner); a pod not
    # among them is a new spec, which starts over.
    pods: frozenset[str] | None = None
    # It went BROKEN on the base (rather than an install being answered with a failure):
    # it stands only as long as the base lists the BROKEN module.
    broken: bool = False

    def due(self, first: float, longest: float) -> float:
        """When the next try may go: `first` seconds, doubling per failure, at most `longest`."""
        return self.at + min(first * 2.0 ** (self.attempts - 1), longest)


@dataclass(frozen=True)
class OperationOutcome:
    """What an install / uninstall answer means, for Events and metrics."""

    key: str
    installing: bool
    ok: bool
    reason: str
    message: str
    report: bool = True  # False: nothing worth an Event (a REPEAT_BIZ of what is there)


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
    # What was last reported as an Event, per pod and topic: (pod uid, topic) -> cause (see
    # `report`). One cause per topic, so a pod whose module goes BROKEN again and again
    # does not grow it; the planner drops the pods no longer on the base (`keep_reports_of`).
    reported: dict[tuple[str, str], str] = field(default_factory=dict)
    # Installs that failed, by module key: backoff and what the pods say.
    failures: dict[str, InstallFailure] = field(default_factory=dict)
    # Modules our own install put on the base under another name:version than asked (the
    # jar's manifest wins): declared key -> asked key. Uninstalled unless a pod wants them.
    strays: dict[str, str] = field(default_factory=dict)
    # Installs in flight for modules no pod wants any more: key -> when sent (planner).
    abandoned: dict[str, float] = field(default_factory=dict)
    # Versions left DEACTIVATED being installed again: key -> (tries, when last), so a base
    # that keeps starting one DEACTIVATED is not sent it in a loop; forgotten once ACTIVATED.
    reinstalls: dict[str, tuple[int, float]] = field(default_factory=dict)

    def report(self, uid: str, topic: str, cause: str) -> bool:
        """Whether `cause` is news about `topic` for the pod: an Event is due. Remembered,
        so that it is reported once (e.g. topic "broken biz1:1", cause its state record)."""
        if self.reported.get((uid, topic)) == cause:
            return False
        self.reported[(uid, topic)] = cause
        return True

    def keep_reports_of(self, uids: set[str]) -> None:
        """Forget what was reported about pods that are not on the base any more."""
        for entry in [entry for entry in self.reported if entry[0] not in uids]:
            del self.reported[entry]


REMOVED_REMEMBERED = 10_000  # pods we deleted, remembered until the watch reports it

_SETTING_UP = frozenset({BizState.UNRESOLVED, BizState.RESOLVED})


def _installed_of(
    name: str, version: str, state: BizState, record: BizStateRecord | None
) -> InstalledModule:
    """From an inventory entry or an install answer's bizInfo, which carry the same records:
    the same change time from both, so a pod written Ready on the answer is not written
    again when the inventory lists its module."""
    # Older SOFAArk sends records without fields ({}): every field may be missing.
    reason = getattr(record, "reason", None)
    message = getattr(record, "message", None)
    change_time = getattr(record, "change_time", None)
    return InstalledModule(
        name=name,
        version=version,
        state=state,
        reason=str(reason) if reason and str(reason) != "UNDEFINE" else None,
        message=str(message) if message else None,
        change_time_ms=change_time if isinstance(change_time, int) and change_time > 0 else None,
    )


def _resource_version_newer(new: str, old: str) -> bool:
    """Whether an event is not older than what we hold (etcd revisions are integers)."""
    if new.isdigit() and old.isdigit():
        return int(new) >= int(old)
    return True


@dataclass
class ModuleState:
    """All module pods (by uid) and all bases' modules (by base identity).

    `pods` is read by anyone but written only by `add_pod` / `upsert_pod` / `remove_pod`,
    which keep the index by node that `pods_on` answers from.
    """

    # Not an argument: a pod goes in through add_pod, which indexes it.
    pods: dict[str, ModulePod] = field(default_factory=dict, init=False)
    base_modules: dict[str, BaseModules] = field(default_factory=lambda: defaultdict(BaseModules))
    listed: bool = False  # every module pod has been listed since start
    # node name -> uids of the module pods on it: every sync of a base asks for its pods,
    # and a scan of every module pod on every sync grows with the fleet.
    _on_node: dict[str, set[str]] = field(default_factory=dict, init=False, repr=False)
    # uid -> its place in `pods` (a count of pods added): pods_on answers in that order,
    # as a scan of `pods` does (the planner keeps the order of terminating pods).
    _order: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _added: int = field(default=0, init=False, repr=False)
    # Pods we deleted, until the watch says so: a late event must not bring one back.
    _removed: dict[str, None] = field(default_factory=dict, init=False, repr=False)

    def pods_on(self, node_name: str) -> list[ModulePod]:
        """The module pods on a node, in the order of `pods`."""
        uids = sorted(self._on_node.get(node_name, ()), key=self._order.__getitem__)
        return [self.pods[uid] for uid in uids]

    def upsert_pod(self, body: dict[str, Any], now: float) -> set[str]:
        """Record a pod; returns the node names whose plans may have changed."""
        pod = module_pod_of(body)
        if pod.uid in self._removed:
            return set()
        old = self.pods.get(pod.uid)
        if old is not None and not _resource_version_newer(
            pod.resource_version, old.resource_version
        ):
            return set()
        pod.seen = old.seen if old is not None else now
        if pod.deleting:
            pod.deletion_seen_at = old.deletion_seen_at if old and old.deletion_seen_at else now
        return self.add_pod(pod)

    def add_pod(self, pod: ModulePod) -> set[str]:
        """Hold `pod` in place of what was known of it (no checks: upsert_pod makes them;
        tests build pods directly). Returns the node names whose plans may have changed."""
        old = self.pods.get(pod.uid)
        if old is None:
            self._order[pod.uid] = self._added
            self._added += 1
        else:
            self._unindex(old)  # its node may have changed
        self.pods[pod.uid] = pod  # a known uid keeps its place in `pods`, as in `_order`
        if pod.node_name:
            self._on_node.setdefault(pod.node_name, set()).add(pod.uid)
        return {name for name in (pod.node_name, old.node_name if old else None) if name}

    def removed_by_us(self, uid: str) -> None:
        """We deleted the pod object: gone, whatever late event comes before the watch's."""
        self.remove_pod(uid)
        self._removed[uid] = None
        if len(self._removed) > REMOVED_REMEMBERED:
            del self._removed[next(iter(self._removed))]

    def remove_pod(self, uid: str) -> set[str]:
        self._removed.pop(uid, None)  # the watch says it is gone: nothing more will come
        pod = self.pods.pop(uid, None)
        if pod is None:
            return set()
        del self._order[uid]
        self._unindex(pod)
        return {pod.node_name} if pod.node_name else set()

    def _unindex(self, pod: ModulePod) -> None:
        if not pod.node_name:
            return
        uids = self._on_node.get(pod.node_name)
        if uids is None:
            return
        uids.discard(pod.uid)
        if not uids:
            del self._on_node[pod.node_name]  # no empty set per node that ever had a pod

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

    def set_inventory(self, identity: str, modules: tuple[SimpleBizInfo, ...]) -> bool:
        """Take a base's full module list; returns whether anything the planner reads
        changed (the periodic poll mostly hears what it heard last time)."""
        base = self.base_modules[identity]
        before = (base.inventory, self._bookkeeping_size(base))
        base.inventory = {
            info.key: _installed_of(info.name, info.version, info.state, info.latest_state_record)
            for info in modules
        }
        for key in list(base.installing):
            installed = base.inventory.get(key)
            # Still being set up (RESOLVED) is not an answer: it may vanish again.
            if installed is not None and installed.state not in _SETTING_UP:
                del base.installing[key]
        for key in list(base.uninstalling):
            if key not in base.inventory:
                del base.uninstalling[key]
        for key, failure in list(base.failures.items()):
            installed = base.inventory.get(key)
            if installed is not None and installed.state is not BizState.BROKEN:
                del base.failures[key]  # it is there after all (a retry, or a slow reply)
            elif installed is None and failure.broken:
                # Nothing BROKEN is there any more (the base restarted, or someone removed
                # it): it is installed again. A jar's wrong name:version stays a failure.
                del base.failures[key]
        for key in [k for k in base.strays if k not in base.inventory]:
            del base.strays[key]  # gone without us (a restart): nothing left to clean up
        # Bookkeeping of modules that are gone and not on their way in.
        for key in [k for k in base.urls if k not in base.inventory and k not in base.installing]:
            del base.urls[key]
        for key in [k for k in base.orphan_since if k not in base.inventory]:
            del base.orphan_since[key]
        return before != (base.inventory, self._bookkeeping_size(base))

    @staticmethod
    def _bookkeeping_size(base: BaseModules) -> tuple[int, ...]:
        # set_inventory only ever deletes from these: a size tells whether it did.
        return tuple(
            len(entries)
            for entries in (
                base.installing,
                base.uninstalling,
                base.failures,
                base.strays,
                base.urls,
                base.orphan_since,
            )
        )

    def apply_operation(
        self, identity: str, result: BizOperationResponse, now: float
    ) -> OperationOutcome | None:
        """Fold an install / uninstall reply into what we know of the base.

        A pod goes Ready only on what the base lists: an install reply adds a module to the
        inventory only when its `bizInfos` show that very name:version (the jar's manifest
        wins over the request, so a top-level SUCCESS alone proves nothing). A failed
        install leaves no entry (a failed download leaves nothing on the base; a failed
        start shows up BROKEN in the next inventory): it becomes an InstallFailure, which
        the planner retries with backoff.
        """
        if not result.biz_name or not result.biz_version:
            return None
        key = biz_key(result.biz_name, result.biz_version)
        base = self.base_modules[identity]
        if result.command == "installBiz":
            return self._install_answered(identity, base, key, result, now)
        if result.command != "uninstallBiz":
            return None
        response = result.response
        data = response.data
        code = data.code if data is not None else response.code
        ok = response.ok and (data is None or data.ok)
        # Only an uninstall we still wait for takes a module out: MQTT delivers at least
        # once, and a late copy must not take down the module installed again since.
        awaited = key in base.uninstalling
        if awaited and (ok or code == ClientResponseCode.NOT_FOUND_BIZ):
            base.uninstalling.pop(key, None)
            base.strays.pop(key, None)
            if base.inventory is not None:
                base.inventory.pop(key, None)
        if ok:
            gone = base.inventory is None or key not in base.inventory
            return OperationOutcome(
                key,
                False,
                True,
                "ModuleUninstalled",
                f"{key} uninstalled from base {identity}",
                report=awaited or gone,  # not a stale copy's word over what the base lists
            )
        return OperationOutcome(
            key,
            False,
            False,
            "UninstallFailed",
            bounded(f"{key} could not be uninstalled from base {identity}: {reply_text(result)}"),
        )

    def _install_answered(
        self,
        identity: str,
        base: BaseModules,
        key: str,
        result: BizOperationResponse,
        now: float,
    ) -> OperationOutcome:
        response = result.response
        data = response.data
        code = data.code if data is not None else response.code
        text = reply_text(result)
        url = base.urls.get(key, "")
        if code == ClientResponseCode.REPEAT_BIZ:
            declared = repeated_key(text)
            if declared is not None and declared != key:
                return self._mismatch(base, key, declared, url, now, installed_now=False)
            # It is there already: `installing` stays until the inventory lists it.
            return OperationOutcome(key, True, True, "", "", report=False)
        if response.ok and (data is None or data.ok):
            listed = {info.key: info for info in (data.biz_infos if data else None) or []}
            if key not in listed and listed:
                # The jar registered itself under its manifest's name:version.
                declared = next(
                    (k for k, info in listed.items() if info.biz_name == result.biz_name),
                    next(iter(listed)),
                )
                return self._mismatch(base, key, declared, url, now, installed_now=True)
            info = listed.get(key)
            if info is not None:
                base.installing.pop(key, None)
                base.failures.pop(key, None)
                if base.inventory is not None and info.biz_state is not None:
                    known = base.inventory.get(key)
                    if known is None or known.state is not info.biz_state:
                        base.inventory[key] = _installed_of(
                            info.biz_name,
                            info.biz_version,
                            info.biz_state,
                            info.latest_state_record,
                        )
            # Without bizInfos only the inventory can tell: `installing` stays until then.
            return OperationOutcome(
                key, True, True, "ModuleInstalled", f"{key} installed on base {identity}"
            )
        if data is None and lock_conflict(text):
            base.installing[key] = now  # an install of it still runs on the base: wait for it
            return OperationOutcome(key, True, False, "", "", report=False)
        base.installing.pop(key, None)
        base.abandoned.pop(key, None)  # it put nothing on the base
        whole = "\n".join(filter(None, (response.message, data.message if data else None)))
        if web_context_conflict(whole):
            reason, message = reasons.WEB_CONTEXT_IN_USE, web_context_message(key, whole)
        else:
            reason = reasons.INSTALL_FAILED
            message = bounded(f"{key} could not be installed on base {identity}: {text}")
        failure = base.failures.get(key)
        if failure is not None and failure.retry and failure.url == url:
            failure.attempts += 1
            failure.at = now
            failure.reason, failure.message = reason, message
        else:
            base.failures[key] = InstallFailure(reason, message, url, now)
        return OperationOutcome(key, True, False, reason, message)

    @staticmethod
    def _mismatch(
        base: BaseModules, key: str, declared: str, url: str, now: float, installed_now: bool
    ) -> OperationOutcome:
        """The jar is another name:version than the pod says: no retry until the spec changes.

        Retrying the same jar can only give the same answer. What our own install put on the
        base under the jar's name:version is a stray, uninstalled unless a pod wants it.
        """
        base.installing.pop(key, None)
        if installed_now:  # (a module that was there already answers REPEAT_BIZ instead)
            base.strays[declared] = key
            base.urls[declared] = url
        message = mismatch_message(url, declared, key)
        base.failures[key] = InstallFailure(
            reasons.VERSION_MISMATCH, message, url, now, retry=False
        )
        return OperationOutcome(key, True, False, reasons.VERSION_MISMATCH, message)

    def apply_batch(self, identity: str, result: BatchInstallBizResponse) -> None:
        """A base installed its baseline: what it reports joins the inventory."""
        base = self.base_modules[identity]
        data = result.response.data
        if base.inventory is None or data is None:
            return
        for url, entry in (data.biz_url_to_response or {}).items():
            for info in entry.biz_infos or []:  # may be absent: guard, unlike the Go code
                if info.biz_state is not None:
                    base.inventory[info.key] = _installed_of(
                        info.biz_name, info.biz_version, info.biz_state, info.latest_state_record
                    )
                    base.urls[info.key] = url  # the jar it came from

    def forget_base(self, identity: str) -> None:
        """The base is gone: everything kept about its modules goes with it (its pods stay
        until they are deleted: they are indexed by node, not by base)."""
        self.base_modules.pop(identity, None)
