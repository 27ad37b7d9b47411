"""Settings come from the Go controller's environment variables and fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from module_controller.settings import SettingsError, load_settings
from module_controller.settings_help import describe_settings


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
        ("HTTP_TUNNEL_LISTEN_PORT", "http", "HTTP_TUNNEL_LISTEN_PORT"),
        ("KUBELET_PROXY_PORT", "-1", "KUBELET_PROXY_PORT"),
        ("KUBELET_PROXY_TLS_CRT_PATH", "/nonexistent/tls.crt", "/nonexistent/tls.crt"),
        ("NODE_ENV_TAINT", "sometimes", "NODE_ENV_TAINT"),
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


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"ENABLE_HTTP_TUNNEL": "true", "HTTP_TUNNEL_LISTEN_PORT": "8081"},
            "HTTP_TUNNEL_LISTEN_PORT and HEALTH_PORT are both 8081: use two ports",
        ),
        (
            {"KUBELET_PROXY_ENABLED": "true", "KUBELET_PROXY_PORT": "9090"},
            "KUBELET_PROXY_PORT and METRICS_PORT are both 9090: use two ports",
        ),
        (
            {
                "ENABLE_HTTP_TUNNEL": "true",
                "KUBELET_PROXY_ENABLED": "true",
                "KUBELET_PROXY_PORT": "7777",
            },
            "KUBELET_PROXY_PORT and HTTP_TUNNEL_LISTEN_PORT are both 7777: use two ports",
        ),
    ],
)
def test_two_servers_on_one_port_are_refused(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert str(error.value) == f"invalid settings: {message}"


def test_ports_of_servers_that_are_off_or_shared_on_purpose_are_fine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KUBELET_PROXY_PORT", "9090")  # the proxy is off
    monkeypatch.setenv("HEALTH_PORT", "9090")  # one listener serves /metrics and /healthz
    monkeypatch.setenv("HTTP_TUNNEL_LISTEN_PORT", "0")
    monkeypatch.setenv("ENABLE_HTTP_TUNNEL", "true")
    monkeypatch.setenv("METRICS_PORT", "9090")
    assert load_settings().health_port == 9090


def test_the_kubelet_proxy_certificate_and_key_go_together(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    crt = tmp_path / "tls.crt"
    crt.write_text("not a certificate\n")
    monkeypatch.setenv("KUBELET_PROXY_TLS_CRT_PATH", str(crt))
    with pytest.raises(SettingsError) as alone:
        load_settings()
    assert str(alone.value) == (
        "invalid settings: KUBELET_PROXY_TLS_CRT_PATH and KUBELET_PROXY_TLS_KEY_PATH go together"
    )
    monkeypatch.setenv("KUBELET_PROXY_TLS_KEY_PATH", str(crt))
    with pytest.raises(SettingsError) as garbage:
        load_settings()
    assert f"KUBELET_PROXY_TLS_CRT_PATH {crt} and KUBELET_PROXY_TLS_KEY_PATH {crt} are not" in (
        str(garbage.value)
    )
    monkeypatch.setenv("KUBELET_PROXY_TLS_CRT_PATH", "")  # empty is unset, as for MQTT_CA_PATH
    monkeypatch.setenv("KUBELET_PROXY_TLS_KEY_PATH", "")
    assert load_settings().kubelet_proxy_tls_crt_path is None


def test_help_writes_defaults_as_a_manifest_would() -> None:
    text = describe_settings()
    assert "(default: true; false when ENABLE_HTTP_TUNNEL=true)" in text
    assert "(default: a new UUID)" in text
    assert "NODE_ENV_TAINT" in text and "(default: false)" in text
    assert "(default: False)" not in text and "(default: True)" not in text


def test_broker_timings_are_checked_only_when_there_is_a_broker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A liveness time shorter than the broker's suspect time is fine without MQTT: HTTP
    # bases are heard directly, nothing waits for a broker to be suspected.
    monkeypatch.setenv("BASE_NOT_READY_SECONDS", "8")
    monkeypatch.setenv("BASE_DEAD_SECONDS", "16")
    monkeypatch.setenv("ENABLE_HTTP_TUNNEL", "true")
    settings = load_settings()
    assert (settings.enable_mqtt_tunnel, settings.enable_http_tunnel) == (False, True)
    monkeypatch.setenv("ENABLE_MQTT_TUNNEL", "true")
    with pytest.raises(SettingsError, match="BROKER_SUSPECT_SECONDS must be shorter"):
        load_settings()
