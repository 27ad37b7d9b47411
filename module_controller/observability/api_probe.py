"""Asks the API server something cheap every few seconds and reports it as readiness.

Without it the `kubernetes` check would stay `[+]` through an API-server outage: the
operator's own requests fail only when there is work to do, and Kopf's watches retry
quietly. `ApiProbe` sets the check to `[+]kubernetes API server v1.36.3 answers` while
`/version` answers and to `[-]kubernetes: no answer for 20s (...)` once it stops, counting
from the last answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from module_controller.observability.server import HealthChecks
from module_controller.tasks import cancel_and_wait

log = logging.getLogger(__name__)

PROBE_INTERVAL_SECONDS = 5.0
PROBE_TIMEOUT_SECONDS = 5.0


class ApiProbe:
    """`start()` after the controller started, `await stop()` at shut-down."""

    def __init__(
        self,
        api: client.ApiClient,
        readiness: HealthChecks,
        *,
        check: str = "kubernetes",
        interval: float = PROBE_INTERVAL_SECONDS,
        timeout: float = PROBE_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.readiness = readiness
        self.check = check
        self.interval = interval
        self.timeout = timeout
        self._clock = clock
        # Start-up has just talked to the API server, so the silence counts from here.
        self.last_answer = clock()
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def start(self) -> None:
        self.last_answer = self._clock()
        self._task = asyncio.create_task(self._run(), name="api-probe")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None

    async def _run(self) -> None:
        while True:
            await self.probe_once()
            await asyncio.sleep(self.interval)

    async def probe_once(self) -> bool:
        """Ask once and report the answer (or its absence); True when the server answered."""
        try:
            version = await client.VersionApi(self.api).get_code(_request_timeout=self.timeout)
        except asyncio.CancelledError:
            raise
        except ApiException as error:
            # An answer, but not a good one: the server is there and unwell (or refuses us).
            self._report(False, f"the API server answers {error.status} {error.reason}")
            return False
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            silent = self._clock() - self.last_answer
            cause = "timed out" if isinstance(error, TimeoutError) else _one_line(error)
            self._report(False, f"no answer for {silent:.0f}s ({cause})")
            return False
        self.last_answer = self._clock()
        self._report(True, f"API server {getattr(version, 'git_version', '')} answers")
        return True

    def _report(self, ok: bool, detail: str) -> None:
        if ok == self._failing:  # a change: say it once in the log, not every few seconds
            if ok:
                log.info("The Kubernetes API server answers again.")
            else:
                log.warning("The Kubernetes API server is unwell: %s.", detail)
        self._failing = not ok
        self.readiness.set(self.check, ok, detail)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
