"""What ships the operator: the plain manifests and the Helm chart.

Both are checked by the testbed's real API server (`kubectl apply --dry-run=server` runs
admission, validation and Pod Security without storing anything), the chart by `helm lint`
too, and the two must grant exactly the same ClusterRole. `helm` is built with `go` like
the Kubernetes binaries (module_controller/testbed/helm.py).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from module_controller.kubelet_proxy.address import PROXY_SERVICE_LABEL
from module_controller.settings import Settings
from module_controller.testbed.binaries import KUBERNETES_VERSION
from module_controller.testbed.helm import ensure_helm

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
# Applied only by who turns on what they serve (the HTTP tunnel, the kubelet proxy).
OPTIONAL_MANIFESTS = MANIFESTS / "optional"
DOCKERFILE = REPO / "operator" / "Dockerfile"
CHART = REPO / "operator" / "chart" / "module-controller"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
OPERATOR_NAMESPACE = "module-controller"
# Kinds that need a CRD the testbed does not have; checked by shape instead.
NEEDS_PROMETHEUS_OPERATOR = {"ServiceMonitor"}
COMMAND_TIMEOUT = 120

Document = dict[str, Any]


def _run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
    )
    assert result.returncode == 0, (
        f"{' '.join(argv[:3])} ... failed ({result.returncode}):\n{result.stdout}{result.stderr}"
    )
    return result


def _documents(text: str) -> list[Document]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _identity(obj: Document) -> tuple[str, str, str]:
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def _only(docs: list[Document], kind: str) -> Document:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {[_identity(d) for d in found]}"
    return found[0]


@pytest.fixture(scope="module")
def helm() -> Path:
    return ensure_helm()


def _render(helm: Path, namespace: str, values: Path) -> list[Document]:
    result = _run(
        [
            str(helm),
            "template",
            "module-controller",
            str(CHART),
            "--namespace",
            namespace,
            "--kube-version",
            KUBERNETES_VERSION,
            "--values",
            str(values),
        ]
    )
    return _documents(result.stdout)


def _apply_dry_run(kubectl: list[str], argv: list[str], stdin: str | None = None) -> set[Any]:
    """Server-side dry-run apply; returns what the server answered with, by identity.

    Pod Security warnings fail the test: the namespaces here warn on `restricted`.
    """
    result = _run([*kubectl, "apply", "--dry-run=server", "-o", "json", *argv], stdin)
    assert "PodSecurity" not in result.stderr, result.stderr
    answer = json.loads(result.stdout)
    items = answer["items"] if answer.get("kind") == "List" else [answer]
    return {_identity(item) for item in items}


@pytest.fixture(scope="module")
def operator_namespace(kubectl: list[str]) -> Iterator[str]:
    """The manifests' own namespace, created for real from 00-namespace.yaml: the server
    refuses a dry-run of objects in a namespace that does not exist."""
    existed = (
        subprocess.run(
            [*kubectl, "get", "namespace", OPERATOR_NAMESPACE],
            capture_output=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        ).returncode
        == 0
    )
    _run([*kubectl, "apply", "-f", str(MANIFESTS / "00-namespace.yaml")])
    yield OPERATOR_NAMESPACE
    if not existed:
        # --wait: a test after this one may create it again.
        _run([*kubectl, "delete", "namespace", OPERATOR_NAMESPACE, "--wait", "--timeout=90s"])


def test_every_manifest_is_accepted_by_the_api_server(
    kubectl: list[str], operator_namespace: str
) -> None:
    files = sorted(MANIFESTS.glob("*.yaml")) + sorted(OPTIONAL_MANIFESTS.glob("*.yaml"))
    expected = {_identity(doc) for path in files for doc in _documents(path.read_text())}
    kinds = {kind for kind, _, _ in expected}
    assert kinds >= {
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Secret",
        "Deployment",
        "Service",
    }
    assert all(ns in ("", operator_namespace) for _, ns, _ in expected)

    answered = _apply_dry_run(kubectl, ["-f", str(MANIFESTS), "-f", str(OPTIONAL_MANIFESTS)])
    assert answered == expected


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda path: path.name)
async def test_the_rendered_chart_is_accepted_by_the_api_server(
    kubectl: list[str], helm: Path, namespace: str, values: Path
) -> None:
    _run([*kubectl, "label", "namespace", namespace, "pod-security.kubernetes.io/warn=restricted"])
    docs = _render(helm, namespace, values)
    to_apply = [doc for doc in docs if doc["kind"] not in NEEDS_PROMETHEUS_OPERATOR]
    assert {doc["kind"] for doc in to_apply} >= {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Service",
    }

    answered = _apply_dry_run(kubectl, ["-f", "-"], yaml.safe_dump_all(to_apply))
    assert answered == {_identity(doc) for doc in to_apply}


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda path: path.name)
def test_helm_lint_passes(helm: Path, values: Path) -> None:
    result = _run([str(helm), "lint", "--strict", str(CHART), "--values", str(values)])
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def test_the_chart_refuses_to_install_without_a_broker(helm: Path) -> None:
    result = subprocess.run(
        [str(helm), "template", "module-controller", str(CHART)],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    assert result.returncode != 0
    assert "set mqtt.broker" in result.stderr


def test_manifests_and_chart_grant_the_same_cluster_role(helm: Path) -> None:
    manifest = _only(_documents((MANIFESTS / "02-clusterrole.yaml").read_text()), "ClusterRole")
    rendered = _render(helm, OPERATOR_NAMESPACE, CHART / "ci" / "plain-values.yaml")
    assert _only(rendered, "ClusterRole")["rules"] == manifest["rules"]

    # Least privilege: nothing is granted by wildcard.
    for rule in manifest["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule

    # The chart binds that role to the ServiceAccount its Deployment runs as.
    binding = _only(rendered, "ClusterRoleBinding")
    deployment = _only(rendered, "Deployment")
    assert binding["roleRef"]["name"] == _only(rendered, "ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": deployment["spec"]["template"]["spec"]["serviceAccountName"],
            "namespace": OPERATOR_NAMESPACE,
        }
    ]


def _deployments(helm: Path) -> dict[str, Document]:
    found = {
        "manifests": _only(_documents((MANIFESTS / "05-deployment.yaml").read_text()), "Deployment")
    }
    for values in CI_VALUES:
        found[values.name] = _only(_render(helm, OPERATOR_NAMESPACE, values), "Deployment")
    return found


# The container ports each Deployment declares: the chart's only for what is on; the plain
# manifests' always (the optional Services target them by name).
ALL_PORTS = {"health": 8081, "metrics": 9090, "http-tunnel": 7777, "kubelet-proxy": 10250}
EXPECTED_PORTS = {
    "manifests": ALL_PORTS,
    "plain-values.yaml": {"health": 8081, "metrics": 9090},
    "full-values.yaml": ALL_PORTS,
}


def test_every_deployment_rolls_pod_named_replicas_with_probes_as_non_root(
    helm: Path,
) -> None:
    for source, deployment in _deployments(helm).items():
        spec = deployment["spec"]
        pod = spec["template"]["spec"]
        (container,) = pod["containers"]
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        env = {entry["name"]: entry.get("value") for entry in container["env"]}
        assert (spec["replicas"], spec["strategy"]["type"]) == (1, "RollingUpdate"), source
        assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
        (client_id,) = [e for e in container["env"] if e["name"] == "CLIENT_ID"]
        assert client_id["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}, source
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
        assert ports == EXPECTED_PORTS[source], source
        assert (env["HEALTH_PORT"], env["METRICS_PORT"]) == ("8081", "9090"), source
        assert pod["securityContext"]["runAsNonRoot"] is True, source
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, source


def test_a_slow_start_is_not_killed_and_every_env_name_is_a_setting(helm: Path) -> None:
    """/healthz fails until start-up has finished, so a startup probe on it must allow a
    slow start (listing a big cluster) before liveness counts; and every variable the
    Deployments set, `extraEnv` included, must be one the operator reads."""
    settings = {name.upper() for name in Settings.model_fields}
    deployments = _deployments(helm)
    for source, deployment in deployments.items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        startup, liveness = container["startupProbe"], container["livenessProbe"]
        assert startup["httpGet"] == {"path": "/healthz", "port": "health"}, source
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, source
        # Once started, a wedged operator is restarted within about half a minute.
        assert liveness["periodSeconds"] * liveness["failureThreshold"] <= 60, source
        assert container["terminationMessagePolicy"] == "FallbackToLogsOnError", source
        names = {entry["name"] for entry in container["env"]}
        assert names <= settings, f"{source}: not settings: {sorted(names - settings)}"
    full = deployments["full-values.yaml"]
    (container,) = full["spec"]["template"]["spec"]["containers"]
    env = {entry["name"]: entry.get("value") for entry in container["env"]}
    assert env["BROKER_SUSPECT_SECONDS"] == "20"


def test_tls_files_are_mounted_where_the_settings_point(helm: Path) -> None:
    docs = _render(helm, OPERATOR_NAMESPACE, CHART / "ci" / "full-values.yaml")
    pod = _only(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {entry["name"]: entry.get("value") for entry in container["env"]}
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "mqtt-tls"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "mqtt-tls"]
    assert volume["secret"]["secretName"] == "my-mqtt-tls"
    for name, key in (
        ("MQTT_CA_PATH", "ca.crt"),
        ("MQTT_CLIENT_CRT_PATH", "tls.crt"),
        ("MQTT_CLIENT_KEY_PATH", "tls.key"),
    ):
        assert env[name] == f"{mount['mountPath']}/{key}"
    assert container["envFrom"] == [{"secretRef": {"name": "my-mqtt-settings"}}]
    assert not [doc for doc in docs if doc["kind"] == "Secret"], "existingSecret: make none"


def test_the_service_monitor_scrapes_the_metrics_service(helm: Path) -> None:
    docs = _render(helm, OPERATOR_NAMESPACE, CHART / "ci" / "full-values.yaml")
    monitor = _only(docs, "ServiceMonitor")
    service = _service(docs, "metrics")
    (endpoint,) = monitor["spec"]["endpoints"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    # The Service reaches the operator's pod and its metrics port.
    pod = _only(docs, "Deployment")["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    plain = _render(helm, OPERATOR_NAMESPACE, CHART / "ci" / "plain-values.yaml")
    assert not [doc for doc in plain if doc["kind"] == "ServiceMonitor"], "off by default"


def _service(docs: list[Document], component: str) -> Document:
    found = [
        doc
        for doc in docs
        if doc["kind"] == "Service"
        and doc["metadata"]["labels"].get("app.kubernetes.io/component") == component
    ]
    assert len(found) == 1, f"expected one {component} Service, found {len(found)}"
    return found[0]


def _container(deployment: Document) -> Document:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def _env(container: Document) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def _assert_reaches(service: Document, deployment: Document) -> int:
    """The Service selects the operator's pod and targets a port it declares; that port."""
    template = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    declared = {p["name"]: p["containerPort"] for p in _container(deployment)["ports"]}
    assert port["targetPort"] in declared, (port, declared)
    assert declared[port["targetPort"]] == port["port"], "one number, for the nodes to advertise"
    number: int = port["port"]
    return number


def _mounted_at(pod: Document, container: Document, path: str) -> Document:
    """The volume whose mount holds the file `path`."""
    (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert isinstance(volume, dict)
    return volume


def test_the_tunnel_and_kubelet_proxy_services_come_only_with_what_they_serve(
    helm: Path,
) -> None:
    plain = _render(helm, OPERATOR_NAMESPACE, CHART / "ci" / "plain-values.yaml")
    assert [doc["metadata"]["name"] for doc in plain if doc["kind"] == "Service"] == [
        "module-controller-metrics"
    ]
    env = _env(_container(_only(plain, "Deployment")))
    assert not {n for n in env if n.startswith(("ENABLE_", "KUBELET_PROXY_", "HTTP_TUNNEL"))}

    docs = _render(helm, OPERATOR_NAMESPACE, CHART / "ci" / "full-values.yaml")
    deployment = _only(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    env = _env(container)
    # The HTTP tunnel, beside MQTT (the operator runs MQTT beside HTTP only when told to).
    tunnel = _service(docs, "http-tunnel")
    assert _assert_reaches(tunnel, deployment) == int(env["HTTP_TUNNEL_LISTEN_PORT"]) == 7777
    assert (env["ENABLE_HTTP_TUNNEL"], env["ENABLE_MQTT_TUNNEL"]) == ("true", "true")
    # The kubelet proxy: the Service the operator looks up in its own namespace, on the port
    # the nodes advertise.
    proxy = _service(docs, "kubelet-proxy")
    assert proxy["metadata"]["labels"][PROXY_SERVICE_LABEL] == "true"
    assert proxy["spec"]["type"] == "ClusterIP"
    assert _assert_reaches(proxy, deployment) == int(env["KUBELET_PROXY_PORT"]) == 10250
    assert env["KUBELET_PROXY_ENABLED"] == "true"
    assert env["NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert proxy["metadata"]["namespace"] == OPERATOR_NAMESPACE
    tls = _mounted_at(pod, container, env["KUBELET_PROXY_TLS_CRT_PATH"])
    assert tls["secret"]["secretName"] == "my-kubelet-proxy-tls"
    assert _mounted_at(pod, container, env["KUBELET_PROXY_TLS_KEY_PATH"]) == tls
    ca = _mounted_at(pod, container, env["KUBELET_PROXY_CLIENT_CA_PATH"])
    assert ca["configMap"]["name"] == "kube-root-ca.crt"
    assert env["KUBELET_PROXY_CLIENT_CA_PATH"].endswith("/ca.crt")


def test_the_optional_manifests_reach_the_plain_deployment() -> None:
    deployment = _only(_documents((MANIFESTS / "05-deployment.yaml").read_text()), "Deployment")
    defaults = Settings()
    tunnel = _only(_documents((OPTIONAL_MANIFESTS / "http-tunnel.yaml").read_text()), "Service")
    assert _assert_reaches(tunnel, deployment) == defaults.http_tunnel_listen_port
    proxy = _only(_documents((OPTIONAL_MANIFESTS / "kubelet-proxy.yaml").read_text()), "Service")
    assert proxy["metadata"]["labels"][PROXY_SERVICE_LABEL] == "true"
    assert _assert_reaches(proxy, deployment) == defaults.kubelet_proxy_port
    assert proxy["metadata"]["namespace"] == deployment["metadata"]["namespace"]


def test_the_chart_needs_a_tunnel_and_a_broker_only_for_mqtt(helm: Path) -> None:
    base = [str(helm), "template", "module-controller", str(CHART)]
    none = subprocess.run(
        [*base, "--set", "mqtt.enabled=false"],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    assert none.returncode != 0
    assert "enable at least one tunnel" in none.stderr
    http_only = _documents(
        _run([*base, "--set", "mqtt.enabled=false", "--set", "httpTunnel.enabled=true"]).stdout
    )
    env = _env(_container(_only(http_only, "Deployment")))
    assert (env["ENABLE_MQTT_TUNNEL"], env["ENABLE_HTTP_TUNNEL"]) == ("false", "true")
    assert "MQTT_BROKER" not in _only(http_only, "Secret")["stringData"]


def test_the_image_installs_the_wheel_without_extras() -> None:
    """The extras are development tools; the image gets the runtime `dependencies` only
    (tests/unit/test_operator_imports.py checks the operator needs each of them)."""
    installs = re.findall(r"pip install [^\n\\]*", DOCKERFILE.read_text())
    assert [install.split()[-1] for install in installs] == ["/dist/*.whl"], installs


def test_three_replicas_get_a_disruption_budget_and_refuse_the_http_tunnel(helm: Path) -> None:
    base = [
        str(helm),
        "template",
        "mc",
        str(CHART),
        "--namespace",
        "mc",
        "--set",
        "mqtt.broker=mqtt.example",
        "--set",
        "replicas=3",
    ]
    docs = _documents(_run(base).stdout)
    assert _only(docs, "Deployment")["spec"]["replicas"] == 3
    budget = _only(docs, "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1
    assert not any(d["kind"] == "PodDisruptionBudget" for d in _documents(_run(base[:-2]).stdout))
    refused = subprocess.run(
        [*base, "--set", "httpTunnel.enabled=true"],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    assert refused.returncode != 0
    assert "httpTunnel.enabled needs replicas=1" in refused.stderr
