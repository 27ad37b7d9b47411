"""What the parts that write ask before writing for a base: does this replica own it?

`Ownership` answers from the node Leases; `SoleOwner` (one operator, no sharding: tests of
single parts) always says yes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class OwnerGate(Protocol):
    def holds(self, node_name: str) -> bool: ...
    # Holds the node's Lease as read from the cluster: the node exists already.
    def holds_lease(self, node_name: str) -> bool: ...
    def may_write_node(self, node_name: str, identity: str) -> bool: ...
    # No Lease of the node is known: a node this replica made is still its own to delete.
    def unclaimed(self, node_name: str) -> bool: ...
    async def lease_written(self, name: str, lease: Mapping[str, Any]) -> None: ...
    def lost(self, name: str) -> None: ...


class SoleOwner:
    def holds(self, node_name: str) -> bool:
        return True

    def holds_lease(self, node_name: str) -> bool:
        return False  # no Leases read: a node not made by this process is created

    def may_write_node(self, node_name: str, identity: str) -> bool:
        return True

    def unclaimed(self, node_name: str) -> bool:
        return True

    async def lease_written(self, name: str, lease: Mapping[str, Any]) -> None:
        pass

    def lost(self, name: str) -> None:
        pass
