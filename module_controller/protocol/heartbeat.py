"""Base identity and heartbeat: ``BaseMetadata`` and ``BaseStatus`` (spec §2.4, §3, §5).

The same ``BaseStatus`` travels in an envelope on MQTT ``base/heart`` (port 0) and bare as the
HTTP tunnel's ``POST /heartbeat`` body (port = the Arklet HTTP port).
"""

from __future__ import annotations

from pydantic import Field

from module_controller.protocol.codec import WireModel, wire_key
from module_controller.protocol.states import BizState, LowerBizState

# HTTP tunnel (controller side, spec §3.1).
HTTP_TUNNEL_DEFAULT_PORT = 7777
HEARTBEAT_PATH = "/heartbeat"
QUERY_BASELINE_PATH = "/queryBaseline"
HEARTBEAT_OK_TEXT = "SUCCESS"

# Periods real runtime 1.4.x bases use (spec §7).
MQTT_HEARTBEAT_PERIOD_S = 10.0
HTTP_HEARTBEAT_PERIOD_S = 12.0


class BaseMetadata(WireModel):
    """Who a base is. Also the ``base/queryBaseline`` payload and HTTP /queryBaseline body."""

    identity: str = Field(min_length=1)
    name: str = ""
    version: str = ""
    cluster_name: str = ""


class BaseStatus(WireModel):
    """A heartbeat. ``state`` is ``activated`` from real bases; anything else means offline."""

    base_metadata: BaseMetadata
    local_ip: str = wire_key("localIP", default="")
    local_host_name: str = ""
    port: int = 0
    state: LowerBizState = BizState.ACTIVATED

    @property
    def is_activated(self) -> bool:
        return self.state is BizState.ACTIVATED
