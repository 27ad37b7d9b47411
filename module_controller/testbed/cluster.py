"""The Kubernetes control plane's command lines, credentials and health probes.

etcd, kube-apiserver, kube-controller-manager (all default controllers, node lifecycle
and taint eviction included) and kube-scheduler, each on a free loopback port. The
apiserver keeps its default admission plugins, `TaintNodesByCondition` among them, so
virtual nodes meet the same node-health machinery as in a real cluster.

The same command lines serve every release from 1.30 on (`./dev e2e-matrix` runs them on
1.30, 1.33 and the pinned one): they use no feature gate and no flag any of those refuses.
"""

from __future__ import annotations

import json
import secrets
import ssl
import subprocess
import urllib.request
from pathlib import Path

from pydantic import BaseModel

from module_controller.testbed.binaries import Binaries

SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/24"


class ClusterPorts(BaseModel):
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int


class ClusterCredentials(BaseModel):
    admin_token: str


def write_credentials(state_dir: Path) -> ClusterCredentials:
    """One admin bearer token (system:masters) and one RSA key to sign ServiceAccount tokens."""
    pki = state_dir / "pki"
    pki.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["openssl", "genrsa", "-out", str(pki / "service-accounts.key"), "2048"],
        check=True,
        capture_output=True,
    )
    credentials = ClusterCredentials(admin_token=secrets.token_hex(24))
    tokens = pki / "tokens.csv"
    tokens.write_text(f'{credentials.admin_token},admin,admin,"system:masters"\n')
    tokens.chmod(0o600)
    return credentials


def etcd_command(binaries: Binaries, state_dir: Path, ports: ClusterPorts) -> list[str]:
    # Data on tmpfs without fsync: a testbed trades durability for speed.
    client = f"http://127.0.0.1:{ports.etcd_client}"
    peer = f"http://127.0.0.1:{ports.etcd_peer}"
    return [
        str(binaries.etcd),
        "--name=testbed",
        f"--data-dir={state_dir / 'etcd'}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=testbed={peer}",
        "--unsafe-no-fsync",
        "--log-level=warn",
    ]


def apiserver_command(binaries: Binaries, state_dir: Path, ports: ClusterPorts) -> list[str]:
    pki = state_dir / "pki"
    return [
        str(binaries.kube_apiserver),
        f"--etcd-servers=http://127.0.0.1:{ports.etcd_client}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={ports.apiserver}",
        f"--cert-dir={pki}",
        f"--token-auth-file={pki / 'tokens.csv'}",
        "--authorization-mode=RBAC",
        f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki / 'service-accounts.key'}",
        f"--service-account-signing-key-file={pki / 'service-accounts.key'}",
        # No kubelet or kube-proxy answers on the endpoint the apiserver would publish.
        "--endpoint-reconciler-type=none",
        "--allow-privileged=true",
        "--profiling=false",
    ]


def controller_manager_command(
    binaries: Binaries, state_dir: Path, ports: ClusterPorts, node_monitor_grace_period: int
) -> list[str]:
    pki = state_dir / "pki"
    return [
        str(binaries.kube_controller_manager),
        f"--kubeconfig={state_dir / 'kubeconfig'}",
        "--leader-elect=false",
        "--bind-address=127.0.0.1",
        f"--secure-port={ports.controller_manager}",
        "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
        f"--root-ca-file={pki / 'apiserver.crt'}",
        f"--service-account-private-key-file={pki / 'service-accounts.key'}",
        "--use-service-account-credentials=true",
        f"--node-monitor-grace-period={node_monitor_grace_period}s",
        "--profiling=false",
    ]


def scheduler_command(binaries: Binaries, state_dir: Path, ports: ClusterPorts) -> list[str]:
    config = state_dir / "scheduler.yaml"
    config.write_text(
        "apiVersion: kubescheduler.config.k8s.io/v1\n"
        "kind: KubeSchedulerConfiguration\n"
        f"clientConnection: {{kubeconfig: {state_dir / 'kubeconfig'}}}\n"
        "leaderElection: {leaderElect: false}\n"
    )
    return [
        str(binaries.kube_scheduler),
        f"--config={config}",
        "--bind-address=127.0.0.1",
        f"--secure-port={ports.scheduler}",
        "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
        "--profiling=false",
    ]


def write_kubeconfig(state_dir: Path, ports: ClusterPorts, credentials: ClusterCredentials) -> Path:
    """A kubeconfig for the admin user; the CA is the apiserver's self-signed bundle."""
    path = state_dir / "kubeconfig"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "testbed",
                "cluster": {
                    "server": f"https://127.0.0.1:{ports.apiserver}",
                    "certificate-authority": str(state_dir / "pki" / "apiserver.crt"),
                },
            }
        ],
        "users": [{"name": "admin", "user": {"token": credentials.admin_token}}],
        "contexts": [
            {
                "name": "testbed",
                "context": {"cluster": "testbed", "user": "admin", "namespace": "default"},
            }
        ],
        "current-context": "testbed",
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)
    return path


def _insecure_tls() -> ssl.SSLContext:
    # Health probes only: the serving certificate may not exist yet when probing begins.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def http_ok(url: str, token: str | None = None) -> bool:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    context = _insecure_tls() if url.startswith("https") else None
    with urllib.request.urlopen(request, timeout=2, context=context) as response:
        return bool(response.status == 200)


def etcd_healthy(ports: ClusterPorts) -> bool:
    with urllib.request.urlopen(
        f"http://127.0.0.1:{ports.etcd_client}/health", timeout=2
    ) as response:
        return bool(json.load(response).get("health") == "true")
