"""Which live replica should own a base: rendezvous (highest-random-weight) hashing.

Every replica computes the same answer from the same members, with no coordination; when
a replica joins or leaves, only the bases it wins or held move (about 1/N of them).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable

# Owners remembered (the least recently asked go first): more than any fleet's live bases.
REMEMBERED_OWNERS = 100_000


def weight(member: str, identity: str) -> int:
    """A stable pseudo-random weight of a (replica, base) pair."""
    digest = hashlib.blake2b(f"{member}\0{identity}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def intended_owner(identity: str, members: Iterable[str]) -> str | None:
    """The member with the highest weight for this base; None when there is no member."""
    best: str | None = None
    best_weight = -1
    for member in members:
        value = weight(member, identity)
        # Ties (practically never) go to the smaller name, the same on every replica.
        if value > best_weight or (value == best_weight and best is not None and member < best):
            best, best_weight = member, value
    return best


@functools.lru_cache(maxsize=REMEMBERED_OWNERS)
def remembered_owner(identity: str, members: tuple[str, ...]) -> str | None:
    """`intended_owner`, remembered: every replica asks it for every base every
    REPLICA_RETRY_SECONDS, and the hashing was a twentieth of an idle replica's CPU at
    1,000 bases. Answers are kept by members too, so a new member list is hashed afresh."""
    return intended_owner(identity, members)
