"""A start that cannot work says why in one line and exits non-zero; one that fails leaves
nothing bound, so the next start works once the cause is fixed."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import pytest
from aiohttp import web
from kubernetes_asyncio import client

from module_controller import run_cli
from module_controller.handlers import lifecycle
from module_controller.observability.server import HealthChecks
from module_controller.operator_memo import OperatorMemo
from module_controller.runtime import Runtime
from module_controller.settings import Settings
from tests.unit.test_api_probe import VERSION
from tests.waiting import wait_for

# What the operator reads from the environment; each test sets only what it means to.
OPERATOR_VARIABLES = ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")


def _run_operator(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("MQTT_") and name not in OPERATOR_VARIABLES
    }
    return subprocess.run(
        [sys.executable, "-m", "module_controller.cli", "run", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("module-controller: "), lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MQTT_PORT": "abc"}, "MQTT_PORT"),
        ({"MQTT_BROKER": ""}, "MQTT_BROKER"),
        ({"MQTT_CA_PATH": "/nonexistent/ca.crt"}, "/nonexistent/ca.crt"),
    ],
)
def test_bad_settings_are_one_line_and_exit_2(env: dict[str, str], named: str) -> None:
    done = _run_operator(**env)
    assert done.returncode == 2, done.stderr
    assert named in _one_line_error(done)


def test_a_ca_file_that_is_no_certificate_is_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "ca.crt"
    garbage.write_text("not a certificate\n")
    done = _run_operator(MQTT_CA_PATH=str(garbage))
    assert done.returncode == 2, done.stderr
    assert f"MQTT_CA_PATH {garbage} is not a PEM CA certificate" in _one_line_error(done)


def test_help_does_not_crash_on_a_bad_setting() -> None:
    done = _run_operator("--help", MQTT_PORT="abc")
    if done.returncode == 0:
        assert "MQTT_PORT" in done.stdout
        assert "Traceback" not in done.stderr, done.stderr
    else:
        assert "MQTT_PORT" in _one_line_error(done)


def test_a_missing_kubeconfig_is_one_line_and_exit_1(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-kubeconfig"
    done = _run_operator(KUBECONFIG=str(missing))
    assert done.returncode == 1, done.stderr
    assert f"kubeconfig {missing} not found" in _one_line_error(done)


@pytest.mark.parametrize("content", ["garbage: [\n", "just words\n", "apiVersion: v1\n"])
def test_a_broken_kubeconfig_is_one_line_and_exit_1(tmp_path: Path, content: str) -> None:
    broken = tmp_path / "kubeconfig"
    broken.write_text(content)
    done = _run_operator(KUBECONFIG=str(broken))
    assert done.returncode == 1, done.stderr
    assert f"kubeconfig {broken}" in _one_line_error(done)


# --- start-up in the process: what a failed start leaves behind -----------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def fake_api() -> AsyncIterator[tuple[int, asyncio.Event]]:
    """An API server with no nodes and no pods; listing nodes waits for the event."""
    nodes_answer = asyncio.Event()

    async def nodes(_: web.Request) -> web.Response:
        await nodes_answer.wait()
        return web.json_response({"kind": "NodeList", "metadata": {}, "items": []})

    async def pods(_: web.Request) -> web.Response:
        return web.json_response({"kind": "PodList", "metadata": {}, "items": []})

    async def version(_: web.Request) -> web.Response:
        return web.json_response(VERSION)

    app = web.Application()
    app.add_routes(
        [
            web.get("/api/v1/nodes", nodes),
            web.get("/api/v1/pods", pods),
            web.get("/version/", version),
        ]
    )
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield runner.addresses[0][1], nodes_answer
    finally:
        nodes_answer.set()
        await runner.cleanup()


# Kopf's decorators type the handlers as taking every argument Kopf may pass; these are the
# plain coroutine functions underneath, called with what they use.
_start: Any = lifecycle.start
_stop: Any = lifecycle.stop


async def _get(port: int, path: str) -> tuple[int, str]:
    timeout = aiohttp.ClientTimeout(total=5)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, await response.text()


async def test_a_failed_start_frees_its_ports_and_the_next_start_works(
    monkeypatch: pytest.MonkeyPatch, fake_api: tuple[int, asyncio.Event]
) -> None:
    api_port, nodes_answer = fake_api
    health_port = _free_port()
    monkeypatch.setenv("METRICS_PORT", "0")
    monkeypatch.setenv("HEALTH_PORT", str(health_port))
    monkeypatch.setenv("MQTT_BROKER", "127.0.0.1")
    monkeypatch.setenv("MQTT_PORT", str(_free_port()))  # no broker: the tunnel keeps retrying
    target = {"port": _free_port()}  # first an API server that is not there

    async def api_client() -> client.ApiClient:
        configuration = client.Configuration(host=f"http://127.0.0.1:{target['port']}")
        return client.ApiClient(configuration)

    monkeypatch.setattr(lifecycle, "new_api_client", api_client)

    memo = OperatorMemo()
    for _ in range(2):  # the second failure must be the same, not "address already in use"
        with pytest.raises(kopf.PermanentError, match="cannot reach the Kubernetes API server"):
            await _start(settings=kopf.OperatorSettings(), memo=memo)
        assert memo.startup_failure is not None
        assert memo.startup_failure.startswith("start-up failed: cannot reach")
        with pytest.raises(aiohttp.ClientConnectionError):
            await _get(health_port, "/healthz")

    target["port"] = api_port  # the cause is fixed
    memo = OperatorMemo()
    starting = asyncio.create_task(_start(settings=kopf.OperatorSettings(), memo=memo))
    try:

        async def not_started_yet() -> bool:
            return await _get(health_port, "/healthz") == (
                503,
                "not running: start-up has not finished\n",
            )

        await wait_for(not_started_yet, timeout=10, what="/healthz to fail during start-up")
        nodes_answer.set()
        await asyncio.wait_for(starting, timeout=10)
        assert await _get(health_port, "/healthz") == (200, "ok\n")

        async def probed() -> bool:
            _, body = await _get(health_port, "/readyz")
            return "[+]kubernetes API server v1.36.3 answers\n" in body

        await wait_for(probed, timeout=10, what="the API probe's line in /readyz")
        readiness = memo.health
        assert readiness is not None
    finally:
        starting.cancel()
        await _stop(memo=memo)
    assert not readiness.alive
    with pytest.raises(aiohttp.ClientConnectionError):
        await _get(health_port, "/healthz")


# --- a fatal failure later on ------------------------------------------------------------


async def test_a_failed_background_task_is_fatal() -> None:
    """It fails /healthz and sets Kopf's stop flag (the process exits 1), no signal sent."""
    api = client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{_free_port()}"))
    health = HealthChecks(["kubernetes", "mqtt"])
    health.operator_started()
    stop_flag = asyncio.Event()
    runtime = Runtime(Settings(), api, health=health, stop_flag=stop_flag)

    async def broken() -> None:
        raise RuntimeError("lease bookkeeping broke")

    runtime._spawn(broken(), "leases")
    try:
        await asyncio.wait_for(stop_flag.wait(), timeout=5)
    finally:
        await runtime.stop()
        await api.close()
    assert health.fatal is not None and "lease bookkeeping broke" in health.fatal
    assert not health.alive


@pytest.fixture(autouse=True)
def _kopf_log_level_restored() -> Iterator[None]:
    """`run` quiets Kopf's per-object logger for the whole process; other tests log to it."""
    logger = logging.getLogger("kopf.objects")
    level = logger.level
    try:
        yield
    finally:
        logger.setLevel(level)  # setLevel, not assignment: it also clears the level cache


def _fake_operator(
    monkeypatch: pytest.MonkeyPatch, fill: Callable[[OperatorMemo], None], fails: bool = False
) -> None:
    """Replace Kopf's operator with one that checks how `run` calls it, lets `fill` play
    the handlers' part on the memo, then returns (or fails, as Kopf does on a bad start)."""

    async def cluster() -> str:
        return "a fake cluster"

    async def operator(**kwargs: Any) -> None:
        memo = kwargs["memo"]
        assert isinstance(memo, OperatorMemo)
        assert (kwargs["standalone"], kwargs["clusterwide"]) == (True, True)
        # The flag a fatal failure sets is the one Kopf watches: no signal to itself.
        assert memo.stop_flag is not None
        assert kwargs["stop_flag"] is memo.stop_flag
        fill(memo)
        if fails:
            raise RuntimeError("One or more handlers failed.")

    monkeypatch.setattr(run_cli, "check_cluster_config", cluster)
    monkeypatch.setattr(run_cli, "configure_logging", lambda *_: None)
    monkeypatch.setattr(kopf, "operator", operator)


def test_run_exits_1_after_a_fatal_failure(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail(memo: OperatorMemo) -> None:
        memo.health = HealthChecks(["mqtt"])
        memo.health.operator_started()
        memo.health.operator_failed("mqtt", "the mqtt-tunnel task failed: KeyError('x')")
        assert memo.stop_flag is not None
        memo.stop_flag.set()

    _fake_operator(monkeypatch, fail)
    assert run_cli.run(argparse.Namespace()) == 1
    assert capsys.readouterr().err == (
        "module-controller: stopped after a fatal failure: "
        "mqtt: the mqtt-tunnel task failed: KeyError('x')\n"
    )


def test_run_exits_1_with_the_cause_when_start_up_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cause = "start-up failed: the Kubernetes API server answered 403 Forbidden"

    def fail(memo: OperatorMemo) -> None:
        memo.startup_failure = cause

    _fake_operator(monkeypatch, fail, fails=True)
    assert run_cli.run(argparse.Namespace()) == 1
    assert capsys.readouterr().err == f"module-controller: {cause}\n"


def test_run_exits_1_with_a_traceback_when_kopf_fails_otherwise(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _fake_operator(monkeypatch, lambda _: None, fails=True)
    assert run_cli.run(argparse.Namespace()) == 1
    (record,) = [r for r in caplog.records if r.name == run_cli.__name__ and r.exc_info]
    assert record.getMessage() == "The operator failed."


def test_run_exits_0_after_a_requested_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    def stop(memo: OperatorMemo) -> None:
        memo.health = HealthChecks(["mqtt"])
        memo.health.operator_started()
        memo.health.operator_stopped()

    _fake_operator(monkeypatch, stop)
    assert run_cli.run(argparse.Namespace()) == 0
