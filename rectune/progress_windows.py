"""Window bookkeeping, pure: `WindowBook` merges closed metric partials into windows and says when one is ready.

What lives here: `WindowBook` (partials deduplicated by `partial_id`, summed
per (window start, arm) across source partitions, cohorts and surfaces;
readiness by reporting partitions, settle time and grace; run totals), the
`ClosedWindow` it hands out, and the per-arm running sums behind both.

Who calls it: `rectune.demo` owns the book; `rectune.demo_feed` adds the
partials it reads from the `rectune.metrics` topic, and the demo prints the
windows `due` and `flush` return.  Per-arm figures come from
`rectune.progress_stats.arm_stats`.  "Now" is passed in (`now_s`), so the
book is unit-tested without a broker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from rectune.progress_stats import DEFAULT_NORTH_STAR, ArmStats, arm_stats
from schemas.metrics import FIELD_INDEX, N_LATENCY_BINS, FloatArray, IntArray, MetricWindow, window_arrays

__all__ = ["ClosedWindow", "WindowBook"]


@dataclass(slots=True)
class _ArmAcc:
    """Running sums of one arm (inside one window, or over the run)."""

    sums: FloatArray
    hist: IntArray
    item_events: int = 0
    starts: set[int] = field(default_factory=set)

    def add(self, sums: FloatArray, hist: IntArray, item_events: int, start_ms: int) -> None:
        if self.sums.shape != sums.shape:
            msg = f"buckets: partials disagree on the bucket count ({self.sums.shape[1]} vs {sums.shape[1]})"
            raise ValueError(msg)
        self.sums += sums
        self.hist += hist
        self.item_events += item_events
        self.starts.add(start_ms)


def _accumulate(accs: dict[str, _ArmAcc], window: MetricWindow, sums: FloatArray, hist: IntArray) -> None:
    acc = accs.get(window.arm_id)
    if acc is None:
        acc = _ArmAcc(np.zeros_like(sums), np.zeros(N_LATENCY_BINS, dtype=np.int64))
        accs[window.arm_id] = acc
    acc.add(sums, hist, window.item_events, window.window_start_ms)


def _stats(accs: Mapping[str, _ArmAcc], north_star: tuple[str, str]) -> dict[str, ArmStats]:
    return {
        arm: arm_stats(arm, a.sums, a.hist, item_events=a.item_events, windows=len(a.starts), north_star=north_star)
        for arm, a in sorted(accs.items())
    }


@dataclass(frozen=True, slots=True)
class ClosedWindow:
    """A window the demo prints: its span, the partitions that reported it, per-arm stats."""

    start_ms: int
    end_ms: int
    partitions: frozenset[int]
    complete: bool
    arms: dict[str, ArmStats]


@dataclass(slots=True)
class _Pending:
    first_s: float
    last_s: float
    end_ms: int
    partitions: set[int] = field(default_factory=set)
    arms: dict[str, _ArmAcc] = field(default_factory=dict)


class WindowBook:
    """Merges closed partials into windows and says when a window is ready to print.

    Owned by the demo's main loop.  Partials are deduplicated by `partial_id`
    (a partial republished after a worker crash replaces its copy), then
    added per (window start, arm) across source partitions, cohorts and
    surfaces.  A window is ready once every one of `partitions` source
    partitions reported it and nothing new came for `settle_s` (partials of
    one partition are published together but may sit on different metrics
    partitions), or `grace_s` after its first partial whatever came (a quiet
    partition never reports).  Partials of a window already printed (late
    events) still count in the run totals.
    """

    def __init__(
        self,
        partitions: int,
        *,
        settle_s: float = 0.3,
        grace_s: float = 3.0,
        north_star: tuple[str, str] = DEFAULT_NORTH_STAR,
    ) -> None:
        if partitions < 1:
            msg = f"partitions: must be >= 1, got {partitions}"
            raise ValueError(msg)
        unknown = [name for name in north_star if name not in FIELD_INDEX]
        if len(north_star) != 2 or unknown:
            msg = f"north_star: must be two bucket fields (numerator, denominator), unknown {unknown}"
            raise ValueError(msg)
        self.partitions = partitions
        self.north_star = north_star
        self.settle_s = settle_s
        self.grace_s = grace_s
        self.duplicates = 0
        self.late_partials = 0
        self.item_events = 0
        self._seen: set[str] = set()
        self._pending: dict[int, _Pending] = {}
        self._printed: set[int] = set()
        self._totals: dict[str, _ArmAcc] = {}
        #: Event-time span of every partial taken (printed or not).
        self.first_start_ms: int | None = None
        self.last_end_ms: int | None = None

    def add(self, window: MetricWindow, now_s: float) -> bool:
        """Take one partial; False when it was a duplicate (same `partial_id`) and ignored."""
        if window.partial_id in self._seen:
            self.duplicates += 1
            return False
        sums, hist = window_arrays(window)
        self._seen.add(window.partial_id)
        self.item_events += window.item_events
        _accumulate(self._totals, window, sums, hist)
        start = window.window_start_ms
        self.first_start_ms = start if self.first_start_ms is None else min(self.first_start_ms, start)
        self.last_end_ms = max(self.last_end_ms or window.window_end_ms, window.window_end_ms)
        if start in self._printed:
            self.late_partials += 1
            return True
        pending = self._pending.get(start)
        if pending is None:
            pending = _Pending(now_s, now_s, window.window_end_ms)
            self._pending[start] = pending
        pending.last_s = now_s
        pending.partitions.add(window.source_partition)
        _accumulate(pending.arms, window, sums, hist)
        return True

    def due(self, now_s: float) -> list[ClosedWindow]:
        """Windows ready to print at `now_s`, oldest first; each is returned once."""
        ready = [
            start
            for start, p in self._pending.items()
            if (len(p.partitions) >= self.partitions and now_s - p.last_s >= self.settle_s)
            or now_s - p.first_s >= self.grace_s
        ]
        return [self._take(start) for start in sorted(ready)]

    def flush(self) -> list[ClosedWindow]:
        """Every window still waiting, oldest first (end of run)."""
        return [self._take(start) for start in sorted(self._pending)]

    def _take(self, start: int) -> ClosedWindow:
        p = self._pending.pop(start)
        self._printed.add(start)
        closed = ClosedWindow(
            start_ms=start,
            end_ms=p.end_ms,
            partitions=frozenset(p.partitions),
            complete=len(p.partitions) >= self.partitions,
            arms=_stats(p.arms, self.north_star),
        )
        return closed

    @property
    def partials(self) -> int:
        """Distinct partials taken."""
        return len(self._seen)

    @property
    def windows_closed(self) -> int:
        """Windows handed out so far (printed)."""
        return len(self._printed)

    def pending_windows(self) -> int:
        """Windows with partials that are not ready yet."""
        return len(self._pending)

    def totals(self) -> dict[str, ArmStats]:
        """Per-arm statistics over every partial taken (late ones included)."""
        return _stats(self._totals, self.north_star)
