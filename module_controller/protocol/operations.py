"""MQTT replies to module operations (spec §2.4): bizOperation and batchInstallBizResponse."""

from __future__ import annotations

from module_controller.protocol.arklet import ArkletCommand, ArkletResponse
from module_controller.protocol.biz import BatchInstallData, ClientResponse
from module_controller.protocol.codec import WireModel


class BizOperationResponse(WireModel):
    """``base/bizOperation``: the outcome of one installBiz / uninstallBiz.

    ``bizName``/``bizVersion`` echo the request (also on failure since runtime 1.3.3).
    """

    command: str
    biz_name: str | None = None
    biz_version: str | None = None
    response: ArkletResponse[ClientResponse]


class BatchInstallBizResponse(WireModel):
    """``base/batchInstallBizResponse``: the outcome of installing a baseline."""

    command: str = ArkletCommand.BATCH_INSTALL_BIZ.value
    response: ArkletResponse[BatchInstallData]
