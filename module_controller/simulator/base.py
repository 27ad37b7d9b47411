"""One simulated Koupleless base: identity, biz table, Arklet, MQTT and HTTP tunnels, faults.

This is also the async API tests use: start/stop/crash/restart a base, read its module table
and the commands it received, inject faults (``base.faults``), wait for a state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from module_controller.protocol.arklet import ArkletCommand, ArkletResponse, ResponseCode
from module_controller.protocol.biz import Baseline, BatchInstallRequest, BizModel, ClientResponse
from module_controller.protocol.codec import encode
from module_controller.protocol.envelopes import Envelope, now_ms
from module_controller.protocol.errors import ProtocolError
from module_controller.protocol.health import HealthRequest
from module_controller.protocol.heartbeat import BaseMetadata, BaseStatus
from module_controller.protocol.messages import decode_command
from module_controller.protocol.operations import BatchInstallBizResponse, BizOperationResponse
from module_controller.protocol.states import BizState, parse_biz_state
from module_controller.protocol.topics import BaseTopic, base_topic
from module_controller.simulator.ark import ArkContainer, Biz, JavaException
from module_controller.simulator.arklet import Arklet
from module_controller.simulator.config import BaseConfig
from module_controller.simulator.faults import Faults
from module_controller.simulator.http_api import ArkletHttpServer
from module_controller.simulator.http_tunnel import run_http_heartbeat
from module_controller.simulator.mqtt_tunnel import BaseMqttLink
from module_controller.tasks import cancel_and_wait

log = logging.getLogger("module_controller.simulator")

COMMAND_LOG_SIZE = 200  # per base; bounded so 1,000 long-running bases stay small
MQTT_WORKERS = 10  # the runtime's MQTT worker pool (5-10 threads)
REORDER_FLUSH_S = 1.0  # a held-back reply goes out at the latest after this


@dataclass(frozen=True)
class ReceivedCommand:
    """One command as the base received it."""

    transport: str  # "mqtt" or "http"
    command: str  # installBiz, health, baseline, ... (HTTP: the path)
    payload: Any  # decoded JSON, or the raw text when it did not decode
    at: float  # time.time()
    malformed: bool = False


class SimulatedBase:
    def __init__(self, config: BaseConfig, faults: Faults | None = None, seed: int | None = None):
        self.config = config
        self.faults = faults or Faults()
        self._rng = random.Random(seed)
        self._changed = asyncio.Event()
        self.container = ArkContainer(
            config.name,
            config.version,
            activate_new_module=config.activate_new_module,
            auto_uninstall_when_failed=config.auto_uninstall_when_failed,
            remove_biz_when_stop_failed=config.remove_biz_when_stop_failed,
            on_change=self._notify,
        )
        self.arklet = Arklet(config, self.container, self.faults, self._rng)
        self.identity = ""
        self.port = 0
        self.commands: deque[ReceivedCommand] = deque(maxlen=COMMAND_LOG_SIZE)
        self._http: ArkletHttpServer | None = None
        self._mqtt: BaseMqttLink | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._workers = asyncio.Semaphore(MQTT_WORKERS)
        self._held_reply: tuple[str, bytes] | None = None
        self._mqtt_task: asyncio.Task[Any] | None = None
        self.running = False

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def label(self) -> str:
        # IP-style identities are the address already; UUIDs are shortened for log lines.
        if self.identity == self.config.ip:
            return f"{self.config.name}@{self.config.ip}"
        return f"{self.config.name}@{self.config.ip}[{self.identity[:8]}]"

    async def start(self) -> None:
        """Start as a fresh JVM: new identity (unless fixed), empty biz table."""
        if self.running:
            raise RuntimeError(f"{self.label} is already running")
        self.identity = self.config.resolve_identity()
        if self.config.mqtt is not None:
            # Made first: it reads the TLS files, and a bad one must fail before anything
            # listens.
            self._mqtt = BaseMqttLink(
                self.config.mqtt,
                self.config.env,
                self.identity,
                self._on_mqtt_message,
                self._on_mqtt_connect,
                self.label,
                on_disconnect=self._notify,
            )
        if self.config.http_api:
            self._http = ArkletHttpServer(
                self.arklet, lambda: self.identity, self._record_http_request, self._http_hangs
            )
            self.port = await self._http.start(self.config.ip, self.config.port)
        if self._mqtt is not None:
            self._mqtt_task = self._spawn(self._mqtt.run())
        if self.config.http_heartbeat_endpoint:
            self._spawn(
                run_http_heartbeat(
                    self.config.http_heartbeat_endpoint,
                    self._http_heartbeat_status,
                    self.config.http_heartbeat_period_s,
                    self.config.ip,
                )
            )
        self.running = True
        log.info("%s started (env %s, arklet port %s)", self.label, self.config.env, self.port)

    async def stop(self) -> None:
        """Shut down cleanly (MQTT DISCONNECT sent). Real bases send no goodbye message."""
        await self._shutdown(crash=False)

    async def crash(self) -> None:
        """Die without a goodbye: the TCP connection drops, no MQTT DISCONNECT."""
        await self._shutdown(crash=True)

    async def restart(self, *, new_identity: bool = False, crash: bool = True) -> None:
        """A JVM restart: modules are gone; identity kept unless ``new_identity``.

        With the same identity the broker replays retained commands to the new process.
        """
        await self._shutdown(crash=crash)
        if new_identity:
            self.config.identity = None
        elif self.identity:
            self.config.identity = self.identity
        await self.start()

    async def graceful_exit(self) -> None:
        """The Go mocks' goodbye: one heartbeat with state DEACTIVATED, then stop."""
        await self._publish(
            BaseTopic.HEART,
            self._envelope(self._status(port=0, state=BizState.DEACTIVATED)),
        )
        await self.stop()

    async def _shutdown(self, *, crash: bool) -> None:
        if not self.running:
            return
        self.running = False
        if crash and self._mqtt is not None and self._mqtt_task is not None:
            self._mqtt.abort()
            # Let the tunnel notice the dead socket itself, so nothing tries a DISCONNECT.
            await asyncio.wait({self._mqtt_task}, timeout=2.0)
        await cancel_and_wait(list(self._tasks))
        self._tasks.clear()
        if self._http is not None:
            await self._http.stop()
            self._http = None
        self._mqtt = None
        self._mqtt_task = None
        self._held_reply = None
        self.container.clear()
        log.info("%s %s", self.label, "crashed" if crash else "stopped")

    # -- reading state (test API) -----------------------------------------------------------

    def modules(self) -> list[Biz]:
        return self.container.bizs()

    def module(self, name: str, version: str) -> Biz | None:
        return self.container.get(name, version)

    def received(self, command: str | None = None) -> list[ReceivedCommand]:
        return [entry for entry in self.commands if command is None or entry.command == command]

    @property
    def mqtt_connections(self) -> int:
        """How many times the current process connected to the broker."""
        return 0 if self._mqtt is None else self._mqtt.connections

    @property
    def connected(self) -> bool:
        return self._mqtt is not None and self._mqtt.connected.is_set()

    async def wait_for(
        self, predicate: Callable[[], bool], timeout: float, what: str = "condition"
    ) -> None:
        """Wait until ``predicate()`` holds; on timeout raise with the base's current state."""
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.label}: no {what} after {timeout}s; {self.describe()}")
            event = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)

    async def wait_for_module(
        self, name: str, version: str, state: BizState | str | None, timeout: float = 10.0
    ) -> None:
        """Wait until ``name:version`` is in ``state`` (None: until it is gone)."""
        wanted = None if state is None else parse_biz_state(state)

        def reached() -> bool:
            biz = self.module(name, version)
            return biz is None if wanted is None else biz is not None and biz.state is wanted

        shown = "absent" if wanted is None else wanted.value
        await self.wait_for(reached, timeout, f"{name}:{version} {shown}")

    async def wait_for_command(self, command: str, count: int = 1, timeout: float = 10.0) -> None:
        await self.wait_for(
            lambda: len(self.received(command)) >= count, timeout, f"{count}x {command}"
        )

    async def wait_connected(self, timeout: float = 10.0) -> None:
        await self.wait_for(lambda: self.connected, timeout, "MQTT connection")

    def describe(self) -> str:
        modules = ", ".join(f"{biz.key}={biz.state.value}" for biz in self.modules()) or "none"
        recent = ", ".join(entry.command for entry in list(self.commands)[-10:]) or "none"
        return f"connected={self.connected} modules: {modules}; last commands: {recent}"

    def _notify(self) -> None:
        # Wake every waiter, then arm a fresh event for the next change.
        self._changed.set()
        self._changed = asyncio.Event()

    # -- MQTT: incoming ---------------------------------------------------------------------

    async def _on_mqtt_connect(self, first: bool) -> None:
        self._notify()
        if first:
            # Once per process, before the first heartbeat (spec §2.5).
            metadata = self._metadata()
            await self._publish(BaseTopic.QUERY_BASELINE, self._envelope(metadata))
            self._spawn(self._mqtt_heartbeat_loop())

    async def _on_mqtt_message(self, topic: str, payload: bytes) -> None:
        name = topic.rsplit("/", 1)[-1]
        if not payload:
            # A zero-length retained message only clears the broker's copy.
            self._record("mqtt", name, "", malformed=True)
            log.info("%s: empty message on %s ignored", self.label, topic)
            return
        try:
            parsed, body = decode_command(topic, payload)
        except ProtocolError as exc:
            self._record("mqtt", name, payload.decode("utf-8", "replace"), malformed=True)
            log.warning("%s: dropped malformed command on %s: %s", self.label, topic, exc)
            return
        self._record("mqtt", name, json.loads(payload))
        log.info("%s received %s %s", self.label, name, payload.decode("utf-8", "replace"))
        if name in self.faults.ignore_commands:
            return
        if parsed.base_kind is BaseTopic.BASELINE:
            assert isinstance(body, Baseline)
            self._spawn(self._work(self._apply_baseline(body)))
        elif parsed.command is ArkletCommand.HEALTH:
            assert isinstance(body, HealthRequest)
            self._spawn(self._work(self._answer_health(body)))
        elif parsed.command is ArkletCommand.QUERY_ALL_BIZ:
            self._spawn(self._work(self._answer_query_all()))
        elif parsed.command in (ArkletCommand.INSTALL_BIZ, ArkletCommand.UNINSTALL_BIZ):
            assert isinstance(body, BizModel)
            self._spawn(self._work(self._operate(parsed.command, body)))
        else:
            # e.g. switchBiz or batchInstallBiz: real bases do not execute them over MQTT.
            log.info("%s: command %s is not supported over MQTT, ignored", self.label, name)

    async def _work(self, job: Coroutine[Any, Any, None]) -> None:
        try:
            async with self._workers:
                await job
        finally:
            job.close()  # a job cancelled while queued for a worker never started: discard it

    # -- MQTT: answers ----------------------------------------------------------------------

    async def _answer_health(self, request: HealthRequest) -> None:
        await self._reply(BaseTopic.HEALTH, self._envelope(self.arklet.health(request)))

    async def _answer_query_all(self) -> None:
        inventory = [biz.to_simple() for biz in self.container.bizs()]
        await self._reply(BaseTopic.SIMPLE_BIZ, self._envelope(inventory), keep_nulls=True)

    async def _operate(self, command: ArkletCommand, request: BizModel) -> None:
        try:
            if command is ArkletCommand.INSTALL_BIZ:
                output = await self.arklet.install(request)
            else:
                output = await self.arklet.uninstall(request)
        except JavaException as exc:
            output = _mqtt_failure(exc)
        reply = BizOperationResponse(
            command=command.value,
            biz_name=request.biz_name,
            biz_version=request.biz_version,
            response=output,
        )
        await self._reply(BaseTopic.BIZ_OPERATION, self._envelope(reply))

    async def _apply_baseline(self, baseline: Baseline) -> None:
        request = BatchInstallRequest(biz_list=baseline.root)
        try:
            output = await self.arklet.batch_install(request)
        except JavaException as exc:
            output = _mqtt_failure(exc)
        reply = BatchInstallBizResponse(response=output)
        await self._reply(BaseTopic.BATCH_INSTALL_BIZ_RESPONSE, self._envelope(reply))

    # -- MQTT: outgoing ---------------------------------------------------------------------

    async def _mqtt_heartbeat_loop(self) -> None:
        """First beat at once, then every period; a failed publish never stops the timer."""
        while True:
            if not self.faults.heartbeats_stopped:
                status = self._status(port=0, state=parse_biz_state(self.faults.heartbeat_state))
                await self._publish(BaseTopic.HEART, self._envelope(status))
            await asyncio.sleep(self.config.mqtt_heartbeat_period_s)

    async def _reply(
        self, kind: BaseTopic, message: BaseModel, *, keep_nulls: bool = False
    ) -> None:
        """Publish an answer to a command, applying the reply faults."""
        payload = encode(message, keep_nulls=keep_nulls)
        if self.faults.take_malformed():
            payload = payload[: max(1, len(payload) // 2)]  # truncated JSON
        topic = self._topic(kind)
        if self.faults.reorder_replies and self._held_reply is None:
            self._held_reply = (topic, payload)
            self._spawn(self._flush_held_reply_later())
            return
        await self._send(topic, payload)
        if self.faults.duplicate_replies:
            await self._send(topic, payload)
        await self._flush_held_reply()

    async def _flush_held_reply(self) -> None:
        held, self._held_reply = self._held_reply, None
        if held is not None:
            await self._send(*held)

    async def _flush_held_reply_later(self) -> None:
        await asyncio.sleep(REORDER_FLUSH_S)
        await self._flush_held_reply()

    async def _publish(self, kind: BaseTopic, message: BaseModel) -> None:
        await self._send(self._topic(kind), encode(message))

    async def _send(self, topic: str, payload: bytes) -> None:
        if self._mqtt is not None:
            await self._mqtt.publish(topic, payload)

    # -- helpers ----------------------------------------------------------------------------

    def _topic(self, kind: BaseTopic) -> str:
        return base_topic(self.config.env, self.identity, kind)

    def _envelope(self, data: Any) -> Envelope[Any]:
        return Envelope[Any](publish_timestamp=now_ms() + self.faults.clock_skew_ms, data=data)

    def _metadata(self) -> BaseMetadata:
        return BaseMetadata(
            identity=self.identity,
            name=self.config.name,
            version=self.config.version,
            cluster_name=self.config.cluster_name,
        )

    def _status(self, *, port: int, state: BizState) -> BaseStatus:
        return BaseStatus(
            base_metadata=self._metadata(),
            local_ip=self.config.ip,
            local_host_name=self.config.resolved_host_name,
            port=port,
            state=state,
        )

    def _http_heartbeat_status(self) -> BaseStatus | None:
        if self.faults.heartbeats_stopped:
            return None
        return self._status(port=self.port, state=parse_biz_state(self.faults.heartbeat_state))

    def _record(self, transport: str, command: str, payload: Any, malformed: bool = False) -> None:
        self.commands.append(ReceivedCommand(transport, command, payload, time.time(), malformed))
        self._notify()

    def _http_hangs(self, command: str) -> bool:
        return self.faults.http_api_frozen or command in self.faults.ignore_commands

    def _record_http_request(self, command: str, payload: Any) -> None:
        log.info("%s received HTTP %s %s", self.label, command, payload)
        self._record("http", command, payload, malformed=not isinstance(payload, dict))

    def _spawn(self, job: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(job)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: task failed", self.label, exc_info=task.exception())


def _mqtt_failure(exc: JavaException) -> ArkletResponse[Any]:
    """How the MQTT tunnel reports an exception: FAILED, data.message = the stack trace."""
    return ArkletResponse[Any](
        code=ResponseCode.FAILED,
        message=exc.message,
        data=ClientResponse(code=ResponseCode.FAILED, message=exc.stack_trace()),
    )
