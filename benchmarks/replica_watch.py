"""What benchmarks/replica_scale.py watches: node Leases (holders, renewals), module pods'
readiness, and each replica's own count of the bases it owns."""

from __future__ import annotations

import re
import time
import urllib.request
from collections import Counter
from collections.abc import Mapping
from typing import Any

from module_controller.shards.membership import parse_time
from module_controller.testbed.kube_reads import json_is_ready

_OWNED = re.compile(r"^module_controller_bases_owned (\S+)$", re.MULTILINE)


class NodeLeases:
    """The env's node Leases as a watch sees them: who holds each, and when it was renewed.

    Renewal gaps are taken between consecutive renewTimes the operator wrote, so a renewal
    the watch delivers late still counts at the time it was made."""

    def __init__(self) -> None:
        self.holders: dict[str, str] = {}
        self.renewed: dict[str, float] = {}  # lease -> its last renewTime (epoch seconds)
        self.changed: dict[str, float] = {}  # lease -> when the watch saw its holder change
        # (renewTime, seconds since the renewal before, lease) of every renewal seen.
        self.gaps: list[tuple[float, float, str]] = []

    def see(self, kind: str, lease: Mapping[str, Any]) -> None:
        name = lease["metadata"]["name"]
        if kind == "DELETED":
            self.holders.pop(name, None)
            self.renewed.pop(name, None)
            return
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        if self.holders.get(name) != holder:
            self.changed[name] = time.time()
        self.holders[name] = holder
        renewed_at = parse_time(spec.get("renewTime"))
        if renewed_at is None:
            return
        renewed = renewed_at.timestamp()
        before = self.renewed.get(name)
        if before is not None and renewed > before:
            self.gaps.append((renewed, renewed - before, name))
        self.renewed[name] = renewed

    def by_holder(self) -> Counter[str]:
        return Counter(self.holders.values())

    def held_by(self, holder: str) -> set[str]:
        return {name for name, held in self.holders.items() if held == holder}

    def longest_unrenewed(
        self, since: float, names: set[str] | None = None
    ) -> tuple[float, str, list[float]]:
        """(longest stretch without a renewal, its lease, every gap) among the renewals
        since `since` (epoch) of `names` (all by default), counting a Lease not renewed
        since as unrenewed until now."""
        now = time.time()
        chosen = set(self.renewed) if names is None else names & set(self.renewed)
        gaps = [(gap, name) for at, gap, name in self.gaps if at >= since and name in chosen]
        waiting = [(now - self.renewed[name], name) for name in chosen]
        longest = max([*gaps, *waiting], default=(0.0, "-"))
        return longest[0], longest[1], [gap for gap, _ in gaps]


class PodLapses:
    """Module pods that were Ready and then were not (or were deleted), with when."""

    def __init__(self) -> None:
        self.ready: dict[str, bool] = {}
        self.lapses: list[tuple[float, str]] = []

    def see(self, kind: str, pod: Mapping[str, Any]) -> None:
        metadata = pod["metadata"]
        name = metadata["name"]
        ready = kind != "DELETED" and json_is_ready(pod) and not metadata.get("deletionTimestamp")
        if self.ready.get(name) and not ready:
            self.lapses.append((time.time(), name))
        self.ready[name] = ready

    def since(self, at: float) -> list[str]:
        return [name for when, name in self.lapses if when >= at]

    def ready_count(self) -> int:
        return sum(self.ready.values())


def bases_owned(metrics_port: int) -> int | None:
    """A replica's module_controller_bases_owned, or None when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as got:
            text = got.read().decode()
    except OSError:
        return None
    found = _OWNED.search(text)
    return None if found is None else int(float(found.group(1)))
