"""Module pods, watched without writing onto them: an event handler, no finalizers.

The watch is filtered on the server by the module label (set at start-up); the handler
hands every event to the controller, which plans per base.
"""

from __future__ import annotations

from typing import Any

import kopf

from module_controller.controller import ModuleController


@kopf.on.event("", "v1", "pods")
async def module_pod_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    controller: ModuleController = memo["controller"]
    labels = body.get("metadata", {}).get("labels") or {}
    if labels.get(controller.settings.module_label) != "module":
        return  # belt and braces: the server-side selector already filters
    controller.module_pod_changed(type, dict(body))
