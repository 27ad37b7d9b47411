"""What benchmarks/replica_scale.py measured in one run, and how it prints it."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from benchmarks.module_scale import percentile, summary
from module_controller.settings import Settings

DEFAULTS = Settings.model_fields
LEASE_RENEW_SECONDS = float(DEFAULTS["lease_renew_seconds"].default)
LEASE_DURATION_SECONDS = float(DEFAULTS["lease_duration_seconds"].default)
NAN = float("nan")


@dataclass
class Takeover:
    victim: str
    held: int  # bases it held when killed
    seconds: float  # kill -> every one of them held by another replica
    watched_s: float  # kill -> the end of what is counted below
    renewal: tuple[float, str, list[float]]  # longest unrenewed stretch of its bases' Leases
    node_lapses: list[str]
    pod_lapses: list[str]
    commands: int  # installBiz and uninstallBiz the bases received after the kill
    owned: dict[str, int]  # survivor -> bases, from the Leases
    gauges: dict[str, int | None]  # survivor -> its module_controller_bases_owned


@dataclass
class Result:
    replicas: int
    bases: int
    per_base: int
    nodes_online_s: float = NAN
    node_ready: tuple[float, float] = (NAN, NAN)  # first heartbeat -> Ready, untainted
    node_written: tuple[float, float] = (NAN, NAN)  # first heartbeat -> written Ready=True
    owned: dict[str, int] = field(default_factory=dict)
    gauges: dict[str, int | None] = field(default_factory=dict)
    cpu_online: dict[str, float] = field(default_factory=dict)  # CPU seconds by replica
    cpu_release: dict[str, float] = field(default_factory=dict)
    pods_ready_s: float = NAN
    to_install: list[float] = field(default_factory=list)
    to_ready: list[float] = field(default_factory=list)  # from the reply's arrival
    stamped_to_ready: list[float] = field(default_factory=list)  # from its publishTimestamp
    # A PATCH's round trip from this process during the release: the floor of "-> Ready".
    api_write: list[float] = field(default_factory=list)
    window_s: float = NAN
    cpu: dict[str, float] = field(default_factory=dict)  # % of one core by process
    writes: dict[str, float] = field(default_factory=dict)  # per second by resource
    rss: dict[str, tuple[float, float]] = field(default_factory=dict)  # (now, peak) MiB
    renewal: tuple[float, str, list[float]] = (NAN, "-", [])
    steady_node_lapses: int = 0
    steady_pod_lapses: int = 0
    pods_ready_at_end: int = 0
    takeover: Takeover | None = None
    log_problems: dict[str, int] = field(default_factory=dict)

    @property
    def pods(self) -> int:
        return self.bases * self.per_base

    @property
    def replica_cpu(self) -> list[float]:
        return [self.cpu[name] for name in self.owned]


def _counts(counts: dict[str, int] | dict[str, int | None]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counts.items())


def _gaps(renewal: tuple[float, str, list[float]]) -> str:
    longest, lease, gaps = renewal
    typical = f"p50 {statistics.median(gaps):.1f}s, " if gaps else ""
    return f"{typical}longest {longest:.1f}s ({lease})"


def _takeover(taken: Takeover) -> list[str]:
    return [
        f"  kill -9 {taken.victim} (held {taken.held} bases): every one held by another "
        f"replica {taken.seconds:.1f}s later",
        f"    its bases' Leases through the takeover: {_gaps(taken.renewal)}",
        f"    watched {taken.watched_s:.0f}s from the kill: nodes NotReady "
        f"{len(taken.node_lapses)} {taken.node_lapses[:5]}, pods NotReady "
        f"{len(taken.pod_lapses)} {taken.pod_lapses[:5]}, install/uninstall commands "
        f"received {taken.commands}",
        f"    bases per survivor: {_counts(taken.owned)} (own gauges: {_counts(taken.gauges)})",
    ]


def report(r: Result) -> str:
    ids = list(r.owned)
    others = ", ".join(f"{name} {pct:.0f}%" for name, pct in r.cpu.items() if name not in ids)
    total = sum(r.writes.values())
    writes = ", ".join(
        f"{kind} {rate:.1f}" for kind, rate in sorted(r.writes.items(), key=lambda kv: -kv[1])
    )
    lines = [
        f"== {r.replicas} replica(s), {r.bases} bases x {r.per_base} module pods each ==",
        f"  bases per replica (node Lease holders): {_counts(r.owned)} "
        f"(own gauges: {_counts(r.gauges)})",
        f"  first heartbeat -> node Ready, untainted: p50 {r.node_ready[0]:.2f}s, "
        f"p99 {r.node_ready[1]:.2f}s (written Ready=True: p50 {r.node_written[0]:.2f}s, "
        f"p99 {r.node_written[1]:.2f}s); all Ready {r.nodes_online_s:.1f}s after the start",
        "  " + summary("pod bound -> install sent", r.to_install),
        "  " + summary("install reply on the broker -> pod Ready", r.to_ready),
        "  " + summary("  from the reply's publishTimestamp", r.stamped_to_ready),
        "  " + summary("  meanwhile, a PATCH's round trip from the benchmark", r.api_write),
        f"  all {r.pods} pods Ready {r.pods_ready_s:.1f}s after the release",
    ]
    for name in ids:
        rss, peak = r.rss[name]
        lines.append(
            f"  {name}: CPU {r.cpu_online[name]:.1f}s bringing the bases online, "
            f"{r.cpu_release[name]:.1f}s for the release; steady {r.cpu[name]:.1f}% of one "
            f"core; RSS {rss:.0f} MiB (peak {peak:.0f})"
        )
    lines += [
        f"  steady window {r.window_s:.0f}s: replicas together {sum(r.replica_cpu):.1f}% of "
        f"one core; {others}",
        f"  API writes/s in the steady window: {total:.1f} ({writes})",
        f"  node Lease renewals in the steady window (every {LEASE_RENEW_SECONDS:.0f}s "
        f"configured, duration {LEASE_DURATION_SECONDS:.0f}s): {_gaps(r.renewal)}",
        f"  NotReady moments in the steady window: nodes {r.steady_node_lapses}, pods "
        f"{r.steady_pod_lapses}; pods Ready at its end {r.pods_ready_at_end}/{r.pods}",
    ]
    if r.takeover is not None:
        lines += _takeover(r.takeover)
    lines.append(f"  WARNING/ERROR lines in the replicas' logs: {_counts(r.log_problems)}")
    return "\n".join(lines)


def comparison(results: list[Result]) -> str:
    lines = [
        "\n replicas | bases/replica | steady CPU/replica (max) | release CPU s (max) | "
        "RSS MiB (max) | writes/s | node Ready p99 | bound->install p99 | reply->Ready p99 | "
        "all pods Ready | longest renewal gap | takeover"
    ]
    for r in results:
        taken = f"{r.takeover.seconds:.1f}s" if r.takeover else "-"
        lines.append(
            f" {r.replicas:>8} | {_spread(list(r.owned.values())):>13} | "
            f"{max(r.replica_cpu):>23.1f}% | {max(r.cpu_release.values()):>19.1f} | "
            f"{max(rss for rss, _ in r.rss.values()):>13.0f} | {sum(r.writes.values()):>8.1f} | "
            f"{r.node_ready[1]:>13.2f}s | {_ms(r.to_install):>18} | {_ms(r.to_ready):>16} | "
            f"{r.pods_ready_s:>13.1f}s | {r.renewal[0]:>18.1f}s | {taken}"
        )
    single = next((r for r in results if r.replicas == 1), None)
    if single is not None:
        # The target: each of three replicas at most 40 % of the single one's CPU.
        alone, alone_release = single.replica_cpu[0], sum(single.cpu_release.values())
        for r in results:
            if r.replicas > 1:
                lines.append(
                    f" busiest of {r.replicas} replicas: "
                    f"{_share(max(r.replica_cpu), alone)} of the single replica's steady CPU, "
                    f"{_share(max(r.cpu_release.values()), alone_release)} of its release CPU"
                )
    return "\n".join(lines)


def _spread(counts: list[int]) -> str:
    return f"{min(counts)}-{max(counts)}" if len(counts) > 1 else str(counts[0])


def _ms(values: list[float]) -> str:
    return f"{percentile(values, 0.99) * 1000:.0f} ms" if values else "-"


def _share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole > 0 else "-"
