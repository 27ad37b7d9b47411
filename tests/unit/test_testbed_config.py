"""What the testbed prints and how it stamps its binaries."""

from __future__ import annotations

import shlex
import subprocess

from module_controller.testbed import binaries, testbed
from module_controller.testbed.mosquitto import BrokerInfo
from module_controller.testbed.tls import TlsFiles


def _state(**overrides: object) -> testbed.TestbedState:
    values: dict[str, object] = {
        "state_dir": "/tmp/state dir",
        "kubeconfig": "/tmp/state dir/kubeconfig",
        "admin_token": "token",
        "bin_dir": "/cache/kubernetes/v1",
        "broker": BrokerInfo(host="127.0.0.1", port=1883, username="mc-1", password="p$ss'w"),
        "kubernetes_version": binaries.KUBERNETES_VERSION,
        "etcd_version": binaries.ETCD_VERSION,
        "processes": [],
        "startup_seconds": 1.0,
    }
    values.update(overrides)
    return testbed.TestbedState.model_validate(values)


def test_shell_exports_survive_a_shell_round_trip() -> None:
    script = testbed.shell_exports(_state())
    shown = subprocess.run(
        [
            "bash",
            "-c",
            f'{script}\nprintf \'%s\\n\' "$KUBECONFIG" "$MQTT_BROKER" '
            '"$MQTT_PORT" "$MQTT_USERNAME" "$MQTT_PASSWORD" "${PATH%%:*}"',
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert shown == [
        "/tmp/state dir/kubeconfig",
        "127.0.0.1",
        "1883",
        "mc-1",
        "p$ss'w",
        "/cache/kubernetes/v1",
    ]


def test_shell_exports_name_every_variable_of_the_contract() -> None:
    names = [
        shlex.split(line)[1].split("=")[0] for line in testbed.shell_exports(_state()).splitlines()
    ]
    assert names[:5] == ["KUBECONFIG", "MQTT_BROKER", "MQTT_PORT", "MQTT_USERNAME", "MQTT_PASSWORD"]


def test_a_broker_only_testbed_exports_no_kubeconfig() -> None:
    script = testbed.shell_exports(_state(kubeconfig=None, bin_dir=None))
    assert "KUBECONFIG" not in script and "PATH" not in script
    assert "MQTT_PORT=1883" in script


def test_binaries_are_stamped_with_the_pinned_version() -> None:
    flags = binaries._version_ldflags("1.36.3")
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        assert f"-X {package}.gitVersion=v1.36.3" in flags
        assert f"-X {package}.gitMajor=1" in flags
        assert f"-X {package}.gitMinor=36" in flags


def test_the_wrapper_module_pins_the_version_constant() -> None:
    # The pinned release, not KUBERNETES_VERSION: a matrix run may point that elsewhere.
    gomod = binaries.GOMOD_DIR / "kubernetes" / "go.mod"
    assert binaries.required_version(gomod, "k8s.io/kubernetes") == (
        f"v{binaries.PINNED_KUBERNETES_VERSION}"
    )
    staging = f"v0.{binaries.PINNED_KUBERNETES_VERSION.split('.', 1)[1]}"
    assert f"k8s.io/api => k8s.io/api {staging}" in gomod.read_text()
    etcd = binaries.GOMOD_DIR / "etcd" / "go.mod"
    assert binaries.required_version(etcd, "go.etcd.io/etcd/server/v3") == (
        f"v{binaries.ETCD_VERSION}"
    )


def test_the_binary_cache_lives_outside_the_repository(monkeypatch: object) -> None:
    root = binaries.cache_root()
    repository = binaries.GOMOD_DIR.parents[2]
    assert repository not in root.parents


def test_a_tls_testbed_exports_its_tls_listener_and_the_client_certificate() -> None:
    tls = TlsFiles(
        ca="/s/ca.crt",
        server_crt="/s/broker.crt",
        server_key="/s/broker.key",
        client_crt="/s/client.crt",
        client_key="/s/client.key",
        stranger_crt="/s/stranger.crt",
        stranger_key="/s/stranger.key",
        other_ca="/s/other-ca.crt",
        expired_crt="/s/expired-client.crt",
        expired_key="/s/expired-client.key",
    )
    broker = BrokerInfo(
        host="127.0.0.1", port=1883, username="u", password="p", tls_port=8883, tls=tls
    )
    script = testbed.shell_exports(_state(broker=broker))
    shown = subprocess.run(
        [
            "bash",
            "-c",
            f'{script}\necho "$MQTT_PORT $MQTT_CA_PATH $MQTT_CLIENT_CRT_PATH '
            '$MQTT_CLIENT_KEY_PATH"',
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert shown == ["8883", "/s/ca.crt", "/s/client.crt", "/s/client.key"]
