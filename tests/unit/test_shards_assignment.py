"""Rendezvous hashing of bases over the live replicas (module_controller/shards/assignment.py).

Every replica must compute the same owner from the same members, spread bases evenly, and
move as few bases as possible when a replica joins or leaves: only the ones the newcomer
wins, or the ones the leaver held.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter

import pytest

from module_controller.shards import assignment
from module_controller.shards.assignment import intended_owner, weight

BASES = [str(uuid.UUID(int=n * 7919 + 1)) for n in range(3000)]
THREE = ("replica-a", "replica-b", "replica-c")


def assign(members: tuple[str, ...] | list[str]) -> dict[str, str | None]:
    return {base: intended_owner(base, members) for base in BASES}


def test_three_thousand_bases_spread_evenly_over_three_replicas() -> None:
    counts = Counter(assign(THREE).values())
    assert set(counts) == set(THREE)
    for member in THREE:
        assert 900 <= counts[member] <= 1100, counts  # 1000 ± 10 %


def test_the_spread_stays_even_for_pod_like_names_and_ip_identities() -> None:
    # Pod names of one ReplicaSet differ in a short suffix only; bases may be named by IP.
    members = [f"module-controller-7c9d5b8f6-{suffix}" for suffix in ("x2kqp", "x2kqq", "zt8mn")]
    bases = [f"10.0.{n // 250}.{n % 250 + 1}" for n in range(3000)]
    counts = Counter(intended_owner(base, members) for base in bases)
    for member in members:
        assert 900 <= counts[member] <= 1100, counts


def test_the_answer_does_not_depend_on_the_order_of_members_nor_on_who_asks() -> None:
    first = assign(THREE)
    shuffled = list(THREE)
    for seed in range(5):
        random.Random(seed).shuffle(shuffled)
        assert assign(shuffled) == first
    assert assign(set(THREE)) == first  # type: ignore[arg-type]  # any iterable
    # Pure: the same inputs give the same weight, call after call.
    assert weight("replica-a", BASES[0]) == weight("replica-a", BASES[0])


def test_no_member_no_owner_and_one_member_owns_all() -> None:
    assert intended_owner(BASES[0], ()) is None
    assert set(assign(("solo",)).values()) == {"solo"}


def test_a_joining_replica_takes_about_a_quarter_and_only_bases_move_to_it() -> None:
    before = assign(THREE)
    after = assign((*THREE, "replica-d"))
    moved = [base for base in BASES if before[base] != after[base]]
    assert all(after[base] == "replica-d" for base in moved), "a base moved between old members"
    assert 0.2 * len(BASES) <= len(moved) <= 0.3 * len(BASES), len(moved)  # ~1/4
    # And it takes about the same share from each of the others.
    taken = Counter(before[base] for base in moved)
    for member in THREE:
        assert 200 <= taken[member] <= 300, taken


def test_a_leaving_replica_moves_only_its_own_bases_spread_over_the_rest() -> None:
    before = assign(THREE)
    after = assign(("replica-a", "replica-c"))
    moved = [base for base in BASES if before[base] != after[base]]
    assert set(moved) == {base for base in BASES if before[base] == "replica-b"}
    counts = Counter(after[base] for base in moved)
    for member in ("replica-a", "replica-c"):
        assert 0.4 * len(moved) <= counts[member] <= 0.6 * len(moved), counts


def test_a_replica_that_leaves_and_comes_back_gets_the_same_bases() -> None:
    before = assign(THREE)
    assign(("replica-a", "replica-c"))
    assert assign(THREE) == before


def test_ties_go_to_the_smaller_name_whatever_the_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assignment, "weight", lambda member, identity: 7)
    for order in (["m-b", "m-a", "m-c"], ["m-c", "m-b", "m-a"], ["m-a", "m-c", "m-b"]):
        assert assignment.intended_owner(BASES[0], order) == "m-a"


def test_remembered_owners_follow_the_members_and_hash_each_base_once_per_member_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expected = {base: intended_owner(base, THREE) for base in BASES[:50]}
    hashed: list[str] = []
    real_weight = assignment.weight

    def counted(member: str, identity: str) -> int:
        hashed.append(identity)
        return real_weight(member, identity)

    monkeypatch.setattr(assignment, "weight", counted)
    assignment.remembered_owner.cache_clear()
    four = (*THREE, "replica-d")
    for _ in range(3):  # three rounds over the same members: hashed in the first only
        assert {base: assignment.remembered_owner(base, THREE) for base in BASES[:50]} == expected
    assert len(hashed) == 50 * len(THREE)
    # A replica joins: every answer is the new members', never a remembered stale one.
    assert [assignment.remembered_owner(base, four) for base in BASES[:50]] == [
        intended_owner(base, four) for base in BASES[:50]
    ]


def test_what_is_remembered_of_owners_is_bounded() -> None:
    assignment.remembered_owner.cache_clear()
    one = ("replica-a",)
    for n in range(assignment.REMEMBERED_OWNERS + 10):
        assignment.remembered_owner(f"base-{n}", one)
    assert assignment.remembered_owner.cache_info().currsize == assignment.REMEMBERED_OWNERS
    assert assignment.remembered_owner(BASES[0], THREE) == intended_owner(BASES[0], THREE)
    assignment.remembered_owner.cache_clear()
