"""Bases per operator replica, for the live view, from two lists of Leases: the env's node
Leases in kube-node-lease (their holder is the owning replica's CLIENT_ID) and the replicas'
membership Leases in the operator's NAMESPACE.

The view reads each list once per refresh and keeps no history, so a Lease counts as live
by the wall clock (renewTime + leaseDurationSeconds), unlike the operator's membership,
which watches renewals come: the demo's processes share this machine's clock.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from module_controller.shards.membership import lease_expired

LIVE = "live"
EXPIRED = "expired"
NOT_A_MEMBER = "none"  # holds node Leases but has no membership Lease (left, or forgotten)


@dataclass(frozen=True)
class ReplicaRow:
    """One holder of the env's node Leases or member; `replica` "" gathers the bases whose
    Lease nobody holds (released on a clean stop, not claimed yet)."""

    replica: str
    membership: str  # LIVE, EXPIRED, NOT_A_MEMBER; "" for the no-holder row
    bases: int  # node Leases it holds that have not run out
    expired: int = 0  # node Leases it holds that ran out: nobody attends those bases


def _spec(lease: Mapping[str, Any]) -> dict[str, Any]:
    return dict(lease.get("spec") or {})


def _holder(spec: Mapping[str, Any]) -> str:
    return str(spec.get("holderIdentity") or "")


def _natural(name: str) -> list[Any]:
    # replica-2 before replica-10.
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def replica_rows(
    node_leases: Iterable[Mapping[str, Any]],
    member_leases: Iterable[Mapping[str, Any]],
    now: datetime.datetime,
) -> list[ReplicaRow]:
    """Each replica (a node Lease's holder or a member) with its bases, by name; last, the
    bases with no holder, if any. The Leases are dicts as the API serves them (camelCase)."""
    membership: dict[str, str] = {}
    for lease in member_leases:
        spec = _spec(lease)
        holder = _holder(spec)
        if holder and membership.get(holder) != LIVE:
            membership[holder] = EXPIRED if lease_expired(spec, now) else LIVE
    held: dict[str, int] = {}
    expired: dict[str, int] = {}
    free = 0
    for lease in node_leases:
        spec = _spec(lease)
        holder = _holder(spec)
        if not holder:
            free += 1
        elif lease_expired(spec, now):
            expired[holder] = expired.get(holder, 0) + 1
        else:
            held[holder] = held.get(holder, 0) + 1
    names = sorted({*membership, *held, *expired}, key=_natural)
    rows = [
        ReplicaRow(
            replica=name,
            membership=membership.get(name, NOT_A_MEMBER),
            bases=held.get(name, 0),
            expired=expired.get(name, 0),
        )
        for name in names
    ]
    if free:
        rows.append(ReplicaRow(replica="", membership="", bases=free))
    return rows


def replicas_title(rows: Iterable[ReplicaRow]) -> str:
    rows = list(rows)
    live = sum(row.membership == LIVE for row in rows)
    held = sum(row.bases for row in rows if row.replica)
    total = sum(row.bases + row.expired for row in rows)
    return f"REPLICAS ({live} live; {held}/{total} bases held)"


REPLICA_HEADERS = ("REPLICA", "MEMBERSHIP", "BASES", "EXPIRED")


def replica_cells(row: ReplicaRow) -> tuple[str, str, str, str]:
    """The row under REPLICA_HEADERS."""
    if not row.replica:
        return ("(no holder)", "-", str(row.bases), "-")
    return (row.replica, row.membership, str(row.bases), str(row.expired))


def replicas_summary(rows: Iterable[ReplicaRow]) -> str:
    """For the status line: `replica-1 2, replica-2 1 (1 expired), no holder 1`."""
    parts = []
    for row in rows:
        if not row.replica:
            parts.append(f"no holder {row.bases}")
            continue
        part = f"{row.replica} {row.bases}"
        if row.expired:
            part += f" ({row.expired} expired)"
        if row.membership == EXPIRED:
            part += " [membership expired]"
        elif row.membership == NOT_A_MEMBER:
            part += " [not a member]"
        parts.append(part)
    return ", ".join(parts)
