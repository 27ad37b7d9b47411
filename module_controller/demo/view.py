"""What the live view shows: bases, nodes, bases per operator replica and module pods, the
sample, the kubectl hints."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from module_controller.demo.options import ARKLET_QUERY, BASE_NAME, BASE_VERSION
from module_controller.demo.replicas import (
    REPLICA_HEADERS,
    ReplicaRow,
    replica_cells,
    replicas_summary,
    replicas_title,
)
from module_controller.settings import SEED_MODULE_LABEL
from module_controller.testbed.kube_reads import is_ready, ready_condition

# --- what the live view shows ---------------------------------------------------------------


@dataclass(frozen=True)
class BaseRow:
    identity: str
    ip: str
    arklet: str
    connected: bool


@dataclass(frozen=True)
class NodeRow:
    name: str
    base: str
    ip: str
    ready: str
    reason: str


@dataclass(frozen=True)
class PodRow:
    name: str
    node: str
    pod_ip: str
    phase: str
    ready: bool
    detail: str


@dataclass(frozen=True)
class Sample:
    """What the live view and the hints need to know about the applied Deployment."""

    name: str
    namespace: str
    selector: dict[str, str]
    container: str
    image: str
    biz_version: str

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], namespace: str | None) -> Sample:
        if manifest.get("kind") != "Deployment":
            raise ValueError("the sample must be one Deployment")
        spec = manifest["spec"]
        container = spec["template"]["spec"]["containers"][0]
        version = next(
            (e.get("value", "") for e in container.get("env", []) if e["name"] == "BIZ_VERSION"),
            "",
        )
        return cls(
            name=manifest["metadata"]["name"],
            namespace=namespace or manifest["metadata"].get("namespace") or "default",
            selector=dict(spec["selector"]["matchLabels"]),
            container=container["name"],
            image=container["image"],
            biz_version=version,
        )

    def owns(self, labels: dict[str, str] | None) -> bool:
        return self.selector.items() <= (labels or {}).items()


@dataclass
class Snapshot:
    bases: list[BaseRow]
    nodes: list[NodeRow]
    pods: list[PodRow]
    error: str = ""
    replicas: list[ReplicaRow] = field(default_factory=list)


def next_version(version: str) -> str:
    """0.0.1-SNAPSHOT -> 0.0.2-SNAPSHOT: the last number counts up, the rest stays."""
    match = re.search(r"(\d+)(?!.*\d)", version)
    if match is None:
        return f"{version}-2"
    number = str(int(match.group(1)) + 1).zfill(len(match.group(1)))  # 05 -> 06
    return f"{version[: match.start()]}{number}{version[match.end() :]}"


def update_patch(sample: Sample) -> str:
    """One strategic-merge patch that changes jar and BIZ_VERSION together (one rollout)."""
    version = next_version(sample.biz_version)
    image = sample.image.replace(sample.biz_version, version) if sample.biz_version else ""
    if not image or image == sample.image:
        image = f"{sample.image}?version={version}"
    container = {
        "name": sample.container,
        "image": image,
        "env": [{"name": "BIZ_VERSION", "value": version}],
    }
    patch = {"spec": {"template": {"spec": {"containers": [container]}}}}
    return json.dumps(patch, separators=(",", ":"))


def kubectl_hints(
    sample: Sample, snapshot: Snapshot, kubeconfig: Path, path: Sequence[str]
) -> list[str]:
    """The lines to try next, filled in with a real base IP and node name."""
    # A base that runs a module, so the two queries show something; else any Ready one.
    hosting = {pod.node for pod in snapshot.pods if pod.ready}
    ready = [row for row in snapshot.nodes if row.ready == "True"]
    node = next((row for row in ready if row.name in hosting), ready[0] if ready else None)
    base_ip = node.ip if node else "<baseIP>"
    node_name = node.name if node else "virtual-node-<baseUUID>"
    arklet = next((row.arklet for row in snapshot.bases if row.ip == base_ip), "")
    ns = f"-n {sample.namespace}"
    deployment = f"deployment/{sample.name}"
    directories = ":".join(shlex.quote(directory) for directory in path)
    lines = [
        f'export KUBECONFIG={shlex.quote(str(kubeconfig))} PATH={directories}:"$PATH"',
        f"kubectl get pod {ns} --field-selector status.podIP={base_ip} -o wide",
        f"kubectl get pod {ns} --field-selector spec.nodeName={node_name} -o wide",
        f"kubectl {ns} patch {deployment} -p '{update_patch(sample)}'",
        f"kubectl {ns} rollout history {deployment}",
        f"kubectl {ns} rollout undo {deployment}",
        f"kubectl {ns} scale {deployment} --replicas=3",
        f"kubectl {ns} delete {deployment}",
    ]
    if arklet:
        lines.append(f"curl -s -X POST http://{arklet}/{ARKLET_QUERY}    # what that base runs")
    return lines


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = []
    for row in [headers, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines


def render(
    snapshot: Snapshot,
    *,
    header: Sequence[str],
    sample: Sample,
    hints: Sequence[str],
    module_label: str = SEED_MODULE_LABEL,
) -> str:
    lines = list(header)
    lines.append("")
    lines.append(f"BASES ({len(snapshot.bases)} simulated: '{BASE_NAME}' {BASE_VERSION})")
    base_rows = [
        (b.identity, b.ip, b.arklet or "-", "connected" if b.connected else "connecting")
        for b in snapshot.bases
    ]
    lines += _table(("IDENTITY", "IP", "ARKLET", "MQTT"), base_rows) if base_rows else ["  none"]
    lines.append("")
    lines.append(
        f"NODES ({sum(n.ready == 'True' for n in snapshot.nodes)}/{len(snapshot.nodes)} Ready)"
    )
    node_rows = [(n.name, n.base, n.ip, n.ready, n.reason) for n in snapshot.nodes]
    lines += (
        _table(("NAME", "BASE", "IP", "READY", "REASON"), node_rows)
        if node_rows
        else ["  none yet"]
    )
    lines.append("")
    lines.append(replicas_title(snapshot.replicas))
    replica_rows = [replica_cells(row) for row in snapshot.replicas]
    lines += _table(REPLICA_HEADERS, replica_rows) if replica_rows else ["  none yet"]
    lines.append("")
    ready = sum(p.ready for p in snapshot.pods)
    lines.append(
        f"MODULE PODS in {sample.namespace} ({module_label}=module; {ready}/{len(snapshot.pods)} "
        "Ready)"
    )
    pod_rows = [
        (p.name, p.node or "-", p.pod_ip or "-", p.phase, "True" if p.ready else "False", p.detail)
        for p in snapshot.pods
    ]
    lines += (
        _table(("NAME", "NODE", "POD IP", "PHASE", "READY", "DETAIL"), pod_rows)
        if pod_rows
        else ["  none yet"]
    )
    if snapshot.error:
        lines += ["", f"(could not read the cluster: {snapshot.error})"]
    lines += ["", "TRY NEXT (in another terminal):"]
    lines += [f"  {hint}" for hint in hints]
    return "\n".join(lines)


def pod_row(pod: Any) -> PodRow:
    status = pod.status
    conditions = {c.type: c for c in status.conditions or []}
    detail = ""
    if pod.metadata.deletion_timestamp is not None:
        detail = "deleting"
    else:
        # Why it is not Ready: not scheduled yet, else what the operator wrote on Ready.
        for condition in (conditions.get("PodScheduled"), ready_condition(pod)):
            if condition is not None and condition.status != "True":
                detail = ": ".join(x for x in (condition.reason, condition.message) if x)
                break
        if not detail:
            for container in status.container_statuses or []:
                waiting = container.state.waiting if container.state else None
                if waiting is not None:
                    detail = f"{container.name}: {waiting.reason or 'waiting'}"
                    break
    return PodRow(
        name=pod.metadata.name,
        node=pod.spec.node_name or "",
        pod_ip=status.pod_ip or "",
        phase=status.phase or "",
        ready=is_ready(pod),
        detail=" ".join(detail.split())[:100],
    )


def node_row(node: Any) -> NodeRow:
    labels = node.metadata.labels or {}
    ready = ready_condition(node)
    ip = next((a.address for a in node.status.addresses or [] if a.type == "InternalIP"), "")
    base = " ".join(labels.get(f"base.koupleless.io/{key}", "?") for key in ("name", "version"))
    return NodeRow(
        name=node.metadata.name,
        base=base,
        ip=ip,
        ready=ready.status if ready else "Unknown",
        reason=(ready.reason or "") if ready else "",
    )


def status_line(snapshot: Snapshot) -> str:
    """One line for logs and pipes: how many bases, nodes and pods, and the pods' states."""
    connected = sum(b.connected for b in snapshot.bases)
    ready_nodes = sum(n.ready == "True" for n in snapshot.nodes)
    pods = "; ".join(
        f"{p.name} {p.phase}{' Ready' if p.ready else ''}"
        + (f" on {p.node}" if p.node else "")
        + (f" ({p.detail})" if p.detail and not p.ready else "")
        for p in snapshot.pods
    )
    line = (
        f"bases {connected}/{len(snapshot.bases)} connected; nodes {ready_nodes}/"
        f"{len(snapshot.nodes)} Ready; module pods: {pods or 'none'}"
    )
    if snapshot.replicas:
        line += f"; bases per replica: {replicas_summary(snapshot.replicas)}"
    if snapshot.error:
        line += f"; cluster unreadable: {snapshot.error}"
    return line
