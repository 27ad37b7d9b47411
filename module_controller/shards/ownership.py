"""Which bases this replica owns: the holders of their nodes' Leases in kube-node-lease.

The table of node Leases comes from a watch (`lease_seen` / `lease_gone`) and, after any
time this replica could not act, from a fresh list, so a replica that comes back from a
partition never acts on a stale view. `round` (every REPLICA_RETRY_SECONDS) claims the
bases this replica should own whose holder is gone, and hands over, a few at a time, the
ones a newer replica should own. Every write is a Lease update with the resourceVersion
read (optimistic concurrency): two replicas never both win one.

A holder is gone when its node Lease expired, or when it is no member any more and its
node Lease has not been renewed for REPLICA_LEASE_SECONDS (a replica that just joined and
claimed is not in an older member list, but its Lease is fresh).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller.kube import call_for_json
from module_controller.settings import Settings
from module_controller.shards.assignment import remembered_owner
from module_controller.shards.membership import Membership, lease_expired, parse_time
from module_controller.vnode_manifest import (
    COMPONENT_LABEL,
    ENV_LABEL,
    LEASE_NAMESPACE,
    micro_timestamp,
    now_utc,
)

log = logging.getLogger(__name__)

# Bases handed to a newer replica per round: a joining replica takes its share gradually.
HANDOVERS_PER_ROUND = 10
# Claims per round: a round stays short (the others' bases come in the next rounds).
CLAIMS_PER_ROUND = 100

# How long a hand-over waits for the base's work in progress (a step that checked it held
# the base before the hand-over) to finish; past it, the base stays here this round.
SETTLE_SECONDS = 5.0

# Nodes whose ownership changed for this replica (gained, or whose Lease went): the
# dispatcher resyncs them and adopts the bases now held.
Changed = Callable[[list[str]], Awaitable[None]]
# Returns once nothing started for the base (node name, identity) is still running.
Settle = Callable[[str, str], Awaitable[None]]


@dataclass
class NodeLease:
    holder: str
    spec: dict[str, Any] = field(default_factory=dict)
    resource_version: str = ""

    def newer_than(self, other: NodeLease) -> bool:
        """Whether this view is at least as new (resourceVersions of one object are etcd
        revisions, which only grow; anything else is taken as news)."""
        mine, theirs = self.resource_version, other.resource_version
        if mine.isdigit() and theirs.isdigit():
            return int(mine) >= int(theirs)
        return True

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> NodeLease:
        spec = dict(body.get("spec") or {})
        metadata = body.get("metadata") or {}
        return cls(
            str(spec.get("holderIdentity") or ""), spec, str(metadata.get("resourceVersion"))
        )


def node_lease_selector(env: str) -> str:
    """The env's node Leases (the labels vnodes.py writes)."""
    return f"{COMPONENT_LABEL}=vnode-lease,{ENV_LABEL}={env}"


class Ownership:
    def __init__(
        self,
        settings: Settings,
        membership: Membership,
        api: client.ApiClient,
        changed: Changed,
        settle: Settle | None = None,
    ) -> None:
        self.settings = settings
        self.membership = membership
        self.me = settings.client_id
        self.coordination = client.CoordinationV1Api(api)
        self._api = api
        self._changed = changed
        self._settle = settle
        self._table: dict[str, NodeLease] = {}
        # Bases being handed over: not acted on (nor renewed) until the write is done.
        self._handing: set[str] = set()
        self._trusted = False  # the table may be stale until listed again
        self._epoch = membership.epoch

    # --- what this replica may do -------------------------------------------------------

    def _may_act(self) -> bool:
        # A lapse (a frozen process) since the table was read: it may be stale until the
        # next round reads the Leases again.
        return self._trusted and self.membership.acting and self._epoch == self.membership.epoch

    def holds(self, node_name: str) -> bool:
        """This replica holds the base's node Lease and may act: commands, status, Events."""
        if not self._may_act() or node_name in self._handing:
            return False
        view = self._table.get(node_name)
        return view is not None and view.holder == self.me

    def held_by_another(self, node_name: str) -> bool:
        """Another replica holds the base's Lease, as far as this replica can tell now (a
        base with no Lease yet, or a table not read again after a lapse, is nobody's)."""
        if not self._may_act():
            return False
        view = self._table.get(node_name)
        return view is not None and view.holder not in ("", self.me)

    def unclaimed(self, node_name: str) -> bool:
        """No Lease of the node is known and this replica may act: a node it made whose
        Lease is not written yet is its own to delete."""
        return self._may_act() and node_name not in self._handing and node_name not in self._table

    def holds_lease(self, node_name: str) -> bool:
        """Held, and its Lease is in the table: the node exists (made by an earlier owner)."""
        return self.holds(node_name)

    def may_write_node(self, node_name: str, identity: str) -> bool:
        """May write the Node: held, or a new base (no Lease yet) this replica should own."""
        if not self._may_act() or node_name in self._handing:
            return False
        view = self._table.get(node_name)
        if view is None:
            return remembered_owner(identity, self.membership.members) == self.me
        return view.holder == self.me

    def held(self) -> list[str]:
        return [name for name in self._table if self.holds(name)]

    # --- the watch ----------------------------------------------------------------------

    async def lease_seen(self, body: Mapping[str, Any]) -> None:
        await self._learn(body["metadata"]["name"], NodeLease.of(body))

    async def lease_gone(self, body: Mapping[str, Any]) -> None:
        name = body["metadata"]["name"]
        if self._table.pop(name, None) is not None:
            await self._changed([name])  # the base's owner-to-be makes it again

    async def lease_written(self, name: str, lease: Mapping[str, Any]) -> None:
        """Our own write (a new node's Lease, a renewal), as the API server's JSON: known
        before the watch says so. (The client's models, walked back to JSON, were a sixth
        of a renewal's CPU, the largest steady cost at 1,000 bases.)"""
        await self._learn(name, NodeLease.of(lease))

    async def _learn(self, name: str, view: NodeLease) -> None:
        known = self._table.get(name)
        if known is not None and not view.newer_than(known):
            return  # a late event: what we wrote or saw since is newer
        before = self.holds(name)
        self._table[name] = view
        if self.holds(name) and not before:
            await self._changed([name])

    def lost(self, name: str) -> None:
        """A renewal found another holder: stop acting on it now; the watch tells who."""
        view = self._table.get(name)
        if view is not None and view.holder == self.me:
            self._table[name] = NodeLease("", view.spec, view.resource_version)

    # --- the rounds ---------------------------------------------------------------------

    async def round(self, bases: Mapping[str, str]) -> None:
        """Claim what this replica should own and is free; hand over what it should not.

        `bases`: node name -> base identity, of every base this replica knows of.
        """
        if not self.membership.acting:
            if self._trusted:
                self._trusted = False
                log.warning("Not a member now: acting on no base until the Leases are read again.")
            return
        if self._epoch != self.membership.epoch:
            # Acting again after a lapse this round did not see (the process was frozen):
            # what the table says may have changed meanwhile.
            self._epoch = self.membership.epoch
            self._trusted = False
        if not self._trusted:
            await self._relist()
        members = self.membership.members
        now = now_utc()
        handed = claimed = 0
        for name, identity in bases.items():
            view = self._table.get(name)
            if view is None:
                continue  # no Lease yet: the node's creator writes it
            intended = remembered_owner(identity, members)
            if view.holder == self.me:
                if intended is not None and intended != self.me and handed < HANDOVERS_PER_ROUND:
                    handed += 1
                    await self._hand_over(name, view, intended, identity)
            elif (
                intended == self.me
                and claimed < CLAIMS_PER_ROUND
                and self._holder_gone(view, members, now)
            ):
                claimed += 1
                await self._claim(name, view)
        for name, view in list(self._table.items()):
            # A base nobody here knows (it died, and its owner with it): its Lease ran out,
            # so its node is unattended; one replica takes it, and deletes the node.
            if name in bases or view.holder == self.me or not lease_expired(view.spec, now):
                continue
            if remembered_owner(name, members) == self.me and claimed < CLAIMS_PER_ROUND:
                claimed += 1
                await self._claim(name, view)

    async def release_all(self) -> None:
        """On a clean stop: every held Lease back to no holder, renewed now, so the next
        owner claims it at once and the node never looks unattended."""
        for name in self.held():
            view = self._table[name]
            await self._write(name, view, "", "released")

    def _holder_gone(
        self, view: NodeLease, members: tuple[str, ...], now: datetime.datetime
    ) -> bool:
        if not view.holder or lease_expired(view.spec, now):
            return True
        if view.holder in members:
            return False
        renewed = parse_time(view.spec.get("renewTime"))
        quiet = datetime.timedelta(seconds=self.settings.replica_lease_seconds)
        return renewed is None or now - renewed >= quiet

    async def _relist(self) -> None:
        leases = await call_for_json(
            self._api,
            self.coordination.list_namespaced_lease,
            LEASE_NAMESPACE,
            label_selector=node_lease_selector(self.settings.env),
        )
        self._table = {
            lease["metadata"]["name"]: NodeLease.of(lease) for lease in leases.get("items") or []
        }
        self._trusted = True
        held = self.held()
        log.info("Read %d node Lease(s): this replica holds %d.", len(self._table), len(held))
        if held:
            await self._changed(held)

    async def _claim(self, name: str, view: NodeLease) -> None:
        await self._write(name, view, self.me, "claimed")

    async def _hand_over(self, name: str, view: NodeLease, to: str, identity: str) -> None:
        # Stop acting first: from here on this replica starts nothing for the base (nor
        # renews its Lease), and what it started (a step that checked before this line)
        # finishes before the new owner may act: the base never has two acting owners.
        self._handing.add(name)
        handed = False
        try:
            if self._settle is not None:
                try:
                    await asyncio.wait_for(self._settle(name, identity), SETTLE_SECONDS)
                except TimeoutError:
                    log.warning(
                        "Base %s still busy after %.0fs: not handed over to %s this round.",
                        identity,
                        SETTLE_SECONDS,
                        to,
                    )
                    return
            current = self._table.get(name, view)  # the settled steps may have renewed it
            try:
                handed = await self._write(name, current, to, f"handed over to {to}")
            except Exception:
                self._trusted = False  # did it go through? Read the Leases again first.
                raise
        finally:
            self._handing.discard(name)
            if not handed and self.holds(name):
                # Still ours: what was skipped meanwhile is looked at again, afresh.
                await self._changed([name])

    async def _write(self, name: str, view: NodeLease, holder: str, what: str) -> bool:
        now = micro_timestamp(now_utc())
        spec = dict(view.spec)
        transitions = int(spec.get("leaseTransitions") or 0)
        spec.update(
            {
                "holderIdentity": holder or None,
                "renewTime": now,
                "acquireTime": now,
                "leaseTransitions": transitions + 1,
                "leaseDurationSeconds": self.settings.lease_duration_seconds,
            }
        )
        body = {"metadata": {"resourceVersion": view.resource_version}, "spec": spec}
        try:
            written = await call_for_json(
                self._api, self.coordination.patch_namespaced_lease, name, LEASE_NAMESPACE, body
            )
        except ApiException as error:
            if error.status in (404, 409):
                log.info("Lease of node %s changed meanwhile: not %s.", name, what)
                return False
            raise
        await self.lease_written(name, written)
        log.info("Lease of node %s %s (was %s).", name, what, view.holder or "free")
        return True
