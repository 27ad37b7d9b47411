"""The operator as a child process: its environment, its diagnosis, how it is stopped."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from module_controller.testbed import operator_process
from module_controller.testbed.mosquitto import BrokerInfo
from module_controller.testbed.operator_process import OperatorProcess, operator_environment
from module_controller.testbed.process import ComponentFailed

BROKER = BrokerInfo(host="127.0.0.1", port=1883, username="u", password="p")


def test_the_environment_names_the_cluster_and_broker_and_settings_win() -> None:
    environment = operator_environment(
        "/k/config",
        "e2eabc",
        BROKER,
        {"HEALTH_PORT": "8081", "ENV": "overridden"},
        inherited={"PATH": "/bin", "MQTT_PORT": "9999", "KUBECONFIG": "/old"},
    )
    assert environment == {
        "PATH": "/bin",
        "KUBECONFIG": "/k/config",
        "ENV": "overridden",
        "MQTT_BROKER": "127.0.0.1",
        "MQTT_PORT": "1883",
        "MQTT_USERNAME": "u",
        "MQTT_PASSWORD": "p",
        "METRICS_PORT": "0",
        "HEALTH_PORT": "8081",
    }


def test_readyz_needs_a_known_health_port(tmp_path: Path) -> None:
    environment = operator_environment("/k", "dev", BROKER, inherited={})
    with pytest.raises(ValueError, match="HEALTH_PORT"):
        _ = OperatorProcess(environment, tmp_path / "operator.log").readyz_url
    probed = OperatorProcess({**environment, "HEALTH_PORT": "18081"}, tmp_path / "operator.log")
    assert probed.readyz_url == "http://127.0.0.1:18081/readyz"


def test_an_operator_that_cannot_start_fails_the_wait_with_its_log(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-kubeconfig"
    environment = operator_environment(missing, "dev", BROKER, {"HEALTH_PORT": "1"})
    operator = OperatorProcess(environment, tmp_path / "operator.log")
    operator.start()
    try:
        with pytest.raises(ComponentFailed) as failure:
            operator.wait_ready(timeout=60)
        assert "exited with code 1" in str(failure.value)
        assert f"kubeconfig {missing} not found" in str(failure.value)
        assert not operator.alive and operator.exit_code == 1
        assert "not found" in operator.tail()
    finally:
        operator.stop()


def _wait_logged(operator: OperatorProcess, text: str) -> None:
    deadline = time.monotonic() + 10
    while text not in operator.log.read_text():
        assert time.monotonic() < deadline, f"{text!r} never logged:\n{operator.tail()}"
        time.sleep(0.02)


def test_stop_is_sigterm_then_sigkill_after_the_grace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in that ignores SIGTERM, as a stuck operator would.
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('up', flush=True); time.sleep(60)"
    )
    monkeypatch.setattr(operator_process, "COMMAND", (sys.executable, "-c", stubborn))
    operator = OperatorProcess({}, tmp_path / "operator.log")
    operator.start()
    _wait_logged(operator, "up")
    began = time.monotonic()
    operator.stop(grace=0.5)
    assert 0.5 <= time.monotonic() - began < 5
    assert operator.exit_code == -signal.SIGKILL


def test_stop_lets_an_operator_that_heeds_sigterm_exit_by_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        operator_process, "COMMAND", (sys.executable, "-c", "import time; time.sleep(60)")
    )
    operator = OperatorProcess({}, tmp_path / "operator.log")
    operator.start()
    operator.stop(grace=30)
    assert operator.exit_code == -signal.SIGTERM
    operator.stop()  # already gone: nothing to do
