"""Arklet's command handlers for a simulated base, shared by the HTTP API and MQTT.

Each handler returns arklet's ``Output`` (:class:`ArkletResponse`) or raises
:class:`JavaException`; each transport turns that exception into its own error form
(HTTP: ``CMD_PROCESS_INTERNAL_ERROR`` + stack trace; MQTT: ``FAILED`` + stack trace).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel

from module_controller.protocol.arklet import (
    INSTALL_NOT_SUCCESS_TEXT,
    SWITCH_NOT_SUCCESS_TEXT,
    UNINSTALL_NOT_SUCCESS_TEXT,
    ArkletCommand,
    ArkletResponse,
    CommandHelp,
    ResponseCode,
    lock_conflict_text,
)
from module_controller.protocol.biz import (
    BIZ_STOP_ILLEGAL_STATE_TEXT,
    BatchInstallData,
    BatchInstallRequest,
    BizInfo,
    BizModel,
    ClientResponse,
    ClientResponseCode,
    InstallStrategy,
    biz_key,
)
from module_controller.protocol.codec import decode
from module_controller.protocol.errors import ProtocolError
from module_controller.protocol.health import Health, HealthBizInfo, HealthData, HealthRequest
from module_controller.protocol.states import BizState, parse_biz_state
from module_controller.simulator import health as sim_health
from module_controller.simulator import jars
from module_controller.simulator.ark import ArkContainer, JavaException
from module_controller.simulator.config import BaseConfig
from module_controller.simulator.faults import Faults

M = TypeVar("M", bound=BaseModel)

VALIDATION_EXCEPTION = (
    "com.alipay.sofa.koupleless.arklet.core.common.exception.CommandValidationException"
)
# What arklet's handlers wrap SOFAArk's exceptions in (its message is the cause's toString).
ARKLET_RUNTIME_EXCEPTION = (
    "com.alipay.sofa.koupleless.arklet.core.common.exception.ArkletRuntimeException"
)
HELP = {
    ArkletCommand.HELP: "list all supported commands",
    ArkletCommand.INSTALL_BIZ: "install one ark biz",
    ArkletCommand.BATCH_INSTALL_BIZ: "batch install biz",
    ArkletCommand.UNINSTALL_BIZ: "uninstall one ark biz",
    ArkletCommand.SWITCH_BIZ: "switch one ark biz",
    ArkletCommand.QUERY_ALL_BIZ: "query all ark biz(excluding master biz)",
    ArkletCommand.HEALTH: "get health info",
    ArkletCommand.QUERY_BIZ_OPS: "query biz operation status",
}


class Arklet:
    """The command surface of one base, on top of its :class:`ArkContainer`."""

    def __init__(
        self,
        config: BaseConfig,
        container: ArkContainer,
        faults: Faults,
        rng: random.Random,
    ) -> None:
        self._config = config
        self._container = container
        self._faults = faults
        self._rng = rng
        self._started = time.monotonic()
        # BizOpsCommandCoordinator: name:version -> the command currently running on it.
        self._running: dict[str, str] = {}
        self._async_ops: dict[str, dict[str, Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def execute(self, command: ArkletCommand, body: dict[str, Any]) -> ArkletResponse[Any]:
        """Run any arklet command from a decoded JSON body (the HTTP API's entry point)."""
        handlers: dict[ArkletCommand, Callable[[dict[str, Any]], Awaitable[ArkletResponse[Any]]]]
        handlers = {
            ArkletCommand.HELP: self._help,
            ArkletCommand.INSTALL_BIZ: lambda b: self.install(_decode(BizModel, b)),
            ArkletCommand.BATCH_INSTALL_BIZ: lambda b: self.batch_install(
                _decode(BatchInstallRequest, b)
            ),
            ArkletCommand.UNINSTALL_BIZ: lambda b: self.uninstall(_decode(BizModel, b)),
            ArkletCommand.SWITCH_BIZ: lambda b: self.switch(_decode(BizModel, b)),
            ArkletCommand.QUERY_ALL_BIZ: self._query_all,
            ArkletCommand.HEALTH: lambda b: self._health(_decode(HealthRequest, b)),
            ArkletCommand.QUERY_BIZ_OPS: self._query_biz_ops,
        }
        return await handlers[command](body)

    # -- module operations ------------------------------------------------------------------

    async def install(self, request: BizModel) -> ArkletResponse[Any]:
        name, version, url = self._validate_install(request)
        if request.async_:
            return self._start_async(ArkletCommand.INSTALL_BIZ, request)
        conflict = self._lock(name, version, ArkletCommand.INSTALL_BIZ)
        if conflict is not None:
            return conflict
        try:
            response = await self._install_locked(name, version, url, request.install_strategy)
        finally:
            self._unlock(name, version)
        return _answer(response, INSTALL_NOT_SUCCESS_TEXT)

    async def uninstall(self, request: BizModel) -> ArkletResponse[Any]:
        name, version = _name_and_version(request)
        if request.async_:
            return self._start_async(ArkletCommand.UNINSTALL_BIZ, request)
        if self._running.get(biz_key(name, version)) == ArkletCommand.INSTALL_BIZ:
            # Observed on a real base (runtime 2.1.11): an uninstall that meets the biz in the
            # middle of its install fails in SOFAArk's BizModel.stop() assertion, not with
            # the coordinator's conflict text; the controller retries later.
            raise JavaException(
                f"java.lang.IllegalArgumentException: {BIZ_STOP_ILLEGAL_STATE_TEXT}",
                java_class=ARKLET_RUNTIME_EXCEPTION,
            )
        conflict = self._lock(name, version, ArkletCommand.UNINSTALL_BIZ)
        if conflict is not None:
            return conflict
        try:
            fails = self._faults.uninstall_fails(name, version, self._rng)
            response = self._container.uninstall(name, version, stop_fails=fails)
        finally:
            self._unlock(name, version)
        return _answer(response, UNINSTALL_NOT_SUCCESS_TEXT)

    async def switch(self, request: BizModel) -> ArkletResponse[Any]:
        name, version = _name_and_version(request)
        conflict = self._lock(name, version, ArkletCommand.SWITCH_BIZ)
        if conflict is not None:
            return conflict
        try:
            response = self._container.switch(name, version)
        finally:
            self._unlock(name, version)
        return _answer(response, SWITCH_NOT_SUCCESS_TEXT)

    async def batch_install(self, request: BatchInstallRequest) -> ArkletResponse[Any]:
        """Install a list in parallel (all simulated jars share one priority group)."""
        started = time.monotonic()
        results = await asyncio.gather(*(self._batch_entry(biz) for biz in request.biz_list))
        by_url = dict(results)
        all_ok = all(response.ok for response in by_url.values())
        code = ClientResponseCode.SUCCESS if all_ok else ClientResponseCode.FAILED
        data = BatchInstallData(
            code=code,
            message="batch install success" if all_ok else "batch install failed",
            elapsed_space=int((time.monotonic() - started) * 1000),
            biz_url_to_response=by_url,
        )
        output_code = ResponseCode.SUCCESS if all_ok else ResponseCode.FAILED
        return ArkletResponse(code=output_code, data=data)

    # -- queries ----------------------------------------------------------------------------

    def query_all(self) -> list[BizInfo]:
        return [biz.to_info() for biz in self._container.bizs()]

    def health(self, request: HealthRequest | None = None) -> ArkletResponse[Health]:
        if self._faults.health_code != ResponseCode.SUCCESS:
            return ArkletResponse(
                code=self._faults.health_code, message="simulated health check failure"
            )
        request = request or HealthRequest()
        bizs = self._container.bizs()
        master = HealthBizInfo(
            biz_name=self._config.name,
            biz_version=self._config.version,
            biz_state=parse_biz_state(self._faults.master_biz_state),
            web_context_path=self._config.master_web_context_path,
        )
        listed = [master] + [
            HealthBizInfo(
                biz_name=biz.name,
                biz_version=biz.version,
                biz_state=biz.state,
                web_context_path=biz.name,
            )
            for biz in bizs
        ]
        data = HealthData()
        kind = (request.type or "").lower()
        if kind in ("", "system"):
            metrics = {metric.lower() for metric in request.metrics or ["cpu", "jvm"]}
            if "jvm" in metrics:
                data.jvm = sim_health.jvm_info(self._started, len(bizs))
            if "cpu" in metrics:
                data.cpu = sim_health.cpu_info()
        if kind in ("", "system", "biz"):
            data.master_biz_info = master
        if kind in ("", "biz"):
            data.biz_list_info = [
                item
                for item in listed
                if not request.biz_name
                or (item.biz_name == request.biz_name and item.biz_version == request.biz_version)
            ]
        if kind in ("", "plugin"):
            data.plugin_list_info = sim_health.plugins()
        return ArkletResponse(code=ResponseCode.SUCCESS, data=Health(health_data=data))

    # -- internals --------------------------------------------------------------------------

    def _validate_install(self, request: BizModel) -> tuple[str, str, str]:
        """InstallBizHandler.validateInput: bizUrl with a scheme; name/version both or none."""
        url = (request.biz_url or "").strip()
        if not url:
            raise JavaException("bizUrl should not be blank", java_class=VALIDATION_EXCEPTION)
        if bool(request.biz_name) != bool(request.biz_version):
            raise JavaException(
                "bizName and bizVersion should be both blank or both not blank",
                java_class=VALIDATION_EXCEPTION,
            )
        jars.validate_url(url)
        if request.biz_name and request.biz_version:
            return request.biz_name, request.biz_version, url
        guessed = jars.name_version_from_url(url)
        if guessed is None:
            raise JavaException(
                f"java.lang.IllegalArgumentException: cannot read Ark-Biz-Name from {url}"
            )
        return guessed[0], guessed[1], url

    async def _install_locked(
        self, name: str, version: str, url: str, strategy: str | None
    ) -> ClientResponse:
        delay = self._faults.install_delay_for(name)
        if delay > 0:
            await asyncio.sleep(delay)
        # A failed download raises before the container is touched: like a real base, it
        # leaves nothing behind (the biz never shows in queryAllBiz / simpleBiz).
        if self._faults.download_fails(name, version):
            raise JavaException(f"java.io.FileNotFoundException: {url}")
        if self._config.fetch_jars:
            jar = await jars.fetch(url)
            # The jar's manifest wins over the request, as on a real base: the biz is
            # registered (and REPEAT_BIZ is judged) under Ark-Biz-Name / Ark-Biz-Version,
            # while the bizOperation reply still echoes the request's name and version.
            declared = jars.manifest_name_version(jar)
            if declared is not None:
                name, version = declared
        if strategy == InstallStrategy.UNINSTALL_THEN_INSTALL:
            for other in self._container.bizs():
                if other.name == name and other.version != version:
                    self._container.uninstall(other.name, other.version, stop_fails=False)
        start_fails = self._faults.start_fails(name, version, self._rng)
        return self._container.install(name, version, url, start_fails=start_fails)

    async def _batch_entry(self, request: BizModel) -> tuple[str, ClientResponse]:
        url = request.biz_url or ""
        name, version = request.biz_name or "", request.biz_version or ""
        try:
            name, version, url = self._validate_install(request)
            conflict = self._lock(name, version, ArkletCommand.INSTALL_BIZ)
            if conflict is not None:
                response = ClientResponse(code=ClientResponseCode.FAILED, message=conflict.message)
            else:
                try:
                    response = await self._install_locked(name, version, url, None)
                finally:
                    self._unlock(name, version)
        except JavaException as exc:
            response = ClientResponse(code=ClientResponseCode.FAILED, message=exc.stack_trace())
        return url, self._short_infos(response, name, version)

    def _short_infos(self, response: ClientResponse, name: str, version: str) -> ClientResponse:
        """Batch entries carry ``bizInfos:[{bizName,bizVersion,bizState}]``.

        The Go controller indexes ``bizInfos[0]`` unguarded, so every entry carries one (the
        biz as it stands, BROKEN when absent) unless the test asks for the omission.
        """
        if self._faults.batch_omit_biz_infos:
            return response.model_copy(update={"biz_infos": None})
        if response.biz_infos:  # registered under the jar manifest's name and version
            name, version = response.biz_infos[0].biz_name, response.biz_infos[0].biz_version
        biz = self._container.get(name, version)
        state = biz.state if biz is not None else BizState.BROKEN
        info = BizInfo(biz_name=name, biz_version=version, biz_state=state)
        return response.model_copy(update={"biz_infos": [info]})

    def _lock(self, name: str, version: str, command: str) -> ArkletResponse[Any] | None:
        key = biz_key(name, version)
        running = self._running.get(key)
        if running is not None:
            return ArkletResponse(
                code=ResponseCode.FAILED,
                message=lock_conflict_text(name, version, command, running),
            )
        self._running[key] = command
        return None

    def _unlock(self, name: str, version: str) -> None:
        self._running.pop(biz_key(name, version), None)

    def _start_async(self, command: ArkletCommand, request: BizModel) -> ArkletResponse[Any]:
        """``async: true``: run in the background, answer with a ProcessRecord at once."""
        request_id = request.request_id
        if not request_id:
            raise JavaException(
                "requestId should not be blank when async is true",
                java_class=VALIDATION_EXCEPTION,
            )
        if request_id in self._async_ops:
            return ArkletResponse(
                code=ResponseCode.FAILED, message=f"requestId {request_id} already exists"
            )
        record: dict[str, Any] = {
            "requestId": request_id,
            "arkBizMeta": {
                "bizName": request.biz_name,
                "bizVersion": request.biz_version,
                "bizUrl": request.biz_url,
            },
            "threadName": f"arklet-async-{len(self._async_ops) + 1}",
            "status": "INITIALIZED",
            "startTime": int(time.time() * 1000),
        }
        self._async_ops[request_id] = record
        sync_request = request.model_copy(update={"async_": False})
        task = asyncio.create_task(self._run_async(command, sync_request, record))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return ArkletResponse(code=ResponseCode.SUCCESS, data=dict(record))

    async def _run_async(
        self, command: ArkletCommand, request: BizModel, record: dict[str, Any]
    ) -> None:
        record["status"] = "EXECUTING"
        try:
            if command is ArkletCommand.INSTALL_BIZ:
                output = await self.install(request)
            else:
                output = await self.uninstall(request)
            record["status"] = "SUCCEEDED" if output.ok else "FAILED"
            record["message"] = output.message
        except JavaException as exc:
            record["status"] = "FAILED"
            record["message"] = exc.message
            record["errorCode"] = "FAILED"
        end = int(time.time() * 1000)
        record["endTime"] = end
        record["elapsedTime"] = end - record["startTime"]

    async def _help(self, body: dict[str, Any]) -> ArkletResponse[Any]:
        entries = [CommandHelp(id=command.value, desc=desc) for command, desc in HELP.items()]
        return ArkletResponse(code=ResponseCode.SUCCESS, data=entries)

    async def _query_all(self, body: dict[str, Any]) -> ArkletResponse[Any]:
        return ArkletResponse(code=ResponseCode.SUCCESS, data=self.query_all())

    async def _health(self, request: HealthRequest) -> ArkletResponse[Any]:
        return self.health(request)

    async def _query_biz_ops(self, body: dict[str, Any]) -> ArkletResponse[Any]:
        request_id = body.get("requestId")
        if not isinstance(request_id, str) or not request_id:
            raise JavaException("requestId should not be blank", java_class=VALIDATION_EXCEPTION)
        record = self._async_ops.get(request_id)
        if record is None:
            return ArkletResponse(
                code=ResponseCode.FAILED, message=f"requestId {request_id} not found"
            )
        return ArkletResponse(code=ResponseCode.SUCCESS, data=dict(record))


def _name_and_version(request: BizModel) -> tuple[str, str]:
    """Uninstall and switch need both; arklet refuses the request otherwise."""
    if not request.biz_name or not request.biz_version:
        raise JavaException(
            "bizName and bizVersion should not be blank", java_class=VALIDATION_EXCEPTION
        )
    return request.biz_name, request.biz_version


def _answer(response: ClientResponse, failure_text: str) -> ArkletResponse[Any]:
    """Arklet's envelope around SOFAArk's reply: SUCCESS, or FAILED with its fixed text."""
    if response.ok:
        return ArkletResponse(code=ResponseCode.SUCCESS, data=response)
    return ArkletResponse(code=ResponseCode.FAILED, message=failure_text, data=response)


def _decode(model: type[M], body: dict[str, Any]) -> M:
    """Decode a command body; a shape error is what arklet reports as an internal error."""
    try:
        return decode(model, body)
    except ProtocolError as exc:
        raise JavaException(
            f"com.alibaba.fastjson.JSONException: {exc.reason}", java_class=VALIDATION_EXCEPTION
        ) from exc
