"""CUPED for ratio metrics with pre-period bucket covariates (variance reduction for the Online agent).

Method: CUPED (Deng, Xu, Kohavi & Walker, "Improving the Sensitivity of Online
Controlled Experiments by Utilizing Pre-Experiment Data", WSDM 2013) applied
to ratio metrics through the delta method (Deng, Knoblich & Lu, KDD 2018, §4):

- the response is the arm's ratio r_a = Σx/Σy, linearised per bucket as
  l_b = (x_b − r_a·y_b)/ȳ (so Var(r_a) ≈ var(l)/n);
- the covariate is the same metric of the same users before the experiment,
  r'_a, linearised the same way per bucket, l'_b;
- θ = Σ_a Cov(r_a, r'_a) / Σ_a Var(r'_a), pooled within arms (pooling keeps
  θ the same for every arm, so the adjustment cannot manufacture a difference);
- adjusted r̃_a = r_a − θ·(r'_a − r̄'), with r̄' the pooled pre-period ratio of
  all arms, and Var(r̃_a) ≈ var(l − θ·l')/n.  The variance reduction factor
  Var(r̃)/Var(r) ≈ 1 − ρ² (ρ: bucket-level correlation of l and l').

Unbiasedness: the pre-period is untouched by the treatment, so E[r'_T − r'_C]
= 0 and d̃ = d − θ·(r'_T − r'_C) has the same mean as d (up to the O(1/n) bias
of an estimated θ).  r̄' cancels exactly in the difference and to first order
in the log ratio, so the per-arm variances combine as independent ones.

Requirement on the input (checked where it can be): the pre-period sums of
arm a must be those of the users *now assigned to arm a*, per metric bucket
(re-key pre-period events with the experiment's deterministic assignment,
`serving_sidecar.assignment.assign`, or read an A/A pre-period with the same
salt).  Pre-period sums shared by all arms (one per bucket) carry no
information about the arms' chance imbalance: the adjustment is then a no-op
on the difference and the per-arm variance formula would be wrong, so
identical pre-period arrays across arms are refused.

Callers: the Online agent (each interim read, when pre-period windows exist),
`proofs`, the tests.  Pure numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agents.stats.distributions import two_sided_z
from agents.stats.errors import StatsError
from agents.stats.ratio import (
    Comparison,
    FloatArray,
    bucket_pair,
    comparison,
    linearize,
    named_rows,
    ratio_arrays,
)

BucketArrays = tuple[npt.ArrayLike, npt.ArrayLike]


@dataclass(frozen=True, slots=True)
class CupedPaths:
    """Vectorised CUPED output: arrays over arms (axis 0) and any leading read axes (e.g. looks).

    `theta` has the read axes only (one θ per read, pooled over arms); `pre`
    is the pre-period ratio per arm, shape (arms,).
    """

    adjusted: FloatArray
    adjusted_variance: FloatArray
    raw: FloatArray
    raw_variance: FloatArray
    pre: FloatArray
    theta: FloatArray


def cuped_arrays(
    numerator: npt.ArrayLike, denominator: npt.ArrayLike, pre_numerator: npt.ArrayLike, pre_denominator: npt.ArrayLike
) -> CupedPaths:
    """CUPED on arrays: current sums of shape (arms, ..., buckets), pre-period sums of shape (arms, buckets).

    Vectorised over the middle axes so `proofs` reads every look at once.
    """
    x, y = bucket_pair(numerator, denominator, name="current")
    px, py = bucket_pair(pre_numerator, pre_denominator, name="pre")
    if x.ndim < 2 or px.ndim != 2 or px.shape[0] != x.shape[0] or px.shape[-1] != x.shape[-1]:
        msg = f"pre: must be (arms, buckets) matching current {x.shape}, got {px.shape}"
        raise StatsError(msg)
    arms, n = px.shape
    for a in range(arms):
        for b in range(a):
            if np.array_equal(px[a], px[b]) and np.array_equal(py[a], py[b]):
                msg = f"pre: arms {b} and {a} have identical pre-period buckets"
                raise StatsError(msg, "pre-period sums must be of each arm's own users (re-key by the assignment)")
    r, raw_var = ratio_arrays(x, y)
    lin = linearize(x, y)
    shape = (arms, *([1] * (x.ndim - 2)), n)
    lin_pre = linearize(px, py).reshape(shape)
    cov = (lin * lin_pre).sum(axis=-1) / ((n - 1) * n)
    pre_var = (lin_pre * lin_pre).sum(axis=-1) / ((n - 1) * n)
    pooled_pre_var = pre_var.sum(axis=0)
    safe = np.where(pooled_pre_var > 0.0, pooled_pre_var, 1.0)
    theta = np.where(pooled_pre_var > 0.0, cov.sum(axis=0) / safe, 0.0)
    pre_ratio = px.sum(axis=-1) / py.sum(axis=-1)
    pooled_ratio = px.sum() / py.sum()
    offset = (pre_ratio - pooled_ratio).reshape(shape[:-1])
    adjusted = r - theta[None, ...] * offset
    resid = lin - theta[None, ..., None] * lin_pre
    adjusted_var = (resid * resid).sum(axis=-1) / ((n - 1) * n)
    return CupedPaths(adjusted, adjusted_var, r, raw_var, pre_ratio, np.asarray(theta))


@dataclass(frozen=True, slots=True)
class CupedArm:
    """One arm after CUPED: adjusted and raw ratio with their variances, and the pre-period ratio."""

    value: float
    variance: float
    raw_value: float
    raw_variance: float
    pre_value: float

    @property
    def variance_reduction(self) -> float:
        """Var(adjusted)/Var(raw): 1 − ρ² in the limit; below 1 means CUPED helped."""
        return self.variance / self.raw_variance if self.raw_variance > 0.0 else math.nan

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """Two-sided fixed-sample normal interval of the adjusted value (as `RatioEstimate.interval`)."""
        half = two_sided_z(level) * math.sqrt(self.variance)
        return self.value - half, self.value + half


@dataclass(frozen=True, slots=True)
class CupedFit:
    """CUPED over all arms of one read: the pooled θ and each arm's adjusted estimate."""

    theta: float
    arms: tuple[CupedArm, ...]

    def compare(self, treatment: int, control: int = 0) -> Comparison:
        """Adjusted treatment-vs-control `Comparison` (difference and lift) for the sequential test."""
        for name, index in (("treatment", treatment), ("control", control)):
            if not 0 <= index < len(self.arms):
                msg = f"{name}: arm index must be in [0, {len(self.arms)}), got {index}"
                raise StatsError(msg)
        c, t = self.arms[control], self.arms[treatment]
        return comparison(c.value, c.variance, t.value, t.variance)

    def variance_reduction(self, treatment: int, control: int = 0) -> float:
        """Var(adjusted difference)/Var(raw difference) for one pair of arms."""
        c, t = self.arms[control], self.arms[treatment]
        raw = c.raw_variance + t.raw_variance
        return (c.variance + t.variance) / raw if raw > 0.0 else math.nan


def cuped_ratio(current: Sequence[BucketArrays], pre: Sequence[BucketArrays]) -> CupedFit:
    """CUPED-adjusted ratio per arm from (numerator, denominator) bucket arrays, current and pre-period.

    `current[a]` and `pre[a]` are arm a's 1-D bucket sums (same bucket layout
    for every arm; arm 0 is conventionally control).
    """
    if len(current) != len(pre) or len(current) < 2:
        msg = f"current, pre: need one (numerator, denominator) pair per arm, >= 2 arms; got {len(current)}, {len(pre)}"
        raise StatsError(msg)
    try:
        x = np.stack([np.asarray(c[0], dtype=np.float64) for c in current])
        y = np.stack([np.asarray(c[1], dtype=np.float64) for c in current])
        px = np.stack([np.asarray(p[0], dtype=np.float64) for p in pre])
        py = np.stack([np.asarray(p[1], dtype=np.float64) for p in pre])
    except ValueError as exc:
        msg = "current, pre: every arm must have the same number of buckets"
        raise StatsError(msg) from exc
    if x.ndim != 2:
        msg = f"current: each arm's sums must be 1-D over buckets, got {x.shape[1:]}"
        raise StatsError(msg)
    paths = cuped_arrays(x, y, px, py)
    arms = tuple(
        CupedArm(
            value=float(paths.adjusted[a]),
            variance=float(paths.adjusted_variance[a]),
            raw_value=float(paths.raw[a]),
            raw_variance=float(paths.raw_variance[a]),
            pre_value=float(paths.pre[a]),
        )
        for a in range(x.shape[0])
    )
    return CupedFit(theta=float(paths.theta), arms=arms)


def cuped_from_sums(
    current: Sequence[npt.ArrayLike], pre: Sequence[npt.ArrayLike], numerator: str, denominator: str
) -> CupedFit:
    """`cuped_ratio` of two named rows of each arm's (fields × buckets) sums, current and pre-period.

    The arms' `schemas.metrics.ArmTotals.sums` as `ratio_from_sums` takes
    them; arm 0 is the control.  Called by the brain's readings
    (`agents.loop_readings`) and Insight (`agents.insight_metrics`), so both
    read an experiment as the Online agent does.
    """
    rows = [named_rows(t, numerator, denominator) for t in (*current, *pre)]
    return cuped_ratio(rows[: len(current)], rows[len(current) :])
