"""What people look at on a running operator: /metrics, /healthz, /readyz, and logs."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request

import pytest
from kubernetes_asyncio import client

from module_controller.testbed.kube_reads import is_ready
from module_controller.testbed.process import free_port
from tests.e2e.conftest import BaseFactory, OperatorFactory
from tests.e2e.modules_support import bare_pod, manifest, pod_template, wait_pods
from tests.waiting import wait_for

pytestmark = pytest.mark.usefixtures("env_nodes_cleanup")


def fetch(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = (
        rf"^{re.escape(name)}(\{{{re.escape(wanted)}\}})? (\S+)$"
        if labels
        else (rf"^{re.escape(name)} (\S+)$")
    )
    for line in text.splitlines():
        match = re.match(pattern, line)
        if match:
            return float(match.groups()[-1])
    return None


async def test_metrics_and_health_tell_what_the_operator_does(
    k8s_api: client.ApiClient,
    namespace: str,
    run_operator: OperatorFactory,
    start_base: BaseFactory,
    test_env: str,
) -> None:
    metrics_port, health_port = free_port(), free_port()
    operator = run_operator(
        METRICS_PORT=str(metrics_port), HEALTH_PORT=str(health_port), LOG_FORMAT="json"
    )
    core = client.CoreV1Api(k8s_api)

    async def ready() -> bool:
        return fetch(health_port, "/readyz")[0] == 200

    async def diagnose() -> str:
        return f"/readyz: {fetch(health_port, '/readyz')}\n{operator.tail()}"

    await wait_for(ready, timeout=30, what="/readyz to answer 200", diagnose=diagnose)
    assert fetch(health_port, "/healthz")[0] == 200

    base = await start_base()
    template = pod_template("watched", test_env, [("biz1", "1.0.0")])
    await core.create_namespaced_pod(namespace, manifest(bare_pod("watched", template)))
    await wait_pods(
        core,
        namespace,
        "app=watched",
        lambda pods: len(pods) == 1 and is_ready(pods[0]),
        "the module pod Ready",
    )

    async def counted() -> str | None:
        text = fetch(metrics_port, "/metrics")[1]
        complete = (
            sample(text, "module_controller_bases") == 1
            and sample(text, "module_controller_nodes", condition="ready") == 1
            and sample(text, "module_controller_module_pods", state="ready") == 1
        )
        return text if complete else None

    async def show_metrics() -> str:
        text = fetch(metrics_port, "/metrics")[1]
        return "\n".join(line for line in text.splitlines() if not line.startswith("#"))

    text = await wait_for(
        counted, timeout=20, what="bases, nodes and module pods in /metrics", diagnose=show_metrics
    )
    installs = sample(
        text, "module_controller_module_install_duration_seconds_count", result="success"
    )
    assert installs is not None and installs >= 1, "the install latency was observed"
    heartbeats = sample(text, "module_controller_mqtt_messages_received_total", kind="heart")
    assert heartbeats is not None and heartbeats >= 1
    commands = sample(text, "module_controller_mqtt_messages_published_total", kind="command")
    assert commands is not None and commands >= 1
    assert base.received("installBiz")

    # JSON logs: one object per line that says what happened.
    lines = [line for line in operator.log.read_text().splitlines() if line.startswith("{")]
    assert any(
        '"message": "Installing biz1:1.0.0' in line or "Installing biz1:1.0.0" in line
        for line in lines
    ), operator.tail()


def test_sigterm_stops_the_operator_at_once_with_exit_0(run_operator: OperatorFactory) -> None:
    """A kubelet stopping the pod (or a rolling upgrade) waits for this: nothing may hold the
    exit (Kopf 1.45 held it 5 s for its own stop-flag waiter until the clean-up released it)."""
    health_port = free_port()
    operator = run_operator(HEALTH_PORT=str(health_port))
    operator.wait_ready(timeout=30)
    began = time.monotonic()
    operator.stop(grace=15)
    took = time.monotonic() - began
    assert operator.exit_code == 0, operator.tail()
    assert took < 2.5, f"the operator took {took:.1f}s to stop\n{operator.tail()}"
