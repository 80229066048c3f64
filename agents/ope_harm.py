"""The Critic-facing comparisons: candidate minus incumbent on one log, and agreement of two estimates.

What lives here: `OffPolicyDifference` and `difference` (the paired variance
of two policies' estimates that share the log's rows: the Critic's estimate of
harm), `Agreement` and `agreement` (whether two estimates from independent
logs agree within their combined uncertainty).

Who calls it: the Critic's `ope_harm` rule (`agents.critic` takes an
`OffPolicyDifference` keyed by proposal id) and the tests, both through
`agents.ope`; `agreement` is how `tests/agents/test_ope_obd.py` checks an
off-policy estimate against the on-policy mean.  Pure numpy; no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy.typing as npt

from agents.ope_estimators import OffPolicyEstimate, ips, snips
from agents.ope_rows import _groups, _mean_variance, _propensities, _target, _vector
from agents.ope_weights import DEFAULT_RULE, ReliabilityRule
from agents.stats.distributions import two_sided_z
from agents.stats.errors import StatsError


@dataclass(frozen=True, slots=True)
class OffPolicyDifference:
    """Candidate minus incumbent value estimated on one log, with the paired (correlated-rows) variance.

    A negative value is estimated harm.  Reliable only if both policies' weights are.
    """

    estimator: Literal["ips", "snips"]
    value: float
    std_error: float
    lower: float
    upper: float
    level: float
    rows: int
    clusters: int
    candidate: OffPolicyEstimate
    incumbent: OffPolicyEstimate

    @property
    def reliable(self) -> bool:
        """Both policies' weights pass the reliability rule."""
        return self.candidate.reliable and self.incumbent.reliable

    @property
    def reason(self) -> str:
        """The two policies' reliability reasons."""
        return f"candidate: {self.candidate.reason} | incumbent: {self.incumbent.reason}"


@dataclass(frozen=True, slots=True)
class Agreement:
    """Whether two independent estimates of one quantity agree: |a − b| <= z·sqrt(se_a² + se_b²)."""

    difference: float
    std_error: float
    tolerance: float
    z_score: float
    level: float
    agrees: bool


def difference(
    rewards: npt.ArrayLike,
    candidate_probs: npt.ArrayLike,
    incumbent_probs: npt.ArrayLike,
    logging_propensities: npt.ArrayLike,
    *,
    estimator: Literal["ips", "snips"] = "snips",
    cluster_ids: npt.ArrayLike | None = None,
    level: float = 0.95,
    rule: ReliabilityRule = DEFAULT_RULE,
) -> OffPolicyDifference:
    """Candidate minus incumbent value on one log (negative = estimated harm), paired variance over shared rows.

    IPS: influence (w_c − w_i)·r.  SNIPS: the difference of the two ratio
    estimators' linearised values, w_c (r − V_c)/w̄_c − w_i (r − V_i)/w̄_i.
    The Critic treats a reliable difference whose upper bound is below minus its
    tolerated loss as harm; an unreliable one as no evidence either way.
    """
    if estimator not in ("ips", "snips"):
        msg = f"estimator: must be 'ips' or 'snips', got {estimator!r}"
        raise StatsError(msg, "use 'snips' unless the weights are known to average exactly 1")
    r = _vector("rewards", rewards, None)
    propensity = _propensities(logging_propensities, r.size)
    w_c = _target("candidate_probs", candidate_probs, r.size) / propensity
    w_i = _target("incumbent_probs", incumbent_probs, r.size) / propensity
    groups = _groups(cluster_ids, r.size)
    single = snips if estimator == "snips" else ips
    candidate = single(r, candidate_probs, propensity, cluster_ids=cluster_ids, level=level, rule=rule)
    incumbent = single(r, incumbent_probs, propensity, cluster_ids=cluster_ids, level=level, rule=rule)
    if estimator == "ips":
        influence = (w_c - w_i) * r
    else:
        influence = w_c * (r - candidate.value) / float(w_c.mean()) - w_i * (r - incumbent.value) / float(w_i.mean())
    value = candidate.value - incumbent.value
    variance, units = _mean_variance(influence, groups)
    se = math.sqrt(max(variance, 0.0))
    z = two_sided_z(level)
    return OffPolicyDifference(
        estimator, value, se, value - z * se, value + z * se, float(level), r.size, units, candidate, incumbent
    )


def agreement(first: OffPolicyEstimate, second: OffPolicyEstimate, level: float = 0.95) -> Agreement:
    """Whether two estimates from independent logs agree within their combined `level` uncertainty.

    |a − b| <= z·sqrt(se_a² + se_b²), z the two-sided normal quantile (1.96 at 95%).
    """
    z = two_sided_z(level)
    gap = first.value - second.value
    se = math.hypot(first.std_error, second.std_error)
    z_score = gap / se if se > 0.0 else (0.0 if gap == 0.0 else math.copysign(math.inf, gap))
    return Agreement(gap, se, z * se, z_score, float(level), abs(gap) <= z * se)
