"""MQTT topic names (spec §2.2): build them, parse them, list what each side subscribes.

Commands (controller -> base) are three levels, ``koupleless_<env>/<id>/<command>``; base
replies are four, ``koupleless_<env>/<id>/base/<kind>``, so the base's ``<id>/+`` subscription
never sees its own messages. ``base/baseline`` is the one four-level topic the controller
publishes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from module_controller.protocol.arklet import ArkletCommand
from module_controller.protocol.errors import ProtocolError

TOPIC_PREFIX = "koupleless_"
BASE_SEGMENT = "base"


class BaseTopic(StrEnum):
    """The last segment of ``koupleless_<env>/<id>/base/<kind>``."""

    HEART = "heart"  # base -> MC, envelope{BaseStatus}
    QUERY_BASELINE = "queryBaseline"  # base -> MC, envelope{BaseMetadata}
    BASELINE = "baseline"  # MC -> base, bare array of BizModel
    HEALTH = "health"  # base -> MC, envelope{ArkletResponse[Health]}
    SIMPLE_BIZ = "simpleBiz"  # base -> MC, envelope{[SimpleBizInfo]}
    BIZ = "biz"  # base -> MC, legacy envelope{ArkletResponse[[BizInfo]]}
    BIZ_OPERATION = "bizOperation"  # base -> MC, envelope{BizOperationResponse}
    BATCH_INSTALL_BIZ_RESPONSE = "batchInstallBizResponse"  # envelope{BatchInstallBizResponse}


# The topics the Go controller subscribes per base once its vnode exists (spec §2.2).
PER_BASE_TOPICS = (
    BaseTopic.HEALTH,
    BaseTopic.SIMPLE_BIZ,
    BaseTopic.BIZ,
    BaseTopic.BIZ_OPERATION,
    BaseTopic.BATCH_INSTALL_BIZ_RESPONSE,
)


def _check_segment(what: str, value: str) -> str:
    if not value or any(char in value for char in "/+#\x00"):
        raise ValueError(f"{what} {value!r} cannot be used in an MQTT topic segment")
    return value


def env_root(env: str) -> str:
    """``koupleless_<env>``. The env is used as given: the base lower-cases its own."""
    return TOPIC_PREFIX + _check_segment("env", env)


def command_topic(env: str, identity: str, command: ArkletCommand | str) -> str:
    """``koupleless_<env>/<id>/<command>``: where the controller sends a command."""
    return f"{env_root(env)}/{_check_segment('identity', identity)}/{command}"


def base_topic(env: str, identity: str, kind: BaseTopic | str) -> str:
    """``koupleless_<env>/<id>/base/<kind>``."""
    return f"{env_root(env)}/{_check_segment('identity', identity)}/{BASE_SEGMENT}/{kind}"


def base_subscriptions(env: str, identity: str) -> list[str]:
    """What a base subscribes on every connect: its commands and its baseline."""
    return [
        f"{env_root(env)}/{_check_segment('identity', identity)}/+",
        base_topic(env, identity, BaseTopic.BASELINE),
    ]


def controller_subscriptions(env: str) -> list[str]:
    """What the controller subscribes on every connect: all heartbeats and baseline queries."""
    return [
        f"{env_root(env)}/+/{BASE_SEGMENT}/{BaseTopic.HEART}",
        f"{env_root(env)}/+/{BASE_SEGMENT}/{BaseTopic.QUERY_BASELINE}",
    ]


def all_base_messages(env: str) -> str:
    """One wildcard for every base -> controller message (and ``baseline``) of an env."""
    return f"{env_root(env)}/+/{BASE_SEGMENT}/+"


def per_base_subscriptions(env: str, identity: str) -> list[str]:
    return [base_topic(env, identity, kind) for kind in PER_BASE_TOPICS]


@dataclass(frozen=True)
class ParsedTopic:
    """A topic split into its parts. ``is_base`` is True for ``.../base/<kind>``."""

    env: str
    identity: str
    name: str
    is_base: bool

    @property
    def command(self) -> ArkletCommand | None:
        """The arklet command of a three-level topic, None if unknown or a base topic."""
        if self.is_base:
            return None
        try:
            return ArkletCommand(self.name)
        except ValueError:
            return None

    @property
    def base_kind(self) -> BaseTopic | None:
        """The kind of a four-level ``base/`` topic, None if unknown or a command topic."""
        if not self.is_base:
            return None
        try:
            return BaseTopic(self.name)
        except ValueError:
            return None


def parse_topic(topic: str) -> ParsedTopic:
    """Split a koupleless topic; raises :class:`ProtocolError` for anything else."""
    parts = topic.split("/")
    root = parts[0]
    if not root.startswith(TOPIC_PREFIX) or len(root) == len(TOPIC_PREFIX):
        raise ProtocolError("topic", f"{topic!r} does not start with {TOPIC_PREFIX}<env>/")
    env = root[len(TOPIC_PREFIX) :]
    if len(parts) == 3 and parts[1] and parts[2]:
        return ParsedTopic(env=env, identity=parts[1], name=parts[2], is_base=False)
    if len(parts) == 4 and parts[1] and parts[2] == BASE_SEGMENT and parts[3]:
        return ParsedTopic(env=env, identity=parts[1], name=parts[3], is_base=True)
    raise ProtocolError(
        "topic", f"{topic!r} is neither koupleless_<env>/<id>/<cmd> nor .../<id>/base/<kind>"
    )
