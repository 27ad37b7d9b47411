"""Module pods, watched without writing onto them: an event handler, no finalizers.

The watch is filtered on the server by the module label (set at start-up); the handler
puts every event in the runtime's inbox, where the dispatcher applies it.
"""

from __future__ import annotations

from typing import Any

import kopf

from module_controller.inbox import ModulePodChanged
from module_controller.operator_memo import operator_memo


@kopf.on.event("", "v1", "pods")
async def module_pod_event(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    runtime = operator_memo(memo).runtime
    if runtime is None:
        return  # start-up failed; Kopf is stopping
    labels = body.get("metadata", {}).get("labels") or {}
    if labels.get(runtime.settings.module_label) != "module":
        return  # belt and braces: the server-side selector already filters
    await runtime.inbox.put(ModulePodChanged(type, dict(body)))
