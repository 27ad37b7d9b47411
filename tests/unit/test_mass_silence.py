"""The mass-silence rule on its own: a plain function of last-heard times and the clock."""

from __future__ import annotations

from module_controller.mass_silence import MassSilence, largest_group_within


def test_largest_group_within_one_window() -> None:
    assert largest_group_within([], 10) == 0
    assert largest_group_within([0, 5, 9, 30, 31], 10) == 3
    assert largest_group_within([0, 11, 22], 10) == 1


def test_a_share_above_the_threshold_within_one_period_holds_deletions() -> None:
    rule = MassSilence(share=0.55, heartbeat_seconds=10, max_seconds=600)
    assert rule.holds_deletions([100, 101, 102], total=5, now=200)
    assert rule.active


def test_at_or_below_the_threshold_is_not_a_mass_silence() -> None:
    rule = MassSilence(share=0.55, heartbeat_seconds=10, max_seconds=600)
    assert not rule.holds_deletions([100, 101, 102], total=6, now=200)  # 50 %


def test_two_silent_bases_are_never_a_mass_silence() -> None:
    rule = MassSilence(share=0.55, heartbeat_seconds=10, max_seconds=600)
    assert not rule.holds_deletions([100, 100], total=2, now=200)


def test_the_bound_gives_up_once_and_stays_given_up() -> None:
    rule = MassSilence(share=0.55, heartbeat_seconds=10, max_seconds=60)
    assert rule.holds_deletions([100, 100, 100], total=3, now=200)
    assert not rule.holds_deletions([100, 100, 100], total=3, now=260)
    assert not rule.holds_deletions([100, 100, 100], total=3, now=261)
    assert not rule.active
