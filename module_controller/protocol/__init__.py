"""The Koupleless base <-> Module Controller wire protocol (``reference/wire-protocol.md``).

Shared by the simulated bases and the controller's tunnels. One module per concern:

- :mod:`.topics` -- MQTT topic names, parsing, subscriptions
- :mod:`.envelopes` -- the ``publishTimestamp`` envelope and freshness
- :mod:`.states` -- BizState / StateChangeReason, tolerant parsing, per-transport spelling
- :mod:`.biz` -- BizModel (install request), BizInfo, SimpleBizInfo, ClientResponse, baseline
- :mod:`.heartbeat` -- BaseMetadata, BaseStatus, HTTP-tunnel endpoints
- :mod:`.health` -- health data with arklet's literal keys
- :mod:`.arklet` -- Arklet commands, the ``Output`` response envelope, error texts
- :mod:`.operations` -- MQTT ``bizOperation`` / ``batchInstallBizResponse`` payloads
- :mod:`.messages` -- topic -> model tables, ``decode_base_message`` / ``decode_command``
- :mod:`.codec` -- ``decode`` / ``encode``; :mod:`.errors` -- ``ProtocolError``
"""

from module_controller.protocol.arklet import ArkletCommand, ArkletResponse, ResponseCode
from module_controller.protocol.biz import (
    Baseline,
    BatchInstallData,
    BizInfo,
    BizModel,
    BizStateRecord,
    ClientResponse,
    ClientResponseCode,
    SimpleBizInfo,
    biz_key,
)
from module_controller.protocol.codec import WireModel, decode, encode, to_jsonable
from module_controller.protocol.envelopes import MAX_MESSAGE_AGE_MS, Envelope, now_ms, wrap
from module_controller.protocol.errors import ProtocolError
from module_controller.protocol.health import Health, HealthData
from module_controller.protocol.heartbeat import BaseMetadata, BaseStatus
from module_controller.protocol.messages import (
    BaseMessage,
    BatchInstallMessage,
    BizOperationMessage,
    HealthMessage,
    HeartMessage,
    LegacyBizMessage,
    QueryBaselineMessage,
    SimpleBizMessage,
    decode_base_message,
    decode_command,
)
from module_controller.protocol.operations import BatchInstallBizResponse, BizOperationResponse
from module_controller.protocol.states import BizState, EnumStyle, StateChangeReason
from module_controller.protocol.topics import (
    BaseTopic,
    ParsedTopic,
    base_subscriptions,
    base_topic,
    command_topic,
    controller_subscriptions,
    parse_topic,
    per_base_subscriptions,
)

__all__ = [
    "MAX_MESSAGE_AGE_MS",
    "ArkletCommand",
    "ArkletResponse",
    "BaseMessage",
    "BaseMetadata",
    "BaseStatus",
    "BaseTopic",
    "Baseline",
    "BatchInstallBizResponse",
    "BatchInstallData",
    "BatchInstallMessage",
    "BizInfo",
    "BizModel",
    "BizOperationMessage",
    "BizOperationResponse",
    "BizState",
    "BizStateRecord",
    "ClientResponse",
    "ClientResponseCode",
    "EnumStyle",
    "Envelope",
    "Health",
    "HealthData",
    "HealthMessage",
    "HeartMessage",
    "LegacyBizMessage",
    "ParsedTopic",
    "ProtocolError",
    "QueryBaselineMessage",
    "ResponseCode",
    "SimpleBizInfo",
    "SimpleBizMessage",
    "StateChangeReason",
    "WireModel",
    "base_subscriptions",
    "base_topic",
    "biz_key",
    "command_topic",
    "controller_subscriptions",
    "decode",
    "decode_base_message",
    "decode_command",
    "encode",
    "now_ms",
    "parse_topic",
    "per_base_subscriptions",
    "to_jsonable",
    "wrap",
]
