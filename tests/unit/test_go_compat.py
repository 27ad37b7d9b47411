"""Every variable of the Go Module Controller V2 is accepted: with the Go meaning, or ignored
with a reason that `run --help` shows and the start-up log repeats. A Go-style controller
manifest loads, and a Go-style module Deployment lands on our nodes."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from module_controller import cli, go_compat, naming, run_cli
from module_controller.kubelet_proxy.tls import make_self_signed
from module_controller.modules.baseline import template_targets
from module_controller.modules.spec import pod_modules
from module_controller.protocol import BaseMetadata, BaseStatus
from module_controller.settings import Settings, SettingsError, load_settings
from module_controller.vnode_manifest import node_labels, node_taints

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "samples" / "go-quick-start"

# Every variable the Go controller (v2.2.0 and its virtual-kubelet v0.3.10) reads or documents:
# ../shared/reference/upstream-go-controller.md §5.1. Written out here, not taken from
# go_compat, so that a name dropped there fails this test.
ALL_GO_NAMES = (
    "CLIENT_ID",
    "ENV",
    "NAMESPACE",
    "IS_CLUSTER",
    "WORKLOAD_MAX_LEVEL",
    "VNODE_WORKER_NUM",
    "ENABLE_MQTT_TUNNEL",
    "ENABLE_HTTP_TUNNEL",
    "HTTP_TUNNEL_LISTEN_PORT",
    "MQTT_BROKER",
    "MQTT_PORT",
    "MQTT_USERNAME",
    "MQTT_PASSWORD",
    "MQTT_CLIENT_PREFIX",
    "MQTT_CA_PATH",
    "MQTT_CLIENT_CRT_PATH",
    "MQTT_CLIENT_KEY_PATH",
    "REPORT_HOOKS",
    "ENABLE_MODULE_REPLICAS_SYNC_WITH_BASE",
    "KUBELET_PROXY_ENABLED",
    "KUBELET_PROXY_PORT",
    "TRACKER_CONFIG_PATH",
    "ENABLE_MODULE_DEPLOYMENT_CONTROLLER",
)
SETTING_NAMES = {name.upper() for name in Settings.model_fields}


@pytest.fixture(autouse=True)
def _no_go_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from the operator's defaults, whatever this shell exports."""
    for name in list(os.environ):
        if name.upper() in {*ALL_GO_NAMES, *SETTING_NAMES}:
            monkeypatch.delenv(name)


# --- which names, and where ---------------------------------------------------------------


def test_every_go_name_is_a_setting_or_ignored_never_both() -> None:
    with_meaning = set(go_compat.GO_NAMES_WITH_MEANING)
    ignored = set(go_compat.IGNORED_GO_SETTINGS)
    assert with_meaning | ignored == set(ALL_GO_NAMES)
    assert with_meaning & ignored == set()
    assert with_meaning <= SETTING_NAMES
    assert ignored & SETTING_NAMES == set()


def test_run_help_lists_every_go_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    section = text[text.index("the Go Module Controller V2's variables:") :]
    for name in go_compat.GO_NAMES_WITH_MEANING:
        assert f"\n  {name} " in text, name  # in the settings list, with its meaning
    for name, reason in go_compat.IGNORED_GO_SETTINGS.items():
        assert f"    {name}: " in section, name
        assert reason.split()[-1] in section, name  # the reason too (its last word)
    assert "strconv.ParseBool" in section


# --- Go booleans ----------------------------------------------------------------------------


@pytest.mark.parametrize("word", ["true", "TRUE", "True", "t", "T", "1", " true\n"])
def test_go_true_words_enable(monkeypatch: pytest.MonkeyPatch, word: str) -> None:
    monkeypatch.setenv("ENABLE_HTTP_TUNNEL", word)
    assert load_settings().enable_http_tunnel is True


@pytest.mark.parametrize("word", ["false", "FALSE", "False", "f", "F", "0", ""])
def test_go_false_words_and_empty_disable(monkeypatch: pytest.MonkeyPatch, word: str) -> None:
    monkeypatch.setenv("KUBELET_PROXY_ENABLED", word)
    assert load_settings().kubelet_proxy_enabled is False


@pytest.mark.parametrize("word", ["yes", "on", "tRuE", "2", "enabled"])
def test_any_other_word_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, word: str
) -> None:
    # The Go controller reads these as false without a word; a typo must not disable a tunnel.
    monkeypatch.setenv("ENABLE_HTTP_TUNNEL", word)
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert str(error.value) == (
        f"invalid settings: ENABLE_HTTP_TUNNEL: {word!r} is not a boolean: use true or false "
        "(also 1, t, T, TRUE, True, 0, f, F, FALSE, False; empty is false)"
    )


def test_a_bool_given_in_code_stays_as_it_is() -> None:
    assert Settings(kubelet_proxy_enabled=True).kubelet_proxy_enabled is True


# --- tunnels -----------------------------------------------------------------------------


def test_mqtt_alone_by_default() -> None:
    settings = load_settings()
    assert (settings.enable_mqtt_tunnel, settings.enable_http_tunnel) == (True, False)


def test_a_go_manifest_enabling_only_http_runs_only_http(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Go quick-start sets ENABLE_HTTP_TUNNEL=true only: MQTT stays off, as in Go."""
    monkeypatch.setenv("ENABLE_HTTP_TUNNEL", "true")
    settings = load_settings()
    assert (settings.enable_mqtt_tunnel, settings.enable_http_tunnel) == (False, True)


def test_both_tunnels_when_both_are_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENABLE_HTTP_TUNNEL", "1")
    monkeypatch.setenv("ENABLE_MQTT_TUNNEL", "TRUE")
    settings = load_settings()
    assert (settings.enable_mqtt_tunnel, settings.enable_http_tunnel) == (True, True)


@pytest.mark.parametrize("mqtt", ["false", ""])
def test_no_tunnel_is_refused_naming_both(monkeypatch: pytest.MonkeyPatch, mqtt: str) -> None:
    monkeypatch.setenv("ENABLE_MQTT_TUNNEL", mqtt)
    with pytest.raises(SettingsError, match="ENABLE_MQTT_TUNNEL and ENABLE_HTTP_TUNNEL"):
        load_settings()


def _run_operator(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        name: value
        for name, value in os.environ.items()
        if name.upper() not in {*ALL_GO_NAMES, *SETTING_NAMES}
        and name not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")
    }
    return subprocess.run(
        [sys.executable, "-m", "module_controller.cli", "run"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"ENABLE_MQTT_TUNNEL": "false"},
            "module-controller: invalid settings: ENABLE_MQTT_TUNNEL and ENABLE_HTTP_TUNNEL are "
            "both false: set at least one to true (the bases speak MQTT or HTTP)",
        ),
        (
            {"ENABLE_HTTP_TUNNEL": "yes"},
            "module-controller: invalid settings: ENABLE_HTTP_TUNNEL: 'yes' is not a boolean: "
            "use true or false (also 1, t, T, TRUE, True, 0, f, F, FALSE, False; empty is "
            "false)",
        ),
    ],
)
def test_a_bad_tunnel_setting_is_one_line_and_exit_2(env: dict[str, str], line: str) -> None:
    done = _run_operator(**env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [line]


# --- the kubelet proxy: NAMESPACE, the address, the port, the client CA ----------------------


def test_namespace_is_the_pods_own_unless_set_and_default_outside_a_pod(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    own = tmp_path / "namespace"
    monkeypatch.setattr(go_compat, "SERVICE_ACCOUNT_NAMESPACE_FILE", own)
    assert load_settings().namespace == "default"  # not in a pod: the Go default
    own.write_text("module-controller")
    assert load_settings().namespace == "module-controller"
    monkeypatch.setenv("NAMESPACE", "kubelet-proxy")
    assert load_settings().namespace == "kubelet-proxy"


def test_the_proxy_address_is_an_ip_and_empty_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBELET_PROXY_ADDRESS", "")
    assert load_settings().kubelet_proxy_address is None
    monkeypatch.setenv("KUBELET_PROXY_ADDRESS", "fd00::a")
    assert str(load_settings().kubelet_proxy_address) == "fd00::a"
    monkeypatch.setenv("KUBELET_PROXY_ADDRESS", "proxy.example")
    with pytest.raises(SettingsError, match="KUBELET_PROXY_ADDRESS: value is not a valid IPv4"):
        load_settings()


def test_the_proxy_port_may_be_0_only_while_the_proxy_is_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KUBELET_PROXY_PORT", "0")
    assert load_settings().kubelet_proxy_port == 0
    done = _run_operator(KUBELET_PROXY_ENABLED="true", KUBELET_PROXY_PORT="0")
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "module-controller: invalid settings: KUBELET_PROXY_PORT=0 with "
        "KUBELET_PROXY_ENABLED=true: nodes advertise this port to the API server, so it must "
        "be a fixed one (default 10250)"
    ]


def test_the_client_ca_must_be_a_readable_pem_certificate(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.crt"
    monkeypatch.setenv("KUBELET_PROXY_CLIENT_CA_PATH", str(missing))
    with pytest.raises(SettingsError, match=f"KUBELET_PROXY_CLIENT_CA_PATH: cannot read {missing}"):
        load_settings()
    garbage = tmp_path / "ca.crt"
    garbage.write_text("not a certificate\n")
    monkeypatch.setenv("KUBELET_PROXY_CLIENT_CA_PATH", str(garbage))
    with pytest.raises(SettingsError, match=f"KUBELET_PROXY_CLIENT_CA_PATH {garbage} is not a PEM"):
        load_settings()
    crt, _ = make_self_signed(tmp_path)
    monkeypatch.setenv("KUBELET_PROXY_CLIENT_CA_PATH", str(crt))
    assert load_settings().kubelet_proxy_client_ca_path == crt


# --- ignored names at start -----------------------------------------------------------------


def test_each_ignored_name_set_is_one_log_line_with_its_reason() -> None:
    notes = go_compat.ignored_go_settings_notes({"VNODE_WORKER_NUM": "8", "ENV": "prod"})
    assert notes == [
        "VNODE_WORKER_NUM=8 is accepted and ignored: "
        + go_compat.IGNORED_GO_SETTINGS["VNODE_WORKER_NUM"]
        + "."
    ]


def test_nothing_is_said_when_no_ignored_name_is_set() -> None:
    assert go_compat.ignored_go_settings_notes({"ENV": "dev", "MQTT_PORT": "1883"}) == []


def test_webhook_tokens_do_not_reach_the_log() -> None:
    token = "https://oapi.dingtalk.com/robot/send?access_token=s3cr3t"
    (note,) = go_compat.ignored_go_settings_notes({"REPORT_HOOKS": token})
    assert note.startswith("REPORT_HOOKS (value not shown) is accepted and ignored: ")
    assert "s3cr3t" not in note


def test_names_match_in_any_case_as_settings_do() -> None:
    (note,) = go_compat.ignored_go_settings_notes({"is_cluster": "true"})
    assert note.startswith("is_cluster=true is accepted and ignored: ")


@pytest.fixture
def _kopf_log_level_restored() -> Iterator[None]:
    """`run` quiets Kopf's per-object logger for the whole process; other tests log to it."""
    logger = logging.getLogger("kopf.objects")
    level = logger.level
    try:
        yield
    finally:
        logger.setLevel(level)


@pytest.mark.usefixtures("_kopf_log_level_restored")
def test_run_logs_the_ignored_names_at_start(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def cluster() -> str:
        return "a fake cluster"

    async def operator(**_: Any) -> None:
        return None

    monkeypatch.setattr(run_cli, "check_cluster_config", cluster)
    monkeypatch.setattr(run_cli, "configure_logging", lambda *_: None)
    monkeypatch.setattr(kopf, "operator", operator)
    monkeypatch.setenv("WORKLOAD_MAX_LEVEL", "3")
    caplog.set_level(logging.INFO, logger=run_cli.__name__)
    assert run_cli.run(argparse.Namespace()) == 0
    said = [r.getMessage() for r in caplog.records if r.name == run_cli.__name__]
    assert (
        "WORKLOAD_MAX_LEVEL=3 is accepted and ignored: "
        + (go_compat.IGNORED_GO_SETTINGS["WORKLOAD_MAX_LEVEL"] + ".")
        in said
    )


# --- the Go-style samples ---------------------------------------------------------------------


def _only(path: Path, kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in yaml.safe_load_all(path.read_text()) if doc["kind"] == kind]
    assert isinstance(found, dict)
    return found


# What the API server fills in for the sample's valueFrom entries.
_VALUE_FROM = {
    "metadata.name": "module-controller-7d9f8-abcde",
    "metadata.namespace": "module-controller",
}


def _sample_env() -> dict[str, str]:
    deployment = _only(SAMPLES / "module-controller.yaml", "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {}
    for entry in container["env"]:
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
        elif "fieldRef" in entry["valueFrom"]:
            env[entry["name"]] = _VALUE_FROM[entry["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            env[entry["name"]] = "from-a-secret"  # secretKeyRef
    return env


def test_the_go_style_controller_manifest_sets_every_go_name_and_loads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = _sample_env()
    assert set(ALL_GO_NAMES) <= set(env), "the sample shows every Go variable"
    assert set(env) <= set(ALL_GO_NAMES) | SETTING_NAMES
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.env == "dev"
    assert settings.client_id == _VALUE_FROM["metadata.name"]
    assert (settings.enable_mqtt_tunnel, settings.enable_http_tunnel) == (True, True)
    assert settings.mqtt_ca_path is None  # empty: no TLS, as in Go
    assert settings.namespace == "module-controller"  # the Go meaning: the pod's namespace
    assert settings.module_selector == "virtual-kubelet.koupleless.io/component=module"
    assert naming.node_name(settings.node_name_template, "10.0.0.5", settings.env) == (
        "vnode.10.0.0.5.dev"
    )
    noted = go_compat.ignored_go_settings_notes(env)
    assert [note.split("=")[0].split(" ")[0] for note in noted] == list(
        go_compat.IGNORED_GO_SETTINGS
    )


def _tolerated(taint: dict[str, str], tolerations: list[dict[str, str]]) -> bool:
    return any(
        t.get("key") == taint["key"]
        and (t.get("operator") == "Exists" or t.get("value") == taint["value"])
        and t.get("effect", taint["effect"]) == taint["effect"]
        for t in tolerations
    )


def test_the_go_style_module_lands_on_our_node_of_such_a_base(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in _sample_env().items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    deployment = _only(SAMPLES / "module.yaml", "Deployment")
    template = deployment["spec"]["template"]
    assert template["metadata"]["labels"][settings.module_label] == "module"

    base = BaseStatus(
        base_metadata=BaseMetadata(identity="10.0.0.5", name="base", version="1.1.1"),
        local_ip="10.0.0.5",
        local_host_name="base-7d9f",
    )
    node = naming.node_name(settings.node_name_template, "10.0.0.5", settings.env)
    spec = template["spec"]
    assert template_targets(spec, node_labels(node, base, settings))
    assert all(_tolerated(taint, spec["tolerations"]) for taint in node_taints(settings))
    assert len(node_taints(settings)) == 2  # NODE_ENV_TAINT=true: the Go controller's taints

    modules = pod_modules({"spec": spec})
    assert modules.valid
    assert [m.key for m in modules.modules] == ["biz1:0.0.1-SNAPSHOT"]
