"""Which model each MQTT topic carries, and one-call decoding of a received message.

The controller's MQTT tunnel calls :func:`decode_base_message`; the simulated base calls
:func:`decode_command`. Both raise only :class:`ProtocolError`.
"""

from __future__ import annotations

from pydantic import BaseModel

from module_controller.protocol.arklet import ArkletCommand, ArkletResponse
from module_controller.protocol.biz import Baseline, BizInfo, BizModel, SimpleBizInfo
from module_controller.protocol.codec import WireModel, decode
from module_controller.protocol.envelopes import Envelope
from module_controller.protocol.errors import ProtocolError
from module_controller.protocol.health import Health, HealthRequest
from module_controller.protocol.heartbeat import BaseMetadata, BaseStatus
from module_controller.protocol.operations import BatchInstallBizResponse, BizOperationResponse
from module_controller.protocol.topics import BaseTopic, ParsedTopic, parse_topic


# Base -> controller messages (spec §2.2), each in the publishTimestamp envelope. Concrete
# subclasses rather than aliases, so ``isinstance(message, HeartMessage)`` narrows for mypy.
class HeartMessage(Envelope[BaseStatus]):
    """``base/heart``"""


class QueryBaselineMessage(Envelope[BaseMetadata]):
    """``base/queryBaseline``"""


class HealthMessage(Envelope[ArkletResponse[Health]]):
    """``base/health``: ``data`` is arklet's Output; use it only when ``data.code == SUCCESS``."""


class SimpleBizMessage(Envelope[list[SimpleBizInfo]]):
    """``base/simpleBiz``: the complete inventory (base biz excluded)."""


class LegacyBizMessage(Envelope[ArkletResponse[list[BizInfo]]]):
    """``base/biz`` (runtime 1.3.0/1.3.1): the full inventory in an Output."""


class BizOperationMessage(Envelope[BizOperationResponse]):
    """``base/bizOperation``: result of one installBiz / uninstallBiz (never age-checked)."""


class BatchInstallMessage(Envelope[BatchInstallBizResponse]):
    """``base/batchInstallBizResponse``: result of a baseline (never age-checked)."""


BaseMessage = (
    HeartMessage
    | QueryBaselineMessage
    | HealthMessage
    | SimpleBizMessage
    | LegacyBizMessage
    | BizOperationMessage
    | BatchInstallMessage
)

BASE_MESSAGE_MODELS: dict[BaseTopic, type[BaseMessage]] = {
    BaseTopic.HEART: HeartMessage,
    BaseTopic.QUERY_BASELINE: QueryBaselineMessage,
    BaseTopic.HEALTH: HealthMessage,
    BaseTopic.SIMPLE_BIZ: SimpleBizMessage,
    BaseTopic.BIZ: LegacyBizMessage,
    BaseTopic.BIZ_OPERATION: BizOperationMessage,
    BaseTopic.BATCH_INSTALL_BIZ_RESPONSE: BatchInstallMessage,
}

# Messages the Go controller drops when older than 10 s (spec §2.3); the others never age.
AGE_CHECKED_TOPICS = frozenset(
    {
        BaseTopic.HEART,
        BaseTopic.QUERY_BASELINE,
        BaseTopic.HEALTH,
        BaseTopic.SIMPLE_BIZ,
        BaseTopic.BIZ,
    }
)


class EmptyCommand(WireModel):
    """The ``{}`` body of queryAllBiz (any keys are ignored)."""


# Controller -> base bodies (no envelope).
COMMAND_MODELS: dict[ArkletCommand, type[BaseModel]] = {
    ArkletCommand.INSTALL_BIZ: BizModel,
    ArkletCommand.UNINSTALL_BIZ: BizModel,
    ArkletCommand.SWITCH_BIZ: BizModel,
    ArkletCommand.HEALTH: HealthRequest,
    ArkletCommand.QUERY_ALL_BIZ: EmptyCommand,
    ArkletCommand.HELP: EmptyCommand,
}


def decode_base_message(topic: str, payload: bytes | str) -> tuple[ParsedTopic, BaseMessage]:
    """Decode something a base published; returns the parsed topic and the envelope model.

    ``isinstance(message, HeartMessage)`` etc. tells the kinds apart (and narrows for mypy).
    """
    parsed = parse_topic(topic)
    kind = parsed.base_kind
    if kind is None or kind not in BASE_MESSAGE_MODELS:
        raise ProtocolError("topic", f"{topic!r} is not a base -> controller message topic")
    return parsed, decode(BASE_MESSAGE_MODELS[kind], payload)


def decode_command(topic: str, payload: bytes | str) -> tuple[ParsedTopic, BaseModel]:
    """Decode something the controller published to a base (a command or the baseline)."""
    parsed = parse_topic(topic)
    if parsed.base_kind is BaseTopic.BASELINE:
        return parsed, decode(Baseline, payload)
    command = parsed.command
    if command is None or command not in COMMAND_MODELS:
        raise ProtocolError("topic", f"{topic!r} is not a command a base executes")
    return parsed, decode(COMMAND_MODELS[command], payload)
