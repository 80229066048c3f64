"""Pure helpers behind the demo's live view: ratio intervals, window bookkeeping, formatting.

`rectune.demo` (the I/O side) feeds closed metric partials into a `WindowBook`,
asks it which windows are complete, and prints the rows these functions
format.  Nothing here reads a clock, a socket or a terminal: "now" is passed
in, so every function is unit-tested without a broker.

Statistics: the randomisation unit is the user, and users are hashed into a
fixed number of buckets (`schemas.metrics.user_bucket`), so a ratio metric
such as CTR (clicks / impressions) gets its variance from the delta method
over buckets — see `ratio_interval`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from schemas.metrics import (
    FIELD_INDEX,
    N_LATENCY_BINS,
    FloatArray,
    IntArray,
    MetricWindow,
    latency_quantile,
    window_arrays,
)

#: Two-sided 95% normal quantile.
Z95: Final = 1.959963984540054


# -- statistics ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Estimate:
    """A point estimate with its standard error and a symmetric normal interval.

    `se`, `low` and `high` are NaN when the data cannot support an interval
    (fewer than two buckets, or no denominator).
    """

    value: float
    se: float
    low: float
    high: float


def _estimate(value: float, se: float, z: float) -> Estimate:
    if not math.isfinite(se):
        return Estimate(value, math.nan, math.nan, math.nan)
    return Estimate(value, se, value - z * se, value + z * se)


def ratio_interval(numerators: npt.ArrayLike, denominators: npt.ArrayLike, *, z: float = Z95) -> Estimate:
    """Ratio of bucket sums, `r = sum(num) / sum(den)`, with a delta-method interval.

    Called by `arm_stats` for CTR (clicks / impressions per user bucket), and
    usable for any ratio metric kept per bucket.  The buckets are the
    independent units (users are hashed into them, and the user is the
    randomisation unit), so with `n` buckets, `d_b = num_b - r * den_b` and
    `mean(den) = sum(den) / n`:

        Var(r) ~= var_b(d) / (n * mean(den)^2)
               =  n * sum_b(d_b^2) / ((n - 1) * sum(den)^2)

    where `var_b` is the sample variance over buckets (ddof=1; `mean(d)` is 0
    by construction).  This is the first-order Taylor (delta method)
    variance of a ratio of means, equal to
    `(s_nn - 2 r s_nd + r^2 s_dd) / (n mean(den)^2)` with sample
    (co)variances `s`.  Every bucket counts, empty ones too: the bucket layout
    is fixed by the hash, so an empty bucket is an observation of zero.
    Returns NaN for `value` when `sum(den)` is 0, and NaN `se` for fewer than
    two buckets.
    """
    num = np.asarray(numerators, dtype=np.float64).ravel()
    den = np.asarray(denominators, dtype=np.float64).ravel()
    if num.shape != den.shape:
        msg = f"numerators and denominators must have the same length, got {num.size} and {den.size}"
        raise ValueError(msg)
    total_den = float(den.sum())
    if total_den <= 0.0:
        return Estimate(math.nan, math.nan, math.nan, math.nan)
    r = float(num.sum()) / total_den
    n = num.size
    if n < 2:
        return Estimate(r, math.nan, math.nan, math.nan)
    d = num - r * den
    var = n * float(d @ d) / ((n - 1) * total_den * total_den)
    return _estimate(r, math.sqrt(var), z)


def relative_lift(treatment: Estimate, control: Estimate, *, z: float = Z95) -> Estimate:
    """Relative lift `t / c - 1` of two independent ratio estimates, delta-method interval.

    Called by the demo's final summary (treatment CTR vs control CTR).  The
    arms hold disjoint users, so their estimates are independent and
    `Var(t / c) ~= (t / c)^2 * ((se_t / t)^2 + (se_c / c)^2)`.
    """
    t, c = treatment.value, control.value
    if not (math.isfinite(t) and math.isfinite(c)) or c == 0.0:
        return Estimate(math.nan, math.nan, math.nan, math.nan)
    ratio = t / c
    if t == 0.0 or not (math.isfinite(treatment.se) and math.isfinite(control.se)):
        return Estimate(ratio - 1.0, math.nan, math.nan, math.nan)
    se = abs(ratio) * math.sqrt((treatment.se / t) ** 2 + (control.se / c) ** 2)
    return _estimate(ratio - 1.0, se, z)


# -- per-arm statistics of merged partials ----------------------------------------


@dataclass(frozen=True, slots=True)
class ArmStats:
    """What one row of the demo shows for one arm (one window, or the whole run)."""

    arm: str
    requests: int
    impressions: int
    clicks: int
    conversions: int
    revenue: float
    ctr: Estimate
    latency_p50_ms: float
    latency_p99_ms: float
    categories_per_list: float
    near_duplicate_rate: float
    item_events: int
    windows: int
    #: The run's north-star ratio (numerator / denominator bucket fields), delta-method interval.
    north_star: Estimate = Estimate(math.nan, math.nan, math.nan, math.nan)
    fresh_share: float = math.nan


#: North-star metric when none is given: clicks per served list.
DEFAULT_NORTH_STAR: Final = ("clicks", "requests")


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def arm_stats(
    arm: str,
    sums: FloatArray,
    hist: IntArray,
    *,
    item_events: int,
    windows: int,
    north_star: tuple[str, str] = DEFAULT_NORTH_STAR,
) -> ArmStats:
    """Summarise merged (fields x buckets) sums and a latency histogram as one `ArmStats`.

    Called by `WindowBook` for each arm of a closed window and for the run
    totals.  Near-duplicate rate is near-duplicate items per shown item;
    categories per list is the mean number of distinct categories in a list;
    fresh share is fresh items per shown item; `north_star` names the
    (numerator, denominator) bucket fields of the run's north-star ratio.
    """

    def total(name: str) -> float:
        return float(sums[FIELD_INDEX[name]].sum())

    requests = total("requests")
    impressions = total("impressions")
    return ArmStats(
        arm=arm,
        requests=round(requests),
        impressions=round(impressions),
        clicks=round(total("clicks")),
        conversions=round(total("conversions")),
        revenue=total("revenue"),
        ctr=ratio_interval(sums[FIELD_INDEX["clicks"]], sums[FIELD_INDEX["impressions"]]),
        latency_p50_ms=latency_quantile(hist, 0.5),
        latency_p99_ms=latency_quantile(hist, 0.99),
        categories_per_list=_ratio(total("distinct_categories"), requests),
        near_duplicate_rate=_ratio(total("near_duplicates"), impressions),
        item_events=item_events,
        windows=windows,
        north_star=ratio_interval(sums[FIELD_INDEX[north_star[0]]], sums[FIELD_INDEX[north_star[1]]]),
        fresh_share=_ratio(total("fresh"), impressions),
    )


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


# -- formatting ---------------------------------------------------------------------

#: Columns of a window / summary row (label, arm, then the metrics).
_ROW = (
    "{label:<8}  {arm:<10} {req:>8} {impr:>8} {clicks:>6}  {ctr:<21} {conv:>5} {rev:>9}  {lat:>11}  {cats:>5}  {dup:>6}"
)

#: What the abbreviated columns mean (printed under the first header).
LEGEND: Final = (
    "  impr: shown items | CTR: clicks per shown item, 95% CI by the delta method over user buckets",
    "  cats: distinct categories per list | dup: near-duplicate share of shown items | p50/p99: ranker latency",
)


def table_header(label: str = "window") -> str:
    """Column header printed above the window rows and the summary table."""
    return _ROW.format(
        label=label,
        arm="arm",
        req="requests",
        impr="impr",
        clicks="clicks",
        ctr="CTR [95% CI]",
        conv="conv",
        rev="revenue",
        lat="p50/p99 ms",
        cats="cats",
        dup="dup",
    )


def clock(ms: int) -> str:
    """Local wall-clock time `HH:MM:SS` of an epoch-milliseconds instant."""
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000.0))


def pct(x: float, digits: int = 2) -> str:
    """A fraction as a percentage (`-` for NaN)."""
    return f"{100.0 * x:.{digits}f}%" if math.isfinite(x) else "-"


def format_ctr(est: Estimate) -> str:
    """CTR and its interval, e.g. `4.13% [3.85, 4.41]` (bounds in percent)."""
    if not math.isfinite(est.value):
        return "-"
    if not math.isfinite(est.se):
        return pct(est.value)
    return f"{pct(est.value)} [{100 * est.low:.2f}, {100 * est.high:.2f}]"


def _num(x: float, fmt: str) -> str:
    return format(x, fmt) if math.isfinite(x) else "-"


def format_arm_row(label: str, stats: ArmStats) -> str:
    """One table row: a window's (or the run's) statistics for one arm."""
    return _ROW.format(
        label=label,
        arm=stats.arm[:10],
        req=f"{stats.requests:,}",
        impr=f"{stats.impressions:,}",
        clicks=f"{stats.clicks:,}",
        ctr=format_ctr(stats.ctr),
        conv=f"{stats.conversions:,}",
        rev=f"{stats.revenue:,.0f}",
        lat=f"{_num(stats.latency_p50_ms, '.1f')}/{_num(stats.latency_p99_ms, '.1f')}",
        cats=_num(stats.categories_per_list, ".2f"),
        dup=pct(stats.near_duplicate_rate, 2),
    )


def format_window(window: ClosedWindow, *, span_ms: tuple[int, int] | None = None) -> list[str]:
    """The rows of one closed window, one per arm, labelled with its start time.

    `span_ms` (first, last event time the generator produced) marks a window
    the generator only partly covered, so a thin first or last window is not
    mistaken for a traffic drop; an incomplete window (some partition never
    reported) is marked too.
    """
    rows = [format_arm_row(clock(window.start_ms), stats) for stats in window.arms.values()]
    notes = []
    if span_ms is not None:
        covered = min(window.end_ms, span_ms[1] + 1) - max(window.start_ms, span_ms[0])
        width = window.end_ms - window.start_ms
        if 0 < covered < width:
            notes.append(f"partial window: {covered / 1000:.1f} of {width / 1000:.0f} s of traffic")
    if not window.complete:
        notes.append(f"only {len(window.partitions)} partition(s) reported")
    if notes and rows:
        rows[-1] += "   (" + "; ".join(notes) + ")"
    return rows


def format_lift(lift: Estimate, treatment: str, control: str) -> str:
    """The summary's lift line, e.g. `CTR lift treatment vs control: +14.2% [95% CI +8.1%, +20.3%]`."""
    if not math.isfinite(lift.value):
        return f"CTR lift {treatment} vs {control}: not enough data"
    head = f"CTR lift {treatment} vs {control}: {100 * lift.value:+.1f}%"
    if not math.isfinite(lift.se):
        return head
    verdict = "significant" if lift.low > 0 or lift.high < 0 else "not significant"
    return f"{head}  [95% CI {100 * lift.low:+.1f}%, {100 * lift.high:+.1f}%]  ({verdict} at 5%)"


def plural(count: int, noun: str) -> str:
    """`1 window`, `3 windows`."""
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def format_rate(count: float, seconds: float) -> str:
    """`count / seconds` as a thousands-separated per-second rate (`-` before any time passed)."""
    return f"{count / seconds:,.0f}/s" if seconds > 0 else "-"


def format_duration(seconds: float) -> str:
    """`M:SS` for the status line."""
    whole = max(0, int(seconds))
    return f"{whole // 60}:{whole % 60:02d}"


@dataclass(frozen=True, slots=True)
class Status:
    """One snapshot of the demo's progress (what the status line shows)."""

    phase: str
    elapsed_s: float
    duration_s: float
    requests: int
    item_events: int
    rate_item_events_s: float
    windows_closed: int
    windows_pending: int
    accounted_item_events: int
    worker_alive: bool


def format_status(status: Status, width: int | None = None) -> str:
    """The single live status line (TTY) or periodic progress line (logs).

    With a `width` (the terminal's), the least important parts are dropped
    until the line fits, so a redraw never wraps: first the windows still
    closing, then the request count, the aggregated share, the worker state.
    Events are item-level events (DESIGN.md's count).
    """
    share = status.accounted_item_events / status.item_events if status.item_events else math.nan
    head = (
        f"[{format_duration(status.elapsed_s)}/{format_duration(status.duration_s)} {status.phase}] "
        f"{status.item_events:,} events, {status.rate_item_events_s:,.0f}/s"
    )
    # (priority, text), shown in this order; the highest priority number is dropped first.
    parts = [
        (0, head),
        (1, f"windows {status.windows_closed} closed"),
        (5, f"{status.windows_pending} closing" if status.windows_pending else ""),
        (4, f"{status.requests:,} requests"),
        (3, f"aggregated {pct(share, 1)}"),
        (2, f"worker {'up' if status.worker_alive else 'DOWN'}"),
    ]
    parts = [(rank, text) for rank, text in parts if text]
    line = " | ".join(text for _, text in parts)
    while width is not None and len(line) > width and len(parts) > 1:
        parts.remove(max(parts))
        line = " | ".join(text for _, text in parts)
    return line
