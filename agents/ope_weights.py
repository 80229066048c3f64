"""How heavy importance weights are, and when an estimate built on them counts as evidence.

What lives here: `ReliabilityRule` (the ESS, ESS-share and mean-weight
thresholds) and its default `DEFAULT_RULE`, `WeightDiagnostics` (max weight,
mean weight and its standard error, Kish's ESS, the verdict and its reason),
`effective_sample_size`, `weight_diagnostics` and `_diagnose`, which builds the
diagnostics every estimate carries.  The rule and its references are described
under "Heavy weights" in `agents.ope`.

Who calls it: the estimators (`agents.ope_estimators`) attach `_diagnose` to
every result, and the Critic's harm check (`agents.ope_harm`) is reliable only
when both policies' diagnostics are; callers and tests reach the public names
through `agents.ope`.  Pure numpy; no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy.typing as npt

from agents.ope_rows import FloatArray, IntArray, _groups, _mean_variance, _vector
from agents.stats.errors import StatsError


@dataclass(frozen=True, slots=True)
class ReliabilityRule:
    """When importance weights are too heavy for an estimate to count as evidence.

    An estimate is unreliable when its effective sample size is below `min_ess`
    rows or below `min_ess_share` of the rows, or when the mean weight is more
    than `max_mean_weight_z` standard errors away from its expectation 1
    (`math.inf` turns that check off).
    """

    min_ess: float = 100.0
    min_ess_share: float = 0.01
    max_mean_weight_z: float = 4.0

    def __post_init__(self) -> None:
        checks = (
            ("min_ess", self.min_ess, 0.0 <= self.min_ess < math.inf),
            ("min_ess_share", self.min_ess_share, 0.0 <= self.min_ess_share <= 1.0),
            ("max_mean_weight_z", self.max_mean_weight_z, self.max_mean_weight_z > 0.0),
        )
        for name, value, ok in checks:
            if not ok:  # comparisons with NaN are False, so NaN is refused too
                msg = f"{name}: reliability threshold out of range, got {value!r}"
                raise StatsError(msg, "0 <= min_ess < inf, 0 <= min_ess_share <= 1, max_mean_weight_z > 0 (inf: off)")


DEFAULT_RULE: Final = ReliabilityRule()


@dataclass(frozen=True, slots=True)
class WeightDiagnostics:
    """How heavy the importance weights w = target / logging are, and whether an estimate built on them counts.

    `ess` is Kish's effective sample size (Σw)²/Σw² (0 when every weight is 0);
    `mean_weight_se` is the (clustered, if clusters were given) standard error
    of the mean weight.
    """

    rows: int
    weight_sum: float
    mean_weight: float
    mean_weight_se: float
    max_weight: float
    ess: float
    reliable: bool
    reason: str

    @property
    def ess_share(self) -> float:
        """ESS as a share of the rows (1 when all weights are equal)."""
        return self.ess / self.rows

    @property
    def mean_weight_z(self) -> float:
        """(mean weight − 1) / its standard error: far from 0 signals missing support or wrong propensities."""
        gap = self.mean_weight - 1.0
        if self.mean_weight_se > 0.0:
            return gap / self.mean_weight_se
        return 0.0 if gap == 0.0 else math.copysign(math.inf, gap)


def effective_sample_size(weights: npt.ArrayLike) -> float:
    """Kish's effective sample size (Σw)² / Σw² of non-negative weights (n when all are equal; 0 when all are 0)."""
    w = _vector("weights", weights, None)
    if (w < 0.0).any():
        msg = "weights: importance weights must be non-negative"
        raise StatsError(msg, "weights are target probability / logging propensity")
    return _ess(w)


def _ess(w: FloatArray) -> float:
    square = float(w @ w)
    return float(w.sum()) ** 2 / square if square > 0.0 else 0.0


def weight_diagnostics(
    weights: npt.ArrayLike, *, cluster_ids: npt.ArrayLike | None = None, rule: ReliabilityRule = DEFAULT_RULE
) -> WeightDiagnostics:
    """Diagnose importance weights w = target / logging: max, mean (expected 1), ESS, and the reliability verdict."""
    w = _vector("weights", weights, None)
    if (w < 0.0).any():
        msg = "weights: importance weights must be non-negative"
        raise StatsError(msg, "weights are target probability / logging propensity")
    return _diagnose(w, _groups(cluster_ids, w.size), rule)


def _diagnose(w: FloatArray, groups: IntArray | None, rule: ReliabilityRule) -> WeightDiagnostics:
    n = w.size
    ess = _ess(w)
    mean = float(w.mean())
    se = math.sqrt(max(_mean_variance(w, groups)[0], 0.0))
    max_weight = float(w.max())
    problems: list[str] = []
    if ess == 0.0:
        problems.append("every weight is 0: the target policy never takes a logged action (no overlap)")
    else:
        if ess < rule.min_ess:
            problems.append(f"ESS {ess:.1f} < {rule.min_ess:g} rows (min_ess)")
        if ess < rule.min_ess_share * n:
            problems.append(f"ESS {ess:.1f} < {rule.min_ess_share:.1%} of {n} rows (min_ess_share)")
    gap = mean - 1.0
    z = gap / se if se > 0.0 else (0.0 if gap == 0.0 else math.copysign(math.inf, gap))
    if abs(z) > rule.max_mean_weight_z:
        problems.append(
            f"mean weight {mean:.4f} is {z:+.1f} standard errors from 1 "
            f"(max_mean_weight_z {rule.max_mean_weight_z:g}): "
            "the logging policy misses part of the target's support or the propensities are wrong"
        )
    summary = f"ESS {ess:.1f} of {n} rows ({ess / n:.1%}), max weight {max_weight:.4g}, mean weight {mean:.4f}"
    if problems:
        reason = (
            "unreliable: "
            + "; ".join(problems)
            + f" [{summary}]; hint: treat as no evidence, cap the weights (clipped_ips) only as a sensitivity "
            "check, or collect more exploration on the target's actions"
        )
    else:
        reason = f"reliable: {summary}"
    return WeightDiagnostics(n, float(w.sum()), mean, se, max_weight, ess, not problems, reason)
