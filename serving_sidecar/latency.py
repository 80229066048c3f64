"""Per-arm latency over a sliding window: fixed log-bucketed histograms, quantiles, mean and variance.

Who calls what:

- the ranker's request path calls `LatencyMonitor.record(arm_id, latency_ms,
  now_s)` once per request, with the arm of its `Assignment` and the time it
  already read (the monitor never reads a clock, so tests drive time and
  the hot path pays for no extra clock read);
- the SLO breaker (`serving_sidecar.breaker`) and dashboards call
  `stats(arm_id, now_s)` every second or so.

Layout: the window of `window_s` seconds is a ring of `slices` sub-windows of
`window_s / slices` seconds each.  Slice `e = floor(now_s * slices / window_s)` lives in
ring slot `e % slices` and is reset when a newer slice claims the slot, so
old samples fall out as time moves on without any background task.  A query
at `now_s` covers the last `slices` slices including the current partial
one: between `window_s - slice_s` and `window_s` seconds of history.  Each
slice holds a histogram in the fixed layout of `schemas.metrics`
(`LATENCY_EDGES_MS`, `N_LATENCY_BINS`; same bin for the same latency as
`latency_bins`), so the sidecar's quantiles line up with the pipeline's, plus
exact count, sum and sum of squares (shifted by the ring's first sample, so
the variance does not lose precision) for the mean and variance.

Threads: every recording thread writes only its own shard (a
`threading.local` ring per arm), so `record` takes no lock and no two
threads ever update the same counter (no lost increments).  The one lock
guards the shard registry and is taken once per thread, on its first
record, and by `stats` when it prunes shards of dead threads whose samples
have all aged out.  `stats` merges all shards while they are being written:
a figure read mid-record may miss that one sample, never more.
"""

from __future__ import annotations

import math
import threading
import weakref
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from math import floor
from typing import Final

from schemas.metrics import LATENCY_EDGES_MS, N_LATENCY_BINS, latency_quantile

_EDGES: Final[list[float]] = [float(e) for e in LATENCY_EDGES_MS]
_INF: Final = math.inf
_NAN: Final = math.nan
_NEVER: Final = -(1 << 62)  # epoch of a slot that has never held a slice


def latency_bin(latency_ms: float) -> int:
    """Bin index of one latency in the fixed layout (equal to `schemas.metrics.latency_bins` for it)."""
    return bisect_right(_EDGES, latency_ms)


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """One arm's latency over a window: what the SLO rules and dashboards read.

    Quantiles come from `schemas.metrics.latency_quantile` over `histogram`
    (the bin's geometric middle: accurate to one bin, about 12%); mean and
    sample variance (ddof=1) are exact.  NaN where undefined (no samples;
    variance with fewer than two).
    """

    count: int
    p50: float
    p95: float
    p99: float
    mean: float
    variance: float
    window_s: float
    histogram: tuple[int, ...]

    def quantile(self, q: float) -> float:
        """Any quantile (0..1) of the window, same method as p50/p95/p99."""
        if self.count == 0:
            return _NAN
        return latency_quantile(self.histogram, q)


class _Slot:
    """One slice of one arm in one thread's shard: written by that thread only."""

    __slots__ = ("counts", "epoch", "n", "s1", "s2")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.counts = [0] * N_LATENCY_BINS
        self.n = 0
        self.s1 = 0.0  # sum of (x - shift)
        self.s2 = 0.0  # sum of (x - shift)^2


class _Ring:
    """The `slices` slots of one arm in one shard; `shift` is the first latency it saw."""

    __slots__ = ("shift", "slots")

    def __init__(self, slices: int, shift: float) -> None:
        self.shift = shift
        self.slots = [_Slot(_NEVER) for _ in range(slices)]

    def newest(self) -> int:
        return max(slot.epoch for slot in self.slots)


class _Shard:
    """One recording thread's rings, by arm id."""

    __slots__ = ("rings", "thread")

    def __init__(self, thread: threading.Thread) -> None:
        self.thread = weakref.ref(thread)
        self.rings: dict[str, _Ring] = {}

    def dead(self) -> bool:
        thread = self.thread()
        return thread is None or not thread.is_alive()


class LatencyMonitor:
    """Sliding-window latency histograms per arm, written lock-free from many threads."""

    def __init__(self, window_s: float, slices: int = 12) -> None:
        if not (window_s > 0 and math.isfinite(window_s)):
            msg = f"window_s: must be a positive number of seconds, got {window_s}"
            raise ValueError(msg)
        if slices < 1:
            msg = f"slices: must be >= 1, got {slices}"
            raise ValueError(msg)
        self.window_s = float(window_s)
        self.slices = slices
        self.slice_s = self.window_s / slices
        self._per_s = slices / self.window_s
        self._local = threading.local()
        self._shards: list[_Shard] = []
        self._registry_lock = threading.Lock()

    def record(self, arm_id: str, latency_ms: float, now_s: float) -> None:
        """Count one request of `arm_id` that took `latency_ms`, at time `now_s` (hot path, no lock).

        `latency_ms` must be finite and >= 0 (a measured duration; anything
        else is a caller bug and raises `ValueError`).  A sample older than a
        whole window relative to what this thread already recorded for the
        arm is dropped: it could never be reported.
        """
        if not 0.0 <= latency_ms < _INF:
            msg = f"latency_ms: must be a finite duration >= 0, got {latency_ms!r}"
            raise ValueError(msg)
        try:
            ring: _Ring = self._local.rings[arm_id]
        except (AttributeError, KeyError):
            ring = self._new_ring(arm_id, latency_ms)
        epoch = floor(now_s * self._per_s)
        index = epoch % self.slices
        slot = ring.slots[index]
        if slot.epoch != epoch:
            if slot.epoch > epoch:
                return
            slot = ring.slots[index] = _Slot(epoch)
        slot.counts[bisect_right(_EDGES, latency_ms)] += 1
        d = latency_ms - ring.shift
        slot.n += 1
        slot.s1 += d
        slot.s2 += d * d

    def _new_ring(self, arm_id: str, first_ms: float) -> _Ring:
        """This thread's ring for `arm_id`, creating (and registering) its shard on first use."""
        try:
            rings: dict[str, _Ring] = self._local.rings
        except AttributeError:
            shard = _Shard(threading.current_thread())
            with self._registry_lock:
                self._shards.append(shard)
            self._local.rings = rings = shard.rings
        ring = rings.get(arm_id)
        if ring is None:
            ring = rings[arm_id] = _Ring(self.slices, first_ms)
        return ring

    def stats(self, arm_id: str, now_s: float, window_s: float | None = None) -> LatencyStats:
        """Latency of `arm_id` over the window ending at `now_s`.

        `window_s` (default: the monitor's) is rounded up to whole slices and
        must not exceed the monitor's window: SLO rules with shorter windows
        share one monitor.
        """
        n_slices = self._slices_for(window_s)
        now_epoch = floor(now_s * self._per_s)
        low = now_epoch - n_slices
        self._prune(now_epoch)
        hist = [0] * N_LATENCY_BINS
        parts: list[tuple[int, float, float, float]] = []
        for shard in list(self._shards):
            ring = shard.rings.get(arm_id)
            if ring is None:
                continue
            n, s1, s2 = 0, 0.0, 0.0
            for slot in list(ring.slots):
                if low < slot.epoch <= now_epoch:
                    for i, c in enumerate(slot.counts):
                        if c:
                            hist[i] += c
                    n += slot.n
                    s1 += slot.s1
                    s2 += slot.s2
            if n:
                parts.append((n, s1, s2, ring.shift))
        return _summarise(hist, parts, n_slices * self.slice_s)

    def arms(self) -> set[str]:
        """Every arm id any thread has recorded (and not cleared)."""
        return {arm for shard in list(self._shards) for arm in list(shard.rings)}

    def shard_count(self) -> int:
        """How many per-thread shards are kept (live threads, plus dead ones whose samples are still in the window)."""
        return len(self._shards)

    def clear(self, arm_id: str) -> None:
        """Forget every sample of `arm_id` (the breaker calls this when it resets an arm).

        A sample being recorded at that very moment may be lost; none is double counted.
        """
        for shard in list(self._shards):
            shard.rings.pop(arm_id, None)

    def _slices_for(self, window_s: float | None) -> int:
        if window_s is None:
            return self.slices
        if not window_s > 0:
            msg = f"window_s: must be > 0, got {window_s}"
            raise ValueError(msg)
        n = math.ceil(window_s / self.slice_s - 1e-9)
        if n > self.slices:
            msg = f"window_s: must be <= the monitor's window ({self.window_s} s), got {window_s}"
            raise ValueError(msg)
        return n

    def _prune(self, now_epoch: int) -> None:
        shards = self._shards
        if not any(s.dead() for s in shards):
            return
        with self._registry_lock:
            keep = [
                s
                for s in self._shards
                if not s.dead() or any(r.newest() > now_epoch - self.slices for r in list(s.rings.values()))
            ]
            self._shards = keep


def _summarise(hist: list[int], parts: Sequence[tuple[int, float, float, float]], window_s: float) -> LatencyStats:
    """Merge per-ring (n, shifted sum, shifted sum of squares, shift) with Chan's parallel formula."""
    count = sum(p[0] for p in parts)
    histogram = tuple(hist)
    if count == 0:
        return LatencyStats(0, _NAN, _NAN, _NAN, _NAN, _NAN, window_s, histogram)
    means = [shift + s1 / n for n, s1, _, shift in parts]
    mean = sum(n * m for (n, _, _, _), m in zip(parts, means, strict=True)) / count
    m2 = 0.0
    for (n, s1, s2, _), m in zip(parts, means, strict=True):
        m2 += max(s2 - s1 * s1 / n, 0.0) + n * (m - mean) ** 2
    variance = m2 / (count - 1) if count > 1 else _NAN
    return LatencyStats(
        count=count,
        p50=latency_quantile(histogram, 0.50),
        p95=latency_quantile(histogram, 0.95),
        p99=latency_quantile(histogram, 0.99),
        mean=mean,
        variance=variance,
        window_s=window_s,
        histogram=histogram,
    )
