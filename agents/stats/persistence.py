"""How much of a ratio read's variance is persistent: user effects that more traffic of the same users keeps.

The delta method over user buckets (`ratio`) measures Var(r) of a window
correctly, but the power gate must *project* it to the experiment's horizon.
Scaling it as 1/traffic assumes every new request comes with new users.  On a
surface whose users come back (a retailer's regulars), each bucket's mean
keeps the persistent propensities of its users however long it runs: that
part of the variance does not shrink with time, only with the share of
users an arm holds.  Measured in the simulated worlds, a read over 12× the
traffic had 0.9× the standard error, against the 0.29× that 1/traffic
projects.

Model.  Write bucket j's linearised value (`ratio.linearize`) in a window as
l_j = w_j·p_j + e_j, with w_j = y_j / ȳ its relative traffic, p_j a
persistent per-unit deviation of the bucket's users (variance σ²_p across
buckets) and e_j transient noise (independent across time).  Split the
window at some times into consecutive parts h: p_j is common to all of
them, e_j is not, so for two parts h ≠ h'

    E[Σ_j l^h_j·l^h'_j] = σ²_p · Σ_j w^h_j·w^h'_j,

which estimates σ²_p without modelling the transient noise.  The persistent
share of the whole window's Σ_j l_j² is then φ = σ̂²_p·Σ_j w_j² / Σ_j l_j²
(clamped to [0, 1]).  Each part's own ratio defines its residuals, so a
drift of the whole surface between the parts (a weekend, a season) is not
read as persistence.

Projection (`agents.stats.power`): with φ measured on a window of W
seconds, the variance per traffic unit of a read over H seconds at the same
per-user rate is σ²_u·(1 − φ + φ·H/W): the transient part per unit stays,
the persistent part per unit grows with the units each user contributes.
Equivalently Var(r) = transient/N + persistent/(user share), with a floor
that no horizon removes.  The estimate has the noise of a cross-product over
B buckets (about 0.2 on φ with 64 buckets).  The projection is linear in
the horizon, which is right for a fixed population that keeps coming back
(the simulated worlds: a read over 12× the traffic had 1.0–1.15 of the
projected standard error) and conservative when users churn: on the
synthetic traffic of `agents.stats.simulate`, whose users arrive through
the horizon and leave after a session, a window of 1/8 of the horizon
projected with φ overstated the horizon's variance about 7× (1/N
understated it 3×).  That is why the loop plans on it only until an
experiment's reads give the curve they really followed (`VarianceCurve`).

Callers: `agents.online_policy.persistent_share_of` (the loop's baseline
window, split at the proposal), `rectune.simloop` (the pilot) and the
tests.  Pure numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from agents.stats.errors import StatsError
from agents.stats.ratio import bucket_pair, linearize, named_rows

MIN_PARTS: Final = 2


@dataclass(frozen=True, slots=True)
class Persistence:
    """The persistent share φ of a window's ratio variance, from its consecutive parts, and what it rests on."""

    share: float
    persistent_variance: float
    buckets: int
    parts: int


def persistence(parts: Sequence[tuple[npt.ArrayLike, npt.ArrayLike]]) -> Persistence:
    """φ of the window made of consecutive `parts`, each a (numerator, denominator) pair of one arm's 1-D buckets.

    Every part must have the same buckets (the same users hash to the same
    bucket).  With more than two parts every pair of distinct parts
    contributes a cross-product (a U-statistic), which lowers the noise: in
    a simulation with 64 buckets the standard error of φ fell from 0.27
    (2 parts) to 0.20 (8 parts).  See the module doc for the estimator.
    """
    if len(parts) < MIN_PARTS:
        msg = f"parts: need at least {MIN_PARTS} consecutive parts of the window, got {len(parts)}"
        raise StatsError(msg, "split the arm's window at a time (e.g. when the round proposed)")
    pairs = [bucket_pair(x, y, name=f"parts[{i}]") for i, (x, y) in enumerate(parts)]
    shape = pairs[0][0].shape
    if len(shape) != 1 or any(x.shape != shape for x, _ in pairs):
        msg = f"parts: must be 1-D bucket arrays of one length, got shapes {[x.shape for x, _ in pairs]}"
        raise StatsError(msg, "split one arm's window at a time; every part keeps every bucket")
    lins = [linearize(x, y) for x, y in pairs]
    weights = [y / y.mean() for _, y in pairs]
    lin_sum, weight_sum = sum(lins[1:], lins[0]), sum(weights[1:], weights[0])
    # Σ over pairs h ≠ h' of Σ_j a_hj·a_h'j = (Σ_h a_h)² − Σ_h a_h², summed over buckets.
    cross = float((lin_sum * lin_sum).sum()) - sum(float((v * v).sum()) for v in lins)
    cross_weight = float((weight_sum * weight_sum).sum()) - sum(float((w * w).sum()) for w in weights)
    if cross_weight <= 0.0:
        msg = "parts: no bucket has traffic in two parts"
        raise StatsError(msg, "a part must span enough traffic to reach most buckets")
    sigma2_p = max(0.0, cross / cross_weight)
    x = sum((p[0] for p in pairs[1:]), pairs[0][0])
    y = sum((p[1] for p in pairs[1:]), pairs[0][1])
    lin = linearize(x, y)
    total = float((lin * lin).sum())
    w = y / y.mean()
    share = min(1.0, sigma2_p * float((w * w).sum()) / total) if total > 0.0 else 0.0
    n = x.size
    # Var(r) ≈ Σ l²/(n(n−1)) (`ratio.ratio_arrays`): the same scale for the persistent part.
    return Persistence(share, share * total / (n * (n - 1)), n, len(pairs))


def persistence_from_sums(parts: Sequence[npt.ArrayLike], numerator: str, denominator: str) -> Persistence:
    """`persistence` of two named rows of one arm's (fields × buckets) sums over consecutive parts of a window."""
    return persistence([named_rows(t, numerator, denominator) for t in parts])


@dataclass(frozen=True, slots=True)
class VarianceCurve:
    """Variance per request of a read T seconds into an experiment, relative to a reference: a + b·T.

    The same shape as the projection above (a = 1 − φ, b = φ/W relative to
    the baseline's variance), but fitted to the reads an experiment really
    had, whatever adjusted them: CUPED removes much of the persistent part,
    and how much depends on how long the read is, which no constant ratio
    captures.  `reads` counts the experiments pooled into it.
    """

    intercept: float
    slope_per_s: float
    reads: int = 1

    def at(self, seconds: float) -> float:
        """The relative variance per request of a read `seconds` long."""
        return self.intercept + self.slope_per_s * seconds

    def share_at(self, seconds: float) -> float:
        """The persistent share φ of a read `seconds` long: the part that grows with time."""
        total = self.at(seconds)
        return self.slope_per_s * seconds / total if total > 0.0 else 0.0


MIN_CURVE_POINTS: Final = 3


def fit_variance_curve(points: Sequence[tuple[float, float]]) -> VarianceCurve | None:
    """Least squares y = a + b·T over (T seconds, relative variance per request) points, with a, b >= 0.

    Called by the loop when an experiment ends (`agents.loop_baseline.
    learn_variance_curve`).  None with fewer than `MIN_CURVE_POINTS` finite
    points or no spread in T (the slope is then not identified).
    """
    pts = np.asarray([(t, y) for t, y in points if math.isfinite(t) and math.isfinite(y) and t >= 0.0 and y >= 0.0])
    if len(pts) < MIN_CURVE_POINTS:
        return None
    t, y = pts[:, 0], pts[:, 1]
    spread = float(((t - t.mean()) ** 2).sum())
    if spread <= 0.0:
        return None
    slope = float(((t - t.mean()) * (y - y.mean())).sum()) / spread
    intercept = float(y.mean()) - slope * float(t.mean())
    if slope < 0.0:  # variance per request that falls with time: no persistent part is seen
        slope, intercept = 0.0, float(y.mean())
    elif intercept < 0.0:  # all of it grows with time: a line through the origin
        slope, intercept = float((t * y).sum() / (t * t).sum()), 0.0
    return VarianceCurve(intercept, slope)


def pooled(old: float, new: float, count: int, memory: int) -> float:
    """`old` (the average of `count` estimates) updated with `new`: a running mean, then an exponential average.

    The weight of the new estimate is 1/(count + 1) until `memory` estimates,
    then 1/`memory`: a surface's users change slowly and one estimate is
    noisy.  Called by `pool_curves` and `agents.loop_baseline.pool_persistent_share`.
    """
    return old + (new - old) / min(count + 1, memory)


def pool_curves(old: VarianceCurve | None, new: VarianceCurve | None, memory: int) -> VarianceCurve | None:
    """`old` updated with one more experiment's `new` curve, each coefficient `pooled` with `memory` experiments."""
    if new is None:
        return old
    if old is None:
        return new
    return VarianceCurve(
        pooled(old.intercept, new.intercept, old.reads, memory),
        pooled(old.slope_per_s, new.slope_per_s, old.reads, memory),
        old.reads + 1,
    )
