"""Process management of the testbed: fail fast with the log, never kill a stranger."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from module_controller.testbed import process


def test_a_component_that_dies_fails_fast_with_its_log_tail(tmp_path: Path) -> None:
    child, record = process.start(
        "doomed",
        ["sh", "-c", "echo 'listen tcp: address already in use'; exit 3"],
        tmp_path / "doomed.log",
    )
    began = time.monotonic()
    with pytest.raises(process.ComponentFailed) as failure:
        process.wait_ready(child, record, process.ReadyProbe(lambda: False, timeout=30))
    assert time.monotonic() - began < 10, "a dead component must not use the whole budget"
    assert "exited with code 3" in str(failure.value)
    assert "address already in use" in str(failure.value)


def test_a_component_that_never_gets_ready_times_out_with_its_log_tail(tmp_path: Path) -> None:
    child, record = process.start(
        "sleepy", ["sh", "-c", "echo still warming up; sleep 30"], tmp_path / "sleepy.log"
    )
    try:
        with pytest.raises(process.ComponentFailed) as failure:
            process.wait_ready(
                child, record, process.ReadyProbe(lambda: False, timeout=0.5, interval=0.05)
            )
        assert "not ready after" in str(failure.value)
        assert "still warming up" in str(failure.value)
    finally:
        process.stop(record)
    assert not process.is_running(record)


def test_stop_terminates_a_running_component(tmp_path: Path) -> None:
    child, record = process.start("sleeper", ["sleep", "60"], tmp_path / "sleeper.log")
    assert process.is_running(record)
    process.stop(record)
    assert not process.is_running(record)
    assert child.poll() is not None


def test_stop_leaves_alone_a_process_that_reused_the_pid(tmp_path: Path) -> None:
    child, record = process.start("sleeper", ["sleep", "60"], tmp_path / "sleeper.log")
    stranger = record.model_copy(update={"start_ticks": record.start_ticks - 1})
    try:
        assert not process.is_running(stranger)
        process.stop(stranger)
        assert child.poll() is None, "stop() signalled a process it did not start"
    finally:
        process.stop(record)


def test_readiness_probe_errors_count_as_not_ready_yet(tmp_path: Path) -> None:
    attempts = []

    def probe() -> bool:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionRefusedError
        return True

    child, record = process.start(
        "server", [sys.executable, "-c", "import time; time.sleep(30)"], tmp_path / "server.log"
    )
    try:
        process.wait_ready(child, record, process.ReadyProbe(probe, timeout=10, interval=0.01))
        assert len(attempts) == 3
    finally:
        process.stop(record)


def test_free_port_never_hands_out_a_port_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel may offer a port again before its first taker bound it."""
    first = process.free_port()
    offers = iter([first, first, first + 1])

    class Offering:
        def __enter__(self) -> Offering:
            return self

        def __exit__(self, *_: object) -> None:
            pass

        def bind(self, address: tuple[str, int]) -> None:
            pass

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", next(offers))

    monkeypatch.setattr("module_controller.testbed.process.socket.socket", Offering)
    assert process.free_port() == first + 1
