"""Ratio metrics over user buckets with delta-method variance (the Online agent's basic read).

A ratio metric is r = Σ_b x_b / Σ_b y_b over the user buckets b = 1..n of one
arm (CTR = clicks / impressions, conversions / requests, revenue / requests).
Users are the randomisation unit and a bucket is a random group of users
(`crc32(user) mod B`), so bucket sums are i.i.d. cluster sums and the
delta method over buckets gives the variance that respects the user as unit
(Deng, Knoblich & Lu, "Applying the Delta Method in Metric Analytics",
KDD 2018, eq. 3):

    Var(r) ≈ (1/n) · [s²_x − 2 r s_xy + r² s²_y] / ȳ²

with bucket-level sample moments (ddof = 1).  Equivalently Var(r) ≈ s²_l / n
for the linearised values l_b = (x_b − r y_b) / ȳ (the influence function of
r), which `linearize` returns and `cuped` reuses.  Empty buckets are data
(a bucket with no traffic is a real cluster of zero size): pass all B
columns of `ArmTotals.sums`, not just the non-empty ones.

Comparisons (`compare`) assume the two arms hold disjoint users (the sidecar
assigns each user to one arm: `Allocation.unit` "user"), so their estimates
are independent:

- difference d = r_T − r_C, Var(d) = Var(r_T) + Var(r_C);
- relative lift L = r_T / r_C − 1 by the delta method on the log ratio,
  Var(log r_T − log r_C) ≈ Var(r_T)/r_T² + Var(r_C)/r_C²; the lift's standard
  error is (1 + L)·sd(log ratio) (the delta method on the ratio of ratios
  gives the same first-order value) and its interval is exp(log ratio ± z·sd)
  − 1, which is asymmetric and never below −100%.

Paired comparisons (`paired_comparison`) are for per-request allocations
(`Allocation.unit` "request"): every user's requests are spread over the arms,
so bucket b holds the same users in both arms and the arms' linearised values
are correlated through them.  The bucket is still the independent cluster, so

- Var(d) ≈ Σ_b (l_T,b − l_C,b)² / (n(n − 1)) and
- Var(log r_T − log r_C) ≈ Σ_b (l_T,b/r_T − l_C,b/r_C)² / (n(n − 1)),

which keeps the covariance term the independent formula drops.  A user's
propensity enters both arms of its bucket and cancels in the difference: in
the simulated apparel worlds this read's variance is about a tenth of a
CUPED-adjusted per-user read at the same traffic (BENCHMARKS.md).
`compare_sums` picks the read for an allocation's unit.

Reads stratified by allocation period (`compare_sums` given (periods ×
fields × buckets) sums).  When an experiment's allocation changes — a ramp
from 10% to 50%, a stopped arm's traffic handed back — the arms' traffic
comes from different mixes of time, and pooled sums compare an arm served
mostly after a shift in the base rate (weekly turnover, a weekday, a
campaign) with a control served mostly before it: Simpson's paradox
(Kohavi & Longbotham, "Online Experiments: Lessons Learned", 2007; traced
here in apparel_core, where a +0.3% arm read −4.4% across the day-7
turnover and was stopped as a significant loser).  Within one period the
shares are constant, so each period's arms sample the same times.  The
stratified value of an arm is r = Σ_s w_s r_s over the periods s, with
Cochran–Mantel–Haenszel weights w_s ∝ n_C,s·n_T,s/(n_C,s + n_T,s) (n: the
arms' denominators in the period; the same weights for both arms, and the
most precise fixed weights when a request's variance is the same in every
period: a long 10% stage weighs what its few treated requests say, not
its many control ones), and its linearised value per bucket
l_b = Σ_s w_s (x_sb − r_s y_sb)/ȳ_s, so every variance above holds as
written (a bucket's users in several periods stay one cluster).  With one
period it is the plain read exactly.

Callers: the Online agent (interim reads, guardrail metrics), `cuped`,
`power` (variance per unit from observed buckets), `proofs` and the tests.
Pure numpy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from agents.stats.distributions import two_sided_z
from agents.stats.errors import StatsError
from schemas.metrics import FIELD_INDEX

FloatArray = npt.NDArray[np.float64]

MIN_BUCKETS: Final = 2
_HINT_BUCKETS: Final = "pass every user bucket of the arm (B columns of ArmTotals.sums), empty ones included"


def bucket_pair(
    numerator: npt.ArrayLike, denominator: npt.ArrayLike, *, name: str = ""
) -> tuple[FloatArray, FloatArray]:
    """Validate a (numerator, denominator) pair of bucket arrays; returns float64 copies.

    Rules: same shape, last axis = buckets (at least 2), finite values, and a
    positive denominator total on every row.
    """
    prefix = f"{name}." if name else ""
    x = np.asarray(numerator, dtype=np.float64)
    y = np.asarray(denominator, dtype=np.float64)
    if x.shape != y.shape or x.ndim == 0:
        msg = f"{prefix}numerator, {prefix}denominator: must be bucket arrays of one shape, got {x.shape} and {y.shape}"
        raise StatsError(msg, _HINT_BUCKETS)
    if x.shape[-1] < MIN_BUCKETS:
        msg = f"{prefix}numerator: needs at least {MIN_BUCKETS} buckets for a variance, got {x.shape[-1]}"
        raise StatsError(msg, _HINT_BUCKETS)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        msg = f"{prefix}numerator, {prefix}denominator: must be finite (no NaN or inf)"
        raise StatsError(msg)
    if not (y.sum(axis=-1) > 0.0).all():
        msg = f"{prefix}denominator: total over buckets must be positive"
        raise StatsError(msg, "read the arm only once it has traffic")
    return x, y


def ratio_arrays(numerator: npt.ArrayLike, denominator: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Ratio and delta-method variance over the LAST axis (buckets), vectorised over leading axes.

    For arrays of shape (..., n) returns (r, Var(r)) of shape (...): used by
    the simulation harness to read every look of an experiment at once.
    """
    x, y = bucket_pair(numerator, denominator)
    n = x.shape[-1]
    r = x.sum(axis=-1) / y.sum(axis=-1)
    ybar = y.mean(axis=-1)
    lin = (x - r[..., None] * y) / ybar[..., None]
    var = (lin * lin).sum(axis=-1) / (n - 1) / n  # lin has mean exactly 0 by construction
    return r, var


def linearize(numerator: npt.ArrayLike, denominator: npt.ArrayLike) -> FloatArray:
    """Per-bucket linearised values l_b = (x_b − r·y_b) / ȳ (mean 0; Var(r) ≈ var(l)/n).

    `cuped` uses them as the response and (pre-period) covariate.
    """
    x, y = bucket_pair(numerator, denominator)
    r = x.sum(axis=-1, keepdims=True) / y.sum(axis=-1, keepdims=True)
    out: FloatArray = (x - r * y) / y.mean(axis=-1, keepdims=True)
    return out


@dataclass(frozen=True, slots=True)
class RatioEstimate:
    """One arm's ratio metric: value, delta-method variance, totals and bucket count."""

    value: float
    variance: float
    numerator_total: float
    denominator_total: float
    buckets: int

    @property
    def se(self) -> float:
        """Standard error sqrt(Var(r))."""
        return math.sqrt(self.variance)

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """Two-sided fixed-sample normal interval r ± z·se (not always-valid: see `sequential`)."""
        half = two_sided_z(level) * self.se
        return self.value - half, self.value + half


def ratio_estimate(numerator: npt.ArrayLike, denominator: npt.ArrayLike) -> RatioEstimate:
    """The ratio Σx/Σy of one arm with its delta-method variance over the given 1-D bucket arrays."""
    x, y = bucket_pair(numerator, denominator)
    if x.ndim != 1:
        msg = f"numerator: must be 1-D (one value per bucket), got shape {x.shape}"
        raise StatsError(msg, "use ratio_arrays for a batch of reads")
    r, var = ratio_arrays(x, y)
    return RatioEstimate(float(r), float(var), float(x.sum()), float(y.sum()), int(x.size))


def named_rows(sums: npt.ArrayLike, numerator: str, denominator: str) -> tuple[FloatArray, FloatArray]:
    """The (numerator, denominator) rows of an arm's (fields × buckets) sums (`schemas.metrics.ArmTotals.sums`).

    Called by `ratio_from_sums` and `agents.stats.cuped.cuped_from_sums`;
    raises `StatsError` naming an unknown field or a sums table of the wrong shape.
    """
    for arg, field in (("numerator", numerator), ("denominator", denominator)):
        if field not in FIELD_INDEX:
            msg = f"{arg}: {field!r} is not a bucket field; known: {sorted(FIELD_INDEX)}"
            raise StatsError(msg)
    table = np.asarray(sums, dtype=np.float64)
    if table.ndim != 2 or table.shape[0] != len(FIELD_INDEX):
        msg = f"sums: must be (fields × buckets) with {len(FIELD_INDEX)} rows, got shape {table.shape}"
        raise StatsError(msg)
    return table[FIELD_INDEX[numerator]], table[FIELD_INDEX[denominator]]


def ratio_from_sums(sums: npt.ArrayLike, numerator: str, denominator: str) -> RatioEstimate:
    """`ratio_estimate` of two named rows of an arm's (fields × buckets) sums (`schemas.metrics.ArmTotals.sums`)."""
    return ratio_estimate(*named_rows(sums, numerator, denominator))


@dataclass(frozen=True, slots=True)
class Comparison:
    """Treatment vs control on one ratio metric: absolute difference and relative lift, with variances.

    `lift`, `log_ratio` and `log_ratio_variance` are NaN when either arm's
    ratio is not positive (a lift is undefined then); the difference is
    always defined.  `difference`/`difference_variance` are what the
    sequential test consumes (`SequentialState.update`); `log_ratio` and its
    variance are the relative-scale alternative.
    """

    control: float
    treatment: float
    difference: float
    difference_variance: float
    lift: float
    log_ratio: float
    log_ratio_variance: float

    @property
    def difference_se(self) -> float:
        """Standard error of the absolute difference."""
        return math.sqrt(self.difference_variance)

    @property
    def lift_se(self) -> float:
        """First-order standard error of the relative lift: (1 + lift)·sd(log ratio)."""
        return (1.0 + self.lift) * math.sqrt(self.log_ratio_variance)

    def difference_interval(self, level: float = 0.95) -> tuple[float, float]:
        """Fixed-sample interval for the difference (for a single final read only)."""
        half = two_sided_z(level) * self.difference_se
        return self.difference - half, self.difference + half

    def lift_interval(self, level: float = 0.95) -> tuple[float, float]:
        """Fixed-sample interval for the lift: exp(log ratio ± z·sd) − 1 (asymmetric, > −1)."""
        half = two_sided_z(level) * math.sqrt(self.log_ratio_variance)
        return math.expm1(self.log_ratio - half), math.expm1(self.log_ratio + half)


def comparison(control: float, control_variance: float, treatment: float, treatment_variance: float) -> Comparison:
    """Build a `Comparison` from two independent arm estimates and their variances (also used by `cuped`)."""
    values = (control, control_variance, treatment, treatment_variance)
    if not all(math.isfinite(v) for v in values) or control_variance < 0.0 or treatment_variance < 0.0:
        msg = f"control, treatment: estimates must be finite with non-negative variances, got {values}"
        raise StatsError(msg)
    return _comparison(
        control,
        treatment,
        treatment_variance + control_variance,
        lambda: treatment_variance / treatment**2 + control_variance / control**2,
    )


def _comparison(
    control: float, treatment: float, difference_variance: float, log_ratio_variance: Callable[[], float]
) -> Comparison:
    """A `Comparison`; the lift and its log-ratio variance (computed only then) when both values are positive."""
    if control > 0.0 and treatment > 0.0:
        log_ratio = math.log(treatment / control)
        log_var = log_ratio_variance()
        lift = math.expm1(log_ratio)
    else:
        log_ratio = log_var = lift = math.nan
    return Comparison(
        control=control,
        treatment=treatment,
        difference=treatment - control,
        difference_variance=difference_variance,
        lift=lift,
        log_ratio=log_ratio,
        log_ratio_variance=log_var,
    )


def compare(control: RatioEstimate, treatment: RatioEstimate) -> Comparison:
    """Difference and relative lift of `treatment` over `control` (independent arms, disjoint users)."""
    return comparison(control.value, control.variance, treatment.value, treatment.variance)


def paired_comparison(
    control: tuple[npt.ArrayLike, npt.ArrayLike], treatment: tuple[npt.ArrayLike, npt.ArrayLike]
) -> Comparison:
    """Difference and lift of `treatment` over `control` when bucket b holds the same users in both arms.

    Each argument is a (numerator, denominator) pair of 1-D bucket arrays in
    the same bucket layout (module doc: per-request allocations).  Called by
    `compare_sums`.
    """
    cx, cy = bucket_pair(*control, name="control")
    tx, ty = bucket_pair(*treatment, name="treatment")
    if cx.ndim != 1 or cx.shape != tx.shape:
        msg = f"control, treatment: must be 1-D over the same buckets, got {cx.shape} and {tx.shape}"
        raise StatsError(msg, "pair the arms' rows of the same bucket layout")
    return _paired(*stratified_linear((cx[None, :], cy[None, :]), (tx[None, :], ty[None, :])))


def _paired(rc: float, rt: float, lc: FloatArray, lt: FloatArray) -> Comparison:
    """The paired `Comparison` from both arms' values and per-bucket linearised values (module doc)."""
    n = lc.size
    difference_variance = float(((lt - lc) ** 2).sum() / (n * (n - 1)))
    return _comparison(rc, rt, difference_variance, lambda: float(((lt / rt - lc / rc) ** 2).sum() / (n * (n - 1))))


def _period_rows(sums: npt.ArrayLike, numerator: str, denominator: str) -> tuple[FloatArray, FloatArray]:
    """(periods × buckets) numerator and denominator rows of (fields × buckets) or (periods × fields × buckets) sums."""
    table = np.asarray(sums, dtype=np.float64)
    if table.ndim == 3:
        rows = [named_rows(period, numerator, denominator) for period in table]
        if not rows:
            msg = "sums: no allocation period"
            raise StatsError(msg, "pass the arm's sums of at least one period")
        return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])
    x, y = named_rows(table, numerator, denominator)
    return x[None, :], y[None, :]


def stratified_linear(
    control: tuple[FloatArray, FloatArray], treatment: tuple[FloatArray, FloatArray]
) -> tuple[float, float, FloatArray, FloatArray]:
    """(r_C, r_T, l_C, l_T): each arm's period-stratified ratio and per-bucket linearised values (module doc).

    Each argument is a (numerator, denominator) pair of (periods × buckets)
    arrays.  Periods in which either arm has no denominator are left out (an
    arm with no traffic then cannot be compared on them); one period gives
    `ratio_estimate`'s value and `linearize`'s values.  Called by `compare_sums`.
    """
    cx, cy = control
    tx, ty = treatment
    if cx.shape != tx.shape or cx.shape != cy.shape or tx.shape != ty.shape or cx.ndim != 2:
        msg = f"control, treatment: must be (periods × buckets) of one shape, got {cx.shape} and {tx.shape}"
        raise StatsError(msg, "pair the arms' rows of the same periods and bucket layout")
    keep = (cy.sum(axis=-1) > 0.0) & (ty.sum(axis=-1) > 0.0)
    if keep.any() and not keep.all():
        cx, cy, tx, ty = cx[keep], cy[keep], tx[keep], ty[keep]
    cx, cy = bucket_pair(cx, cy, name="control")
    tx, ty = bucket_pair(tx, ty, name="treatment")
    nc, nt = cy.sum(axis=-1), ty.sum(axis=-1)
    information = nc * nt / (nc + nt)  # Cochran–Mantel–Haenszel: a period's weight is what it tells of a difference
    weights = information / information.sum()

    def arm(x: FloatArray, y: FloatArray) -> tuple[float, FloatArray]:
        return float(weights @ (x.sum(axis=-1) / y.sum(axis=-1))), weights @ linearize(x, y)

    (rc, lc), (rt, lt) = arm(cx, cy), arm(tx, ty)
    return rc, rt, lc, lt


def compare_sums(
    control: npt.ArrayLike, treatment: npt.ArrayLike, numerator: str, denominator: str, *, paired: bool = False
) -> Comparison:
    """Treatment vs control on a ratio of two named rows of each arm's sums, stratified by allocation period.

    Each arm's sums are (fields × buckets) (`schemas.metrics.ArmTotals.sums`)
    or, when the allocation changed during the experiment, (periods × fields
    × buckets): one table per allocation period (module doc).  `paired` (the
    experiment's allocation randomises requests) keeps the covariance of the
    arms' buckets (`paired_comparison`), otherwise the arms are independent
    (`compare`, disjoint users).  Called by the Online agent's primary and
    non-inferiority reads, Insight, the report's lift and the tuning bench's
    baselines, so all read an experiment the same way.
    """
    rc, rt, lc, lt = stratified_linear(
        _period_rows(control, numerator, denominator), _period_rows(treatment, numerator, denominator)
    )
    if paired:
        return _paired(rc, rt, lc, lt)
    n = lc.size
    return comparison(rc, float((lc * lc).sum() / (n * (n - 1))), rt, float((lt * lt).sum() / (n * (n - 1))))
