"""Reading what a base answers to an install, as a real base words it.

Facts from real bases (wire-protocol.md, "Observed on a real base"):

- an exception (failed download, failed start) answers `response.message` = the exception's
  message and `data.message` = its stack trace: users are shown the first line only;
- the jar's manifest wins: asked for biz1:0.0.3, a jar declaring biz1:0.0.1 is registered as
  biz1:0.0.1 (`bizInfos` says so), and asked again the base answers REPEAT_BIZ
  "Biz: biz1:0.0.1 has been installed or registered.";
- two versions of a web module sharing a web context path cannot run side by side: the
  second goes BROKEN with "Child name [/biz1] is not unique".
"""

from __future__ import annotations

import re

from module_controller.modules.text import bounded, first_line
from module_controller.protocol import BizOperationResponse
from module_controller.protocol.biz import ClientResponseCode

_REPEAT = re.compile(r"Biz:\s*(?P<key>\S+?)\s+has been installed or registered")
_WEB_CONTEXT = re.compile(r"Child name \[[^\]]*\] is not unique")
# arklet's command coordinator: another install / uninstall of the same biz still runs.
_LOCK_CONFLICT = re.compile(r"conflict, exist unfinished command")


def reply_text(result: BizOperationResponse) -> str:
    """The base's own words about an operation, first line only and bounded.

    An exception puts its message in `response.message` and the stack trace in
    `data.message`; a SOFAArk answer (REPEAT_BIZ, NOT_FOUND_BIZ, success) puts it in
    `data.message` under arklet's fixed "install biz not success!".
    """
    response = result.response
    data = response.data
    if data is not None and data.code != ClientResponseCode.FAILED and data.message:
        return first_line(data.message)
    return first_line(response.message) or first_line(data.message if data else None)


def repeated_key(text: str) -> str | None:
    """The name:version a REPEAT_BIZ answer names (the jar's, not necessarily the request's)."""
    match = _REPEAT.search(text)
    return match.group("key") if match else None


def web_context_conflict(text: str | None) -> bool:
    return bool(text and _WEB_CONTEXT.search(text))


def lock_conflict(text: str) -> bool:
    return bool(_LOCK_CONFLICT.search(text))


def web_context_message(key: str, base_text: str) -> str:
    """What to tell a user whose new version cannot start next to the old one.

    The base's words are searched in the whole text: the conflict is often a "Caused by"
    line deep in the stack trace.
    """
    match = _WEB_CONTEXT.search(base_text)
    said = match.group(0) if match else first_line(base_text)
    return bounded(
        f"{key} cannot run next to another version of the module on this base: they share a "
        f"web context path (the base says: {said}). Set the pod annotation "
        "module-controller.koupleless.io/upgrade: uninstall-then-install to upgrade by "
        "uninstalling the old version first"
    )


def mismatch_message(url: str, declared: str, asked: str) -> str:
    return bounded(f"the jar at {url} declares {declared}, the pod asks for {asked}")
