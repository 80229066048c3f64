"""The demo's statistics, pure: ratio intervals, relative lift, per-arm summaries of merged partials.

What lives here: `Estimate`, `ratio_interval` (a ratio of bucket sums with
its delta-method interval), `relative_lift`, `ArmStats` and `arm_stats` (one
arm's figures from merged (fields x buckets) sums and a latency histogram),
and the constants `Z95` and `DEFAULT_NORTH_STAR`.

Who calls it: `rectune.progress_windows.WindowBook` summarises every closed
window and the run totals with `arm_stats`; `rectune.demo_view` and the
demo's final summary compare arms with `relative_lift`;
`rectune.progress_format` prints `Estimate` and `ArmStats`.  Nothing here
reads a clock, a socket or a terminal.

Statistics: the randomisation unit is the user, and users are hashed into a
fixed number of buckets (`schemas.metrics.user_bucket`), so a ratio metric
such as CTR (clicks / impressions) gets its variance from the delta method
over buckets — see `ratio_interval`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from schemas.metrics import FIELD_INDEX, FloatArray, IntArray, latency_quantile

__all__ = [
    "DEFAULT_NORTH_STAR",
    "Z95",
    "ArmStats",
    "Estimate",
    "arm_stats",
    "ratio_interval",
    "relative_lift",
]

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
