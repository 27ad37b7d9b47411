"""The SOFAArk side of a base: its biz table and the state machine of spec §1.5.

Synchronous and transport-free: the Arklet layer (``arklet.py``) adds locking, delays and
downloads around it, the tunnels only carry its results.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from module_controller.protocol.biz import (
    MASTER_BIZ_UNINSTALL_TEXT,
    BizInfo,
    BizStateRecord,
    ClientResponse,
    ClientResponseCode,
    SimpleBizInfo,
    biz_key,
    install_success_text,
    repeat_biz_text,
    uninstall_not_found_text,
    uninstall_success_text,
)
from module_controller.protocol.envelopes import now_ms
from module_controller.protocol.states import BizState, StateChangeReason

ARK_RUNTIME_EXCEPTION = "com.alipay.sofa.ark.exception.ArkRuntimeException"


class JavaException(Exception):
    """What a real base would throw; becomes an internal-error reply with a stack trace.

    ``message`` is Java's ``getMessage()`` of the exception arklet reports; ``java_class`` is
    the class shown at the top of the stack trace.
    """

    def __init__(self, message: str, java_class: str = ARK_RUNTIME_EXCEPTION) -> None:
        super().__init__(message)
        self.message = message
        self.java_class = java_class

    def stack_trace(self) -> str:
        frames = (
            "com.alipay.sofa.ark.container.service.biz.BizManagerServiceImpl.start",
            "com.alipay.sofa.koupleless.arklet.core.ops.UnifiedOperationServiceImpl.install",
            "com.alipay.sofa.koupleless.arklet.core.command.builtin.handler.InstallBizHandler"
            ".handle",
            "java.lang.Thread.run",
        )
        lines = [f"{self.java_class}: {self.message}"]
        lines += [f"\tat {frame}(Simulated.java:1)" for frame in frames]
        return "\n".join(lines)


@dataclass
class Biz:
    """One installed module with its state history."""

    name: str
    version: str
    url: str
    state: BizState = BizState.UNRESOLVED
    records: list[BizStateRecord] = field(default_factory=list)
    priority: int = 100

    @property
    def key(self) -> str:
        return biz_key(self.name, self.version)

    @property
    def main_class(self) -> str:
        return f"com.example.{self.name.replace('-', '_')}.Application"

    @property
    def latest_record(self) -> BizStateRecord | None:
        return max(self.records, key=lambda record: record.change_time, default=None)

    def to_info(self, *, with_records: bool = True) -> BizInfo:
        return BizInfo(
            biz_name=self.name,
            biz_version=self.version,
            biz_state=self.state,
            main_class=self.main_class,
            web_context_path=self.name,
            identity=self.key,
            priority=self.priority,
            biz_state_records=list(self.records) if with_records else None,
        )

    def to_simple(self) -> SimpleBizInfo:
        return SimpleBizInfo(
            name=self.name,
            version=self.version,
            state=self.state,
            latest_state_record=self.latest_record,
        )


class ArkContainer:
    """The biz table of one base. ``on_change`` is called after every state change."""

    def __init__(
        self,
        master_name: str,
        master_version: str,
        *,
        activate_new_module: bool,
        auto_uninstall_when_failed: bool,
        remove_biz_when_stop_failed: bool,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.master_name = master_name
        self.master_version = master_version
        self.activate_new_module = activate_new_module
        self.auto_uninstall_when_failed = auto_uninstall_when_failed
        self.remove_biz_when_stop_failed = remove_biz_when_stop_failed
        self._on_change = on_change
        self._bizs: dict[str, Biz] = {}
        self._last_change_ms = 0

    # -- reading ----------------------------------------------------------------------------

    def bizs(self) -> list[Biz]:
        """All modules (the master biz is never listed), in installation order."""
        return list(self._bizs.values())

    def get(self, name: str, version: str) -> Biz | None:
        return self._bizs.get(biz_key(name, version))

    def is_master(self, name: str, version: str) -> bool:
        return name == self.master_name and version == self.master_version

    # -- operations -------------------------------------------------------------------------

    def install(self, name: str, version: str, url: str, *, start_fails: bool) -> ClientResponse:
        """Register and start a biz. Raises :class:`JavaException` when start fails."""
        started = time.monotonic()
        if biz_key(name, version) in self._bizs or self.is_master(name, version):
            return ClientResponse(
                code=ClientResponseCode.REPEAT_BIZ,
                message=repeat_biz_text(name, version),
                elapsed_space=0,
            )
        biz = Biz(name=name, version=version, url=url)
        self._bizs[biz.key] = biz
        self._transition(biz, BizState.RESOLVED, StateChangeReason.CREATED)
        if start_fails:
            error = JavaException(
                f"java.lang.IllegalStateException: simulated start failure of {biz.key}"
            )
            self._transition(
                biz, BizState.BROKEN, StateChangeReason.INSTALL_FAILED, error.stack_trace()
            )
            if self.auto_uninstall_when_failed:
                self._transition(biz, BizState.STOPPED, StateChangeReason.STOPPED)
                self._remove(biz)
            raise error
        active = [
            other
            for other in self._bizs.values()
            if other.name == name and other is not biz and other.state is BizState.ACTIVATED
        ]
        if not active:
            self._transition(biz, BizState.ACTIVATED, StateChangeReason.STARTED)
        elif self.activate_new_module:
            self._transition(biz, BizState.ACTIVATED, StateChangeReason.STARTED)
            for other in active:
                self._transition(other, BizState.DEACTIVATED, StateChangeReason.SWITCHED)
        else:
            self._transition(
                biz, BizState.DEACTIVATED, StateChangeReason.STARTED, "start but is deactivated"
            )
        cost_ms = int((time.monotonic() - started) * 1000)
        return ClientResponse(
            code=ClientResponseCode.SUCCESS,
            message=install_success_text(name, version, cost_ms, time.strftime("%H:%M:%S,000")),
            biz_infos=[biz.to_info()],
            elapsed_space=10_485_760,
        )

    def uninstall(self, name: str, version: str, *, stop_fails: bool) -> ClientResponse:
        """Stop and unregister a biz. Raises :class:`JavaException` when stop fails."""
        if self.is_master(name, version):
            return ClientResponse(code=ClientResponseCode.FAILED, message=MASTER_BIZ_UNINSTALL_TEXT)
        biz = self.get(name, version)
        if biz is None:
            return ClientResponse(
                code=ClientResponseCode.NOT_FOUND_BIZ,
                message=uninstall_not_found_text(name, version),
            )
        if biz.state is BizState.ACTIVATED:
            self._transition(biz, BizState.DEACTIVATED, StateChangeReason.KILLING)
        if stop_fails:
            error = JavaException(
                f"java.lang.IllegalStateException: simulated stop failure of {biz.key}"
            )
            self._transition(
                biz, BizState.BROKEN, StateChangeReason.UN_INSTALL_FAILED, error.stack_trace()
            )
            if self.remove_biz_when_stop_failed:
                self._remove(biz)
            raise error
        self._transition(biz, BizState.STOPPED, StateChangeReason.STOPPED)
        self._remove(biz)
        return ClientResponse(
            code=ClientResponseCode.SUCCESS, message=uninstall_success_text(name, version)
        )

    def switch(self, name: str, version: str) -> ClientResponse:
        """Make ``name:version`` the active version of its name."""
        biz = self.get(name, version)
        if biz is None:
            return ClientResponse(
                code=ClientResponseCode.NOT_FOUND_BIZ,
                message=f"Switch biz: {biz_key(name, version)} not found.",
            )
        if biz.state not in (BizState.ACTIVATED, BizState.DEACTIVATED):
            return ClientResponse(
                code=ClientResponseCode.ILLEGAL_STATE_BIZ,
                message=f"Switch biz: {biz.key} state {biz.state.to_string} is illegal.",
            )
        for other in self._bizs.values():
            if other.name == name and other is not biz and other.state is BizState.ACTIVATED:
                self._transition(other, BizState.DEACTIVATED, StateChangeReason.SWITCHED)
        if biz.state is not BizState.ACTIVATED:
            self._transition(biz, BizState.ACTIVATED, StateChangeReason.SWITCHED)
        return ClientResponse(
            code=ClientResponseCode.SUCCESS, message=f"Switch biz: {biz.key} is activated."
        )

    def clear(self) -> None:
        """Forget every module: the JVM restarted."""
        self._bizs.clear()
        self._on_change()

    # -- internals --------------------------------------------------------------------------

    def _transition(
        self, biz: Biz, state: BizState, reason: StateChangeReason, message: str = ""
    ) -> None:
        # changeTime must grow strictly: the controller picks the latest record by it, and
        # RESOLVED -> ACTIVATED easily happens within one millisecond here.
        change_time = max(now_ms(), self._last_change_ms + 1)
        self._last_change_ms = change_time
        biz.state = state
        biz.records.append(
            BizStateRecord(change_time=change_time, state=state, reason=reason, message=message)
        )
        self._on_change()

    def _remove(self, biz: Biz) -> None:
        self._bizs.pop(biz.key, None)
        self._on_change()
