"""Distribution functions the statistics need, in numpy/math only (no scipy).

- `normal_cdf` / `normal_sf`: exact via `math.erfc` (full double precision,
  including deep tails: `normal_sf(10)` is ~7.6e-24, not 0);
  `two_sided_p`: the fixed-horizon z-test's p-value of an estimate and its variance.
- `normal_ppf`: Acklam's rational approximation (relative error < 1.2e-9)
  polished by one Halley step on `erfc`, giving ~1e-15 absolute accuracy on
  (1e-300, 1 - 1e-16).
- `chi2_sf`: the regularized upper incomplete gamma Q(k/2, x/2), by the
  series for P(a, x) when x < a + 1 and Lentz's continued fraction for
  Q(a, x) otherwise (Numerical Recipes, 3rd ed., §6.2).  Both converge to
  ~1e-15 relative; no Wilson–Hilferty approximation is involved, so tiny
  p-values (the SRM halt at 1e-3 and far below) are accurate.
- `f_sf`: survival of Snedecor's F via the regularized incomplete beta
  I_x(a, b) with Lentz's continued fraction (Numerical Recipes §6.4), ~1e-14.

Callers: `ratio` (interval quantiles), `proofs` and the Online agent's
final look (`two_sided_p`), `srm` (chi-square / F p-values),
`power` (normal quantiles), `sequential` (none: the mSPRT needs only exp/log).
"""

from __future__ import annotations

import math
from typing import Final

from agents.stats.errors import StatsError

_EPS: Final = 1e-16
_TINY: Final = 1e-300
_MAX_ITER: Final = 10_000

_A: Final = (
    -39.69683028665376,
    220.9460984245205,
    -275.9285104469687,
    138.3577518672690,
    -30.66479806614716,
    2.506628277459239,
)
_B: Final = (-54.47609879822406, 161.5858368580409, -155.6989798598866, 66.80131188771972, -13.28068155288572)
_C: Final = (
    -0.007784894002430293,
    -0.3223964580411365,
    -2.400758277161838,
    -2.549732539343734,
    4.374664141464968,
    2.938163982698783,
)
_D: Final = (0.007784695709041462, 0.3224671290700398, 2.445134137142996, 3.754408661907416)
_P_LOW: Final = 0.02425


def normal_cdf(z: float) -> float:
    """P(Z <= z) for a standard normal Z."""
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z (accurate in the upper tail)."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def two_sided_p(estimate: float, variance: float) -> float:
    """2·P(Z > |estimate|/sqrt(variance)): a z-test of estimate = 0; 1 when the variance is not positive and finite."""
    if not (variance > 0.0 and math.isfinite(variance)):
        return 1.0
    return math.erfc(abs(estimate) / math.sqrt(2.0 * variance))


def two_sided_z(level: float) -> float:
    """The z of a two-sided normal interval at confidence `level` (1.96 at 0.95), for 0 < level < 1.

    The one check of a confidence level: ratio, CUPED and off-policy intervals all call it.
    """
    if not (isinstance(level, float | int) and 0.0 < level < 1.0):
        msg = f"level: confidence level must be in (0, 1), got {level!r}"
        raise StatsError(msg, "use e.g. 0.95")
    return normal_ppf(0.5 + 0.5 * float(level))


def normal_ppf(p: float) -> float:
    """The standard normal quantile: z with P(Z <= z) = p, for 0 < p < 1."""
    if not 0.0 < p < 1.0:
        msg = f"p: normal quantile needs 0 < p < 1, got {p!r}"
        raise StatsError(msg)
    if p < _P_LOW:
        q = math.sqrt(-2.0 * math.log(p))
        x = (((((_C[0] * q + _C[1]) * q + _C[2]) * q + _C[3]) * q + _C[4]) * q + _C[5]) / (
            (((_D[0] * q + _D[1]) * q + _D[2]) * q + _D[3]) * q + 1.0
        )
    elif p <= 1.0 - _P_LOW:
        q = p - 0.5
        r = q * q
        x = (
            (((((_A[0] * r + _A[1]) * r + _A[2]) * r + _A[3]) * r + _A[4]) * r + _A[5])
            * q
            / (((((_B[0] * r + _B[1]) * r + _B[2]) * r + _B[3]) * r + _B[4]) * r + 1.0)
        )
    else:
        q = math.sqrt(-2.0 * math.log1p(-p))
        x = -(((((_C[0] * q + _C[1]) * q + _C[2]) * q + _C[3]) * q + _C[4]) * q + _C[5]) / (
            (((_D[0] * q + _D[1]) * q + _D[2]) * q + _D[3]) * q + 1.0
        )
    # One Halley step on the exact CDF (work in the smaller tail to keep precision).
    e = normal_cdf(x) - p if p < 0.5 else (1.0 - p) - normal_sf(x)
    u = e * math.sqrt(2.0 * math.pi) * math.exp(0.5 * x * x)
    return x - u / (1.0 + 0.5 * x * u)


def _gamma_p_series(a: float, x: float) -> float:
    term = 1.0 / a
    total = term
    ap = a
    for _ in range(_MAX_ITER):
        ap += 1.0
        term *= x / ap
        total += term
        if abs(term) < abs(total) * _EPS:
            break
    return total * math.exp(-x + a * math.log(x) - math.lgamma(a))


def _gamma_q_fraction(a: float, x: float) -> float:
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, _MAX_ITER):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = _TINY if abs(d) < _TINY else d
        c = b + an / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return math.exp(-x + a * math.log(x) - math.lgamma(a)) * h


def gamma_q(a: float, x: float) -> float:
    """Regularized upper incomplete gamma Q(a, x) = Γ(a, x) / Γ(a), for a > 0, x >= 0."""
    if not (a > 0.0 and math.isfinite(a)) or not (x >= 0.0):
        msg = f"a, x: gamma_q needs a > 0 and x >= 0, got a={a!r}, x={x!r}"
        raise StatsError(msg)
    if x == 0.0:
        return 1.0
    if math.isinf(x):
        return 0.0
    if x < a + 1.0:
        return max(0.0, 1.0 - _gamma_p_series(a, x))
    return min(1.0, _gamma_q_fraction(a, x))


def chi2_sf(statistic: float, df: float) -> float:
    """P(χ²_df > statistic): the p-value of a chi-square statistic with `df` degrees of freedom."""
    if not df > 0.0:
        msg = f"df: chi-square needs df > 0, got {df!r}"
        raise StatsError(msg)
    if statistic <= 0.0:
        return 1.0
    return gamma_q(0.5 * df, 0.5 * statistic)


def _beta_fraction(a: float, b: float, x: float) -> float:
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (_TINY if abs(d) < _TINY else d)
    h = d
    for m in range(1, _MAX_ITER):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (_TINY if abs(d) < _TINY else d)
        c = 1.0 + aa / c
        c = _TINY if abs(c) < _TINY else c
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (_TINY if abs(d) < _TINY else d)
        c = 1.0 + aa / c
        c = _TINY if abs(c) < _TINY else c
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return h


def beta_inc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b), for a, b > 0 and 0 <= x <= 1."""
    if not (a > 0.0 and b > 0.0) or not 0.0 <= x <= 1.0:
        msg = f"a, b, x: beta_inc needs a, b > 0 and 0 <= x <= 1, got a={a!r}, b={b!r}, x={x!r}"
        raise StatsError(msg)
    if x in (0.0, 1.0):
        return x
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def f_sf(statistic: float, df1: float, df2: float) -> float:
    """P(F_{df1, df2} > statistic): the p-value of an F statistic (used for Hotelling's T² in `srm`)."""
    if not (df1 > 0.0 and df2 > 0.0):
        msg = f"df1, df2: F needs positive degrees of freedom, got {df1!r}, {df2!r}"
        raise StatsError(msg)
    if statistic <= 0.0:
        return 1.0
    if math.isinf(statistic):
        return 0.0
    return beta_inc(0.5 * df2, 0.5 * df1, df2 / (df2 + df1 * statistic))


def chi2_ppf(q: float, df: float) -> float:
    """The χ²_df quantile x with P(χ²_df <= x) = q, by bisection on `chi2_sf` (to ~1e-12 relative).

    Used by `power` for the upper confidence limit of a pilot variance (Browne 1995).
    """
    if not 0.0 < q < 1.0 or not df > 0.0:
        msg = f"q, df: chi-square quantile needs 0 < q < 1 and df > 0, got {q!r}, {df!r}"
        raise StatsError(msg)
    lo, hi = 0.0, max(1.0, df)
    while 1.0 - chi2_sf(hi, df) < q:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if 1.0 - chi2_sf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return 0.5 * (lo + hi)
