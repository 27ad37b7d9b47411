"""Topic names and parsing (spec §2.2)."""

from __future__ import annotations

import pytest

from module_controller.protocol import ProtocolError
from module_controller.protocol.arklet import ArkletCommand
from module_controller.protocol.topics import (
    BaseTopic,
    all_base_messages,
    base_subscriptions,
    base_topic,
    command_topic,
    controller_subscriptions,
    parse_topic,
    per_base_subscriptions,
)


def test_command_and_base_topics_have_the_go_layout() -> None:
    assert command_topic("dev", "10.0.0.12", ArkletCommand.INSTALL_BIZ) == (
        "koupleless_dev/10.0.0.12/installBiz"
    )
    assert base_topic("dev", "10.0.0.12", BaseTopic.HEART) == "koupleless_dev/10.0.0.12/base/heart"
    assert base_topic("dev", "x", BaseTopic.BATCH_INSTALL_BIZ_RESPONSE) == (
        "koupleless_dev/x/base/batchInstallBizResponse"
    )


def test_subscriptions_of_each_side() -> None:
    assert base_subscriptions("dev", "id1") == [
        "koupleless_dev/id1/+",
        "koupleless_dev/id1/base/baseline",
    ]
    assert controller_subscriptions("dev") == [
        "koupleless_dev/+/base/heart",
        "koupleless_dev/+/base/queryBaseline",
    ]
    assert all_base_messages("dev") == "koupleless_dev/+/base/+"
    assert per_base_subscriptions("dev", "id1") == [
        "koupleless_dev/id1/base/health",
        "koupleless_dev/id1/base/simpleBiz",
        "koupleless_dev/id1/base/biz",
        "koupleless_dev/id1/base/bizOperation",
        "koupleless_dev/id1/base/batchInstallBizResponse",
    ]


def test_parse_command_and_base_topics() -> None:
    command = parse_topic("koupleless_dev/10.0.0.12/uninstallBiz")
    assert (command.env, command.identity, command.is_base) == ("dev", "10.0.0.12", False)
    assert command.command is ArkletCommand.UNINSTALL_BIZ
    assert command.base_kind is None

    reply = parse_topic("koupleless_prod/abc/base/simpleBiz")
    assert (reply.env, reply.identity, reply.is_base) == ("prod", "abc", True)
    assert reply.base_kind is BaseTopic.SIMPLE_BIZ
    assert reply.command is None


def test_unknown_names_parse_but_are_not_classified() -> None:
    assert parse_topic("koupleless_dev/x/switchBiz2").command is None
    assert parse_topic("koupleless_dev/x/base/nothing").base_kind is None


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "koupleless_/x/health",
        "other_dev/x/health",
        "koupleless_dev/x",
        "koupleless_dev//health",
        "koupleless_dev/x/notbase/heart",
        "koupleless_dev/x/base/heart/extra",
    ],
)
def test_parse_rejects_foreign_topics(topic: str) -> None:
    with pytest.raises(ProtocolError):
        parse_topic(topic)


@pytest.mark.parametrize("bad", ["a/b", "+", "#", ""])
def test_builders_refuse_segments_that_break_topics(bad: str) -> None:
    with pytest.raises(ValueError):
        command_topic("dev", bad, ArkletCommand.HEALTH)
    with pytest.raises(ValueError):
        base_topic(bad, "id", BaseTopic.HEART)
