"""Mass silence: many bases falling silent together is a broker or network fault, not deaths.

Kubernetes' node-lifecycle controller stops evicting when a large share of a zone's nodes
go unhealthy at once (`--unhealthy-zone-threshold`, 0.55). The same rule, applied to bases:
when more than MASS_SILENCE_SHARE of the bases went silent within one heartbeat period, the
silence is held to be the broker's or the network's, and no node is deleted for it until
the bases are heard again or MASS_SILENCE_MAX_SECONDS pass. Nodes may still go NotReady.

Pure: it is told the bases' last-heard times and the clock, and says whether deletions are
held. The registry applies it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Fewer silent bases than this are never a mass silence: one or two bases dying together
# is ordinary, and a fleet of one must still lose a dead base's node.
MIN_SILENT_BASES = 3


def largest_group_within(times: Sequence[float], window: float) -> int:
    """The most values of `times` that lie within one `window` of each other."""
    ordered = sorted(times)
    best = 0
    start = 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] > window:
            start += 1
        best = max(best, end - start + 1)
    return best


@dataclass
class MassSilence:
    """Whether a mass silence holds back node deletions, remembered across ticks."""

    share: float
    heartbeat_seconds: float
    max_seconds: float
    since: float | None = None
    gave_up: bool = False
    # Set by the tick in which a mass silence ended because bases were heard again: the
    # ones still silent are coming back over a heartbeat period and get a fresh grace.
    ended_by_recovery: bool = False

    @property
    def active(self) -> bool:
        return self.since is not None and not self.gave_up

    def holds_deletions(self, silent_last_seen: Sequence[float], total: int, now: float) -> bool:
        """Judge this tick: `silent_last_seen` are the last-heard times of silent bases."""
        self.ended_by_recovery = False
        many = len(silent_last_seen) >= MIN_SILENT_BASES and len(silent_last_seen) > (
            self.share * total
        )
        if not many:
            if self.since is not None:
                log.info(
                    "Mass silence over after %.0fs: %d of %d bases are silent; "
                    "silent bases are judged one by one again.",
                    now - self.since,
                    len(silent_last_seen),
                    total,
                )
            self.ended_by_recovery = self.since is not None and not self.gave_up
            self.since = None
            self.gave_up = False
            return False
        if self.since is None:
            together = largest_group_within(silent_last_seen, self.heartbeat_seconds)
            if together <= self.share * total:
                return False  # many are silent, but they fell silent one by one
            self.since = now
            log.warning(
                "Mass silence: %d of %d bases (more than %.0f%%) fell silent within one "
                "heartbeat period (%.0fs). That is a broker or network fault, not deaths: "
                "their nodes may go NotReady but none is deleted until they are heard again "
                "or %.0fs pass (MASS_SILENCE_MAX_SECONDS).",
                together,
                total,
                self.share * 100,
                self.heartbeat_seconds,
                self.max_seconds,
            )
        if self.gave_up:
            return False
        if now - self.since >= self.max_seconds:
            self.gave_up = True
            log.warning(
                "Mass silence has lasted %.0fs (MASS_SILENCE_MAX_SECONDS): silent bases are "
                "taken for dead and their nodes deleted.",
                now - self.since,
            )
            return False
        return True
