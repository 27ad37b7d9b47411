"""Settings come from the Go controller's environment variables and fail clearly."""

from __future__ import annotations

import pytest

from module_controller.settings import SettingsError, describe_settings, load_settings


def test_defaults_match_the_go_controller(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ENV", "MQTT_BROKER", "MQTT_PORT", "CLIENT_ID", "MQTT_CLIENT_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.env == "dev"
    assert settings.mqtt_port == 1883
    assert settings.mqtt_client_prefix == "koupleless"
    assert settings.base_not_ready_seconds == 25
    assert settings.base_dead_seconds == 60
    assert settings.message_max_age_seconds == 10
    assert settings.module_selector == "module-controller.koupleless.io/component=module"
    assert len(settings.client_id) == 36


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENV", "prod")
    monkeypatch.setenv("MQTT_BROKER", "broker.local")
    monkeypatch.setenv("MQTT_PORT", "8883")
    monkeypatch.setenv("CLIENT_ID", "mc-1")
    monkeypatch.setenv("MODULE_LABEL", "virtual-kubelet.koupleless.io/component")
    settings = load_settings()
    assert (settings.env, settings.mqtt_broker, settings.mqtt_port, settings.client_id) == (
        "prod",
        "broker.local",
        8883,
        "mc-1",
    )
    assert settings.module_selector == "virtual-kubelet.koupleless.io/component=module"


@pytest.mark.parametrize(
    ("name", "value", "named"),
    [
        ("MQTT_PORT", "not-a-port", "MQTT_PORT"),
        ("MQTT_PORT", "70000", "MQTT_PORT"),
        ("ENV", "has/slash", "ENV"),
        ("NODE_NAME_TEMPLATE", "node-without-identity", "NODE_NAME_TEMPLATE"),
        ("BASE_DEAD_SECONDS", "5", "BASE_DEAD_SECONDS"),
        ("MODULE_LABEL", "app", "MODULE_LABEL"),
    ],
)
def test_a_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, named: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=named):
        load_settings()


def test_help_lists_every_variable_with_its_default() -> None:
    text = describe_settings()
    for name in (
        "ENV",
        "MQTT_BROKER",
        "MQTT_PORT",
        "MQTT_USERNAME",
        "MQTT_PASSWORD",
        "MQTT_CLIENT_PREFIX",
        "MQTT_CA_PATH",
        "MQTT_CLIENT_CRT_PATH",
        "MQTT_CLIENT_KEY_PATH",
        "CLIENT_ID",
        "BASE_NOT_READY_SECONDS",
    ):
        assert f"  {name} " in text
    assert "(default: 'dev')" in text
