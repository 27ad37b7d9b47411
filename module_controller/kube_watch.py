"""A list-then-watch of one kind of object, read as plain JSON: for the high-volume watches.

Kopf handles every event with its full machinery (a task and a queue per object, causes,
handler kwargs, logging context), which is most of a replica's CPU during a release: every
replica sees every module pod's events and every node Lease renewal (50 a second at 500
bases), and acts on a third of them. `ListWatch` lists, then watches from the list's
resourceVersion, and calls `seen(body)` / `gone(body)`; each event costs one `json.loads`.

A watch the server ends (its timeout) goes on from the last version seen. A version that is
gone (410) lists again at once; any other failure (an error, a stalled or broken stream, a
watch that ends at once with nothing new, a second 410 in a row, a callback that raises)
lists again after a pause that doubles from 1 s to 30 s and starts over once a watch works.
Each list reports as gone, before anything else, what it no longer holds or holds under a
new uid (with the metadata last seen: name, namespace, uid, labels), so nothing is missed
or left stale; an object is forgotten only once `gone` took it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller.kube import call_for_json, read_json
from module_controller.observability.logging import one_line

log = logging.getLogger(__name__)

# The server ends each watch after this long; the client gives up on a silent one later.
WATCH_SECONDS = 60
CLIENT_GRACE_SECONDS = 30
RETRY_INITIAL_SECONDS = 1.0
RETRY_MAX_SECONDS = 30.0
# A watch ended sooner than this with no new version did not work (a proxy closing it, say):
# going on at once would ask the API server as fast as it answers (client-go does the same).
SHORT_WATCH_SECONDS = 1.0
# A watch that stayed up this long worked, however it ended: the pauses start over. (A
# proxy that drops each watch before the server ends it would else grow them to the most.)
LONG_WATCH_SECONDS = 10.0

Report = Callable[[Mapping[str, Any]], Awaitable[None]]
# What is kept of each object between lists, to report it gone: enough to find it again.
KEPT_METADATA = ("name", "namespace", "uid", "labels")


def key_of(body: Mapping[str, Any]) -> str:
    metadata = body.get("metadata") or {}
    return f"{metadata.get('namespace') or ''}/{metadata.get('name') or ''}"


def kept(body: Mapping[str, Any]) -> dict[str, Any]:
    metadata = body.get("metadata") or {}
    return {"metadata": {field: metadata[field] for field in KEPT_METADATA if field in metadata}}


def describe(error: Exception) -> str:
    """What failed, in one line: a server's message may hold newlines, which would forge
    log lines, so control characters are escaped; a long answer is cut."""
    if isinstance(error, ApiException):
        body = str(error.body or "")
        try:
            message = json.loads(body).get("message") or body
        except (ValueError, AttributeError):
            message = body
        text = f"HTTP {error.status} {error.reason or ''}".rstrip() + f": {message}"
    elif isinstance(error, TimeoutError) and not str(error):
        text = "timed out"
    else:
        text = f"{type(error).__name__}: {error}"
    return one_line(text[:300])


class Expired(Exception):
    """The resourceVersion watched from is too old (410): list again."""


class Broken(Exception):
    """The watch's stream is not what the API server sends, or it says it failed."""


# Failures of the API server or of the way to it, told in a line; anything else (a
# callback's bug, most likely) is logged with its traceback.
EXPECTED = (ApiException, aiohttp.ClientError, TimeoutError, Broken)


class ListWatch:
    def __init__(
        self,
        api: client.ApiClient,
        listing: Callable[..., Awaitable[Any]],
        *args: Any,
        label_selector: str,
        seen: Report,
        gone: Report,
        what: str,
        watch_seconds: int = WATCH_SECONDS,
        client_grace_seconds: float = CLIENT_GRACE_SECONDS,
        retry_initial_seconds: float = RETRY_INITIAL_SECONDS,
        retry_max_seconds: float = RETRY_MAX_SECONDS,
        long_watch_seconds: float = LONG_WATCH_SECONDS,
    ) -> None:
        self._api = api
        self._listing = listing
        self._args = args
        self._selector = label_selector
        self._seen = seen
        self._gone = gone
        self._what = what
        self._watch_seconds = watch_seconds
        self._request_timeout = watch_seconds + client_grace_seconds
        self._retry_initial = retry_initial_seconds
        self._retry_max = retry_max_seconds
        self._long_watch = long_watch_seconds
        self._known: dict[str, dict[str, Any]] = {}
        self._version: str | None = None  # of a list made by list_first, to watch from

    async def list_first(self, report: Report) -> int:
        """List now, reporting each object to `report` (for what must know them all before
        it starts); `run` then watches from this list instead of listing again. Returns
        how many objects were listed."""
        self._version = await self._list(report)
        return len(self._known)

    async def run(self) -> None:
        clock = asyncio.get_running_loop().time
        pause = self._retry_initial
        calm = True  # no failure since the last watch that worked
        while True:
            step, opened = "list", None
            try:
                version, self._version = self._version, None
                if version is None:
                    version = await self._list(self._seen)
                step = "watch"
                while True:
                    opened = clock()
                    version = await self._watch(version)
                    pause, calm = self._retry_initial, True
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if opened is not None and clock() - opened >= self._long_watch:
                    pause, calm = self._retry_initial, True  # it worked, a good while
                was_calm, calm = calm, False
                if isinstance(error, Expired) and was_calm:
                    # Routine (the version was compacted away): list again at once.
                    log.info("The watch of %s expired; listing them again.", self._what)
                    continue
                if isinstance(error, Expired):
                    # Again, with no good watch between: at once would list as fast as the
                    # API server answers (a whole list each time).
                    log.warning(
                        "The watch of %s expired again; listing them again in %gs.",
                        self._what,
                        pause,
                    )
                else:
                    log.warning(
                        "The %s of %s failed (%s); listing them again in %gs.",
                        step,
                        self._what,
                        describe(error),
                        pause,
                        exc_info=not isinstance(error, EXPECTED),
                    )
            await asyncio.sleep(pause)
            pause = min(pause * 2, self._retry_max)

    async def _list(self, report: Report) -> str:
        listed = await call_for_json(
            self._api, self._listing, *self._args, label_selector=self._selector
        )
        items = listed.get("items") or []
        known = {key_of(item): kept(item) for item in items}
        # What went is told first, and an object made again under its name (a new uid) went
        # too: its readers hold it by uid (module pods) or by name (node Leases), and a
        # name's gone after its new object's seen would drop the new one.
        for key, old in list(self._known.items()):
            new = known.get(key)
            if new is None or new["metadata"].get("uid") != old["metadata"].get("uid"):
                await self._gone(old)
                del self._known[key]  # only once reported: a failed gone is told next list
        self._known = known
        for item in items:
            await report(item)
        # A list without a version (no real server sends one) is watched from "": the
        # server starts with the objects as they are, reported again, which is harmless.
        return str((listed.get("metadata") or {}).get("resourceVersion") or "")

    async def _watch(self, version: str) -> str:
        """Watch from `version` until the server ends it; the last version seen."""
        started, start = asyncio.get_running_loop().time(), version
        response: aiohttp.ClientResponse = await self._listing(
            *self._args,
            label_selector=self._selector,
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=self._watch_seconds,
            _preload_content=False,
            _request_timeout=self._request_timeout,
        )
        if response.status == 410:  # as the watch's status, not as an ERROR event
            response.release()
            raise Expired
        if not 200 <= response.status <= 299:
            await read_json(response)  # raises the API server's error
        async with response:
            async for line in response.content:
                if line.strip():
                    try:
                        event = json.loads(line)
                    except ValueError as error:
                        raise Broken(f"a line that is not JSON ({error}): {line[:100]!r}") from None
                    if not isinstance(event, dict):
                        raise Broken(f"an event that is not an object: {line[:100]!r}")
                    version = await self._event(event, version)
        if version == start and asyncio.get_running_loop().time() - started < SHORT_WATCH_SECONDS:
            raise Broken("the watch ended at once, with no new version")
        return version

    async def _event(self, event: Mapping[str, Any], version: str) -> str:
        kind, body = event.get("type"), event.get("object") or {}
        if not isinstance(body, dict):
            raise Broken(f"a {kind} event whose object is not one: {body!r:.100}")
        if kind == "ERROR":
            if body.get("code") == 410:
                raise Expired
            raise Broken(f"the API server said {body.get('message') or body}")
        metadata = body.get("metadata") or {}
        version = str(metadata.get("resourceVersion") or version)
        if kind == "BOOKMARK" or not metadata.get("name"):
            return version
        if kind == "DELETED":
            await self._gone(body)
            # Forgotten only once reported: if `gone` fails, the list made next (which no
            # longer holds the object) still has it to report gone.
            self._known.pop(key_of(body), None)
        else:
            self._known[key_of(body)] = kept(body)
            await self._seen(body)
        return version
