"""Metric windows: additive partial sufficient statistics per (window, arm, bucket).

The stream worker publishes one `MetricWindow` per (source partition, window,
surface, arm, cohort); every consumer merges partials by adding them, so totals
are the same whatever the number of partitions, workers or windows.  Rows of
`sums` are the fields of `BUCKET_FIELDS`; columns are the user buckets listed
in `bucket_ids` (`bucket = crc32(user_id) mod buckets`; empty buckets are
left out, so thin traffic makes small partials), the randomisation unit that
variance estimates (delta method over buckets) rest on.  The latency
histogram is sparse too: `latency_bins[i]` holds `latency_counts[i]`.
Pure: numpy, no I/O.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Final, TypeVar

import msgspec
import numpy as np
import numpy.typing as npt
from msgspec import Meta

from schemas.events import Id

#: Row layout of `MetricWindow.sums`: per-bucket sums over events in the window.
BUCKET_FIELDS: Final = (
    "requests",  # impressions (served lists)
    "impressions",  # item-level impressions (shown items)
    "clicks",
    "conversions",
    "revenue",
    "revenue_sq",  # sum of revenue^2 per conversion (variance of order value)
    "latency_ms",  # sum of ranker latency per request
    "latency_ms_sq",
    "distinct_categories",  # sum over lists of distinct categories in the list
    "near_duplicates",  # sum over lists of (items - distinct styles)
    "long_tail",  # shown items flagged long-tail
    "fresh",  # shown items flagged fresh
)
FIELD_INDEX: Final = {name: i for i, name in enumerate(BUCKET_FIELDS)}
N_FIELDS: Final = len(BUCKET_FIELDS)
DEFAULT_BUCKETS: Final = 64

#: Fixed log-bucketed latency layout: 20 bins per decade from 0.1 ms to 100 s,
#: plus an underflow bin (index 0) and an overflow bin (last index).
LATENCY_BINS_PER_DECADE: Final = 20
LATENCY_MIN_MS: Final = 0.1
LATENCY_EDGES_MS: Final = LATENCY_MIN_MS * 10.0 ** (
    np.arange(6 * LATENCY_BINS_PER_DECADE + 1) / LATENCY_BINS_PER_DECADE
)
N_LATENCY_BINS: Final = len(LATENCY_EDGES_MS) + 1

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def user_bucket(user_id: str, buckets: int) -> int:
    """Stable user bucket (`crc32 mod buckets`): the same in every process and run."""
    return zlib.crc32(user_id.encode()) % buckets


def latency_bins(latency_ms: npt.ArrayLike) -> IntArray:
    """Histogram bin index of each latency, in the fixed layout (0 = underflow)."""
    return np.searchsorted(LATENCY_EDGES_MS, np.asarray(latency_ms, dtype=np.float64), side="right").astype(np.int64)


def latency_quantile(hist: npt.ArrayLike, q: float) -> float:
    """Quantile (0..1) of latency from a fixed-layout histogram, at the bin's geometric middle.

    Used by dashboards, guardrails and the SLO checks; accurate to one bin
    (about 12% relative width).  Returns NaN for an empty histogram.
    """
    counts = np.asarray(hist, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return float("nan")
    # At least one observation's worth, so q=0 lands on the first occupied bin.
    index = int(np.searchsorted(np.cumsum(counts), max(q * total, 0.5), side="left"))
    if index == 0:
        return float(LATENCY_EDGES_MS[0])
    if index >= N_LATENCY_BINS - 1:
        return float(LATENCY_EDGES_MS[-1])
    return float(np.sqrt(LATENCY_EDGES_MS[index - 1] * LATENCY_EDGES_MS[index]))


def latency_at_or_above(hist: npt.ArrayLike, threshold_ms: float) -> tuple[int, float]:
    """(requests certainly at or above `threshold_ms`, the bin edge they start at) in a fixed-layout histogram.

    Counts the bins whose lower edge is at or above the threshold: the first
    edge >= `threshold_ms` (a 50 ms SLO: 50.12 ms), since the histogram cannot
    place a request inside its bin.  For a threshold above the geometric
    middle of the bin it falls in (50 ms is), a p99 read above it
    (`latency_quantile`) is the same event as more than 1% of the requests
    counted here; for a lower one, a p99 read in that bin is over the
    threshold while this count is not.  Used by the SLO test
    (`schemas.slo.quantile_breach`) and the sidecar breaker's maximum rule.
    """
    counts = np.asarray(hist, dtype=np.int64)
    first = int(np.searchsorted(LATENCY_EDGES_MS, threshold_ms, side="left"))
    if first >= len(LATENCY_EDGES_MS):  # above the layout's last edge: no request can be placed above it
        return 0, math.inf
    return int(counts[first + 1 :].sum()), float(LATENCY_EDGES_MS[first])


class MetricWindow(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="type", tag="metric_window"
):
    """One additive partial: what one source partition saw of one arm in one window.

    `partial_id` is deterministic, so a partial republished after a crash
    replaces (never adds to) its earlier copy.  `late` marks partials made of
    events that arrived after their window had closed.
    """

    schema_version: int
    partial_id: Id
    source_topic: Id
    source_partition: Annotated[int, Meta(ge=0)]
    window_start_ms: int
    window_end_ms: int
    surface: Id
    arm_id: Id
    cohort: Id
    config_versions: tuple[int, ...]
    buckets: Annotated[int, Meta(ge=1, le=65_536)]
    fields: tuple[str, ...]
    bucket_ids: tuple[int, ...]
    sums: tuple[tuple[float, ...], ...]
    latency_bins: tuple[int, ...]
    latency_counts: tuple[int, ...]
    item_events: Annotated[int, Meta(ge=0)]
    late: bool = False


@dataclass(frozen=True, slots=True)
class ArmTotals:
    """Merged totals of one arm across partials: what `rectune metrics` prints.

    Callers: the metrics CLI, tests that check exact totals, the agents' readers.
    """

    surface: str
    arm_id: str
    sums: FloatArray  # (N_FIELDS, buckets)
    latency_hist: IntArray  # (N_LATENCY_BINS,)
    item_events: int
    late_item_events: int
    windows: int

    def total(self, field: str) -> float:
        """Sum of one field over all buckets."""
        return float(self.sums[FIELD_INDEX[field]].sum())

    def ratio(self, numerator: str, denominator: str) -> float:
        """Ratio of two field totals (NaN when the denominator is zero)."""
        den = self.total(denominator)
        return self.total(numerator) / den if den else float("nan")


def window_arrays(window: MetricWindow) -> tuple[FloatArray, IntArray]:
    """The (fields × buckets) sums and latency histogram of a partial as arrays.

    Refuses partials whose layout differs from this build's (a field rename or
    a different histogram would silently corrupt merged totals).
    """
    if window.fields != BUCKET_FIELDS:
        msg = f"fields: must equal this build's BUCKET_FIELDS layout, got {window.fields}"
        raise ValueError(msg)
    ids = np.asarray(window.bucket_ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= window.buckets or np.unique(ids).size != ids.size):
        msg = f"bucket_ids: must be distinct integers in [0, {window.buckets})"
        raise ValueError(msg)
    if len(window.sums) != N_FIELDS or any(len(row) != ids.size for row in window.sums):
        msg = f"sums: must be {N_FIELDS} rows of {ids.size} values (one per listed bucket)"
        raise ValueError(msg)
    packed = np.asarray(window.sums, dtype=np.float64).reshape(N_FIELDS, ids.size)
    sums = np.zeros((N_FIELDS, window.buckets), dtype=np.float64)
    sums[:, ids] = packed
    bins = np.asarray(window.latency_bins, dtype=np.int64)
    counts = np.asarray(window.latency_counts, dtype=np.int64)
    if bins.shape != counts.shape or (
        bins.size and (bins.min() < 0 or bins.max() >= N_LATENCY_BINS or counts.min() < 0)
    ):
        msg = f"latency_bins: must pair with non-negative latency_counts and lie in [0, {N_LATENCY_BINS})"
        raise ValueError(msg)
    hist = np.zeros(N_LATENCY_BINS, dtype=np.int64)
    np.add.at(hist, bins, counts)
    return sums, hist


def sparse_window_arrays(
    sums: FloatArray, hist: IntArray
) -> tuple[tuple[int, ...], tuple[tuple[float, ...], ...], tuple[int, ...], tuple[int, ...]]:
    """Sparse wire form of dense (fields × buckets) sums and a histogram (the inverse of `window_arrays`)."""
    ids = np.flatnonzero(np.any(sums != 0.0, axis=0))
    bins = np.flatnonzero(hist)
    return (
        tuple(ids.tolist()),
        tuple(tuple(row) for row in sums[:, ids].tolist()),
        tuple(bins.tolist()),
        tuple(hist[bins].tolist()),
    )


def merge_by_arm(windows: Mapping[str, MetricWindow]) -> dict[tuple[str, str], ArmTotals]:
    """Merge deduplicated partials (keyed by `partial_id`) into per-(surface, arm) totals."""
    return _merge(windows, lambda w: (w.surface, w.arm_id))


def merge_by_arm_cohort(windows: Mapping[str, MetricWindow]) -> dict[tuple[str, str, str], ArmTotals]:
    """Merge deduplicated partials into per-(surface, arm, cohort) totals.

    Called by the agents' metrics feed (`agents.metrics_feed.MetricsFeed.cohort_totals`)
    so Insight can read each experiment per cohort as well as pooled.
    """
    return _merge(windows, lambda w: (w.surface, w.arm_id, w.cohort))


_Key = TypeVar("_Key", bound=tuple[str, ...])


def _merge(windows: Mapping[str, MetricWindow], key_of: Callable[[MetricWindow], _Key]) -> dict[_Key, ArmTotals]:
    acc: dict[_Key, tuple[FloatArray, IntArray, int, int, set[int]]] = {}
    for window in windows.values():
        sums, hist = window_arrays(window)
        key = key_of(window)
        if key not in acc:
            acc[key] = (np.zeros_like(sums), np.zeros(N_LATENCY_BINS, np.int64), 0, 0, set())
        total_sums, total_hist, events, late, starts = acc[key]
        if total_sums.shape != sums.shape:
            msg = f"buckets: partials of {key} disagree on the bucket count"
            raise ValueError(msg)
        total_sums += sums
        total_hist += hist
        starts.add(window.window_start_ms)
        acc[key] = (
            total_sums,
            total_hist,
            events + window.item_events,
            late + (window.item_events if window.late else 0),
            starts,
        )
    return {key: ArmTotals(key[0], key[1], s, h, e, late, len(starts)) for key, (s, h, e, late, starts) in acc.items()}
