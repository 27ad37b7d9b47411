"""Commands to HTTP-tunnel bases: the Arklet HTTP API, its answers turned into tunnel events.

A base on the HTTP tunnel is driven by POSTs to ``http://<localIP>:<port>/<command>``. Each
call runs off the caller's path (the module sync only queues it, as it publishes an MQTT
command) and its answer goes into the inbox as the same event an MQTT reply would be, so
the registry and planner never know which tunnel a base speaks.

What the Go controller leaves out, and we do not: every call has a timeout; calls are
bounded per base and in all; a call already in flight is not sent twice; a call the base
never received (connection refused) is tried again with backoff; an install or uninstall
that could not be delivered is answered as failed, so the planner's backoff and the pod's
status say so at once instead of after the install timeout; every call that got no answer
is reported, and the registry turns a base whose API stays silent NotReady.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from pydantic import BaseModel
from yarl import URL

from module_controller.lograte import RateLimitedLog
from module_controller.protocol import BizModel, ProtocolError
from module_controller.protocol.arklet import ArkletCommand, ArkletResponse
from module_controller.protocol.biz import BizInfo, ClientResponse
from module_controller.protocol.codec import decode, encode
from module_controller.protocol.health import Health
from module_controller.protocol.operations import BizOperationResponse
from module_controller.settings import Settings
from module_controller.tasks import BackgroundTasks
from module_controller.tunnels.decoder import inventory_from_biz_infos
from module_controller.tunnels.events import (
    ArkletCallFailed,
    BaseHealthReport,
    BizOperationResult,
    TunnelEvent,
)

log = logging.getLogger(__name__)

# A refused connection means the base never saw the call: safe to send again, soon.
DELIVERY_ATTEMPTS = 3
FIRST_RETRY_SECONDS = 0.5
UNDELIVERED_CODE = "FAILED"

Deliver = Callable[[TunnelEvent], Awaitable[None]]
AddressOf = Callable[[str], "tuple[str, int] | None"]
CallOutcome = Callable[[str, str], None]  # (command, outcome) for the metrics


class _NoAnswer(Exception):
    """The call got no usable answer; the message says why, for logs, Events and status."""

    def __init__(self, reason: str, delivered: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delivered = delivered  # False: the base cannot have acted on it


class ArkletHttpClient:
    """Sends Arklet HTTP calls for the bases that speak the HTTP tunnel."""

    def __init__(
        self,
        settings: Settings,
        deliver: Deliver,
        address_of: AddressOf,
        on_call: CallOutcome | None = None,
        first_retry_seconds: float = FIRST_RETRY_SECONDS,
    ) -> None:
        self.settings = settings
        self._deliver = deliver
        self._address_of = address_of
        self._on_call = on_call
        self._first_retry = first_retry_seconds
        # Installs may take minutes: they must not hold the slots that health and inventory
        # queries of every other base need.
        self._all_commands = asyncio.Semaphore(settings.arklet_http_max_calls)
        self._all_queries = asyncio.Semaphore(settings.arklet_http_max_calls)
        self._per_base: dict[str, _BaseSlots] = {}
        self._in_flight: set[tuple[str, str, str]] = set()
        self._stopped = False
        self._session: aiohttp.ClientSession | None = None
        self._log = RateLimitedLog(log)
        self.tasks = BackgroundTasks("arklet http")

    async def start(self) -> None:
        # Arklet closes the connection after every answer: no keep-alive to pool.
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        self._session = aiohttp.ClientSession(connector=connector)

    async def stop(self) -> None:
        self._stopped = True
        await self.tasks.stop()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- the commands (the same surface as the MQTT tunnel's) ------------------------------

    async def query_health(self, identity: str) -> None:
        self._send(identity, ArkletCommand.HEALTH, None)

    async def query_all_biz(self, identity: str) -> None:
        self._send(identity, ArkletCommand.QUERY_ALL_BIZ, None)

    async def install_biz(self, identity: str, biz: BizModel) -> None:
        self._send(identity, ArkletCommand.INSTALL_BIZ, biz)

    async def uninstall_biz(self, identity: str, biz: BizModel) -> None:
        self._send(identity, ArkletCommand.UNINSTALL_BIZ, biz)

    def in_flight(self) -> int:
        return len(self._in_flight)

    def _send(self, identity: str, command: ArkletCommand, biz: BizModel | None) -> None:
        if self._stopped:
            return
        key = (identity, command.value, _call_key(biz))
        if key in self._in_flight:
            return  # the same call is on its way; its answer serves this one too
        self._in_flight.add(key)
        self.tasks.spawn(self._call(key, command, biz), f"arklet-{command.value}-{identity}")

    # --- one call ---------------------------------------------------------------------------

    async def _call(
        self, key: tuple[str, str, str], command: ArkletCommand, biz: BizModel | None
    ) -> None:
        identity = key[0]
        slots = self._per_base.get(identity)
        if slots is None:
            slots = self._per_base[identity] = _BaseSlots(
                asyncio.Semaphore(self.settings.arklet_http_max_calls_per_base)
            )
        slots.users += 1
        everyone = self._all_queries if biz is None else self._all_commands
        try:
            async with slots.semaphore, everyone:
                event = await self._answer(identity, command, biz)
        finally:
            self._in_flight.discard(key)
            slots.users -= 1
            if slots.users == 0:
                del self._per_base[identity]  # nothing kept for bases no longer called
        if event is not None:
            await self._deliver(event)

    async def _answer(
        self, identity: str, command: ArkletCommand, biz: BizModel | None
    ) -> TunnelEvent | None:
        address = self._address_of(identity)
        if address is None:
            return None  # the base is gone meanwhile
        url = str(URL.build(scheme="http", host=address[0], port=address[1], path="/" + command))
        try:
            raw = await self._post_with_retries(url, command, biz)
            event = self._event(identity, command, biz, raw)
        except _NoAnswer as failure:
            self._count(command, "delivered_no_answer" if failure.delivered else "undelivered")
            self._log.warning(
                f"no-answer-{command.value}",
                "Arklet %s of base %s at %s got no answer: %s.",
                command.value,
                identity,
                url,
                failure.reason,
            )
            await self._deliver(ArkletCallFailed(identity, command.value, failure.reason))
            if biz is None or failure.delivered:
                # A delivered install may still finish: the inventory and the planner's
                # install timeout tell, as for an MQTT command with no reply.
                return None
            return _undelivered(identity, command, biz, f"{url} {failure.reason}")
        self._count(command, "answered")
        return event

    async def _post_with_retries(
        self, url: str, command: ArkletCommand, biz: BizModel | None
    ) -> bytes:
        session = self._session
        if session is None:
            raise _NoAnswer("the operator is stopping", delivered=False)
        body = encode(biz) if biz is not None else b"{}"
        lasting = biz is not None  # installs download and start a jar: minutes, not seconds
        seconds = (
            self.settings.install_timeout_seconds
            if lasting
            else self.settings.arklet_http_timeout_seconds
        )
        wait = self._first_retry
        for attempt in range(1, DELIVERY_ATTEMPTS + 1):
            try:
                async with session.post(
                    url,
                    data=body,
                    headers={"Content-Type": "application/json"},
                    timeout=aiohttp.ClientTimeout(total=seconds),
                ) as response:
                    raw = await _read_capped(response, self.settings.max_message_bytes)
                    if response.status != 200:
                        text = raw[:200].decode("utf-8", "replace")
                        raise _NoAnswer(f"HTTP {response.status}: {text!r}", delivered=True)
                    if len(raw) > self.settings.max_message_bytes:
                        raise _NoAnswer(
                            f"answer larger than {self.settings.max_message_bytes} bytes",
                            delivered=True,
                        )
                    return raw
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as error:
                # Not connected: the base cannot have seen the call.
                if attempt == DELIVERY_ATTEMPTS:
                    why = getattr(error, "os_error", None) or error
                    raise _NoAnswer(
                        f"connection failed {attempt} times: {why}", delivered=False
                    ) from None
                await asyncio.sleep(wait)
                wait *= 2
            except TimeoutError:
                raise _NoAnswer(f"no answer within {seconds:.0f}s", delivered=True) from None
            except aiohttp.ClientError as error:
                raise _NoAnswer(f"{type(error).__name__}: {error}", delivered=True) from None
        raise AssertionError("unreachable")  # the loop returns or raises

    def _event(
        self, identity: str, command: ArkletCommand, biz: BizModel | None, raw: bytes
    ) -> TunnelEvent | None:
        """The event an answer carries; a failed health or inventory answer is logged."""
        answered_by = _answering_identity(raw)
        if answered_by is not None and answered_by != identity:
            # Another base serves this address now (the base moved, the port drifted):
            # its modules are not this base's.
            raise _NoAnswer(f"answered by base {answered_by[:80]!r}", delivered=True)
        try:
            if command is ArkletCommand.HEALTH:
                health = _decode(ArkletResponse[Health], raw)
                if health.ok and health.data is not None:
                    return BaseHealthReport(identity, health.data.health_data, "http")
                self._refused(identity, command, health.message)
                return None
            if command is ArkletCommand.QUERY_ALL_BIZ:
                inventory = _decode(ArkletResponse[list[BizInfo]], raw)
                if inventory.ok and inventory.data is not None:
                    return inventory_from_biz_infos(identity, inventory.data, "http")
                self._refused(identity, command, inventory.message)
                return None
        except ProtocolError as error:
            raise _NoAnswer(f"not an Arklet answer: {error}", delivered=True) from None
        assert biz is not None
        try:
            response = _decode(ArkletResponse[ClientResponse], raw)
        except ProtocolError as error:
            raise _NoAnswer(f"not an Arklet answer: {error}", delivered=True) from None
        return BizOperationResult(
            identity,
            BizOperationResponse(
                command=command.value,
                biz_name=biz.biz_name,
                biz_version=biz.biz_version,
                response=response,
            ),
            "http",
        )

    def _refused(self, identity: str, command: ArkletCommand, message: str | None) -> None:
        self._log.warning(
            f"refused-{command.value}",
            "Arklet %s of base %s failed: %s.",
            command.value,
            identity,
            (message or "no message")[:300],
        )

    def _count(self, command: ArkletCommand, outcome: str) -> None:
        if self._on_call is not None:
            self._on_call(command.value, outcome)


class _BaseSlots:
    """One base's share of the calls, kept while someone waits on or holds it."""

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self.semaphore = semaphore
        self.users = 0


def _call_key(biz: BizModel | None) -> str:
    # The jar is part of the call: the same name:version from another URL is another call.
    return "" if biz is None else f"{biz.key} {biz.biz_url}"


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, however many packets it came in, or limit+1 bytes of it."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    return b"".join(chunks)


def _answering_identity(raw: bytes) -> str | None:
    """The baseIdentity (baseID before runtime 1.3.3) an Arklet answer names, if any."""
    try:
        answer = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(answer, dict):
        return None
    named = answer.get("baseIdentity", answer.get("baseID"))
    return named if isinstance(named, str) and named else None


def _decode(model: type[BaseModel], raw: bytes) -> Any:
    return decode(model, raw)


def _undelivered(
    identity: str, command: ArkletCommand, biz: BizModel, reason: str
) -> BizOperationResult:
    """An install or uninstall the base never received, answered as failed by us."""
    return BizOperationResult(
        identity,
        BizOperationResponse(
            command=command.value,
            biz_name=biz.biz_name,
            biz_version=biz.biz_version,
            response=ArkletResponse[ClientResponse](
                code=UNDELIVERED_CODE,
                message=f"not delivered to the base: {reason}",
            ),
        ),
        "http",
    )
