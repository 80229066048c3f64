"""The single-policy value estimators: IPS, self-normalised IPS, clipped IPS and the on-policy mean.

What lives here: the `Estimator` names, the result types `OffPolicyEstimate`
(value, standard error, interval, weight diagnostics) and `Clipping` (what
capping the weights cost), and `ips`, `snips`, `clipped_ips` and `on_policy`
with their shared steps `_prepare` (checked rewards, weights and clusters) and
`_result` (the CLT interval).  The estimators' maths and references are in the
header of `agents.ope`.

Who calls it: `agents.ope_harm` (the candidate and incumbent estimates inside a
difference) and, through `agents.ope`, the Critic and the tests
(`tests/agents/test_ope.py`, `tests/agents/test_ope_obd.py`).  Pure numpy; no
I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import numpy.typing as npt

from agents.ope_rows import FloatArray, IntArray, _groups, _mean_variance, _propensities, _target, _vector
from agents.ope_weights import DEFAULT_RULE, ReliabilityRule, WeightDiagnostics, _diagnose, _ess
from agents.stats.distributions import two_sided_z
from agents.stats.errors import StatsError

Estimator = Literal["ips", "snips", "clipped_ips", "on_policy"]


@dataclass(frozen=True, slots=True)
class Clipping:
    """What capping the weights at `cap` did: the variance it saved is paid for by a bias bounded here.

    - `clipped_rows`: rows whose weight exceeded the cap;
    - `clipped_mass_share`: Σ(w − min(w, cap)) / Σw, the share of weight mass removed;
    - `excess_mean`: D̂ = mean((w − cap)₊), the estimate of D = E[(w − cap)₊];
    - `bias_bound`: max(|r_lo|, |r_hi|)·D̂, an (estimated) bound on |truth − E[clipped IPS]|;
    - `observed_shift`: unclipped IPS − clipped IPS on this sample, mean((w − cap)₊ r): the unbiased
      estimate of the bias itself (never above the bound, which assumes the worst reward on every
      clipped row and is therefore often far wider);
    - `clipped_ess`: ESS of the capped weights;
    - `widened_lower`, `widened_upper`: the interval shifted by the one-sided bias
      range [r_lo·D̂, r_hi·D̂], so that it targets the unclipped value.
    """

    cap: float
    clipped_rows: int
    clipped_mass_share: float
    excess_mean: float
    bias_bound: float
    observed_shift: float
    clipped_ess: float
    widened_lower: float
    widened_upper: float


@dataclass(frozen=True, slots=True)
class OffPolicyEstimate:
    """One policy's estimated value from a log: value, standard error, two-sided `level` interval, diagnostics.

    `clusters` is the number of independent units the variance used (the rows
    when no cluster ids were given).  `clipping` is set only by `clipped_ips`.
    """

    estimator: Estimator
    value: float
    std_error: float
    lower: float
    upper: float
    level: float
    rows: int
    clusters: int
    weights: WeightDiagnostics
    clipping: Clipping | None = None

    @property
    def reliable(self) -> bool:
        """Whether the weights allow this estimate to count as evidence (see `ReliabilityRule`)."""
        return self.weights.reliable

    @property
    def reason(self) -> str:
        """Why the estimate is, or is not, reliable."""
        return self.weights.reason


def _prepare(
    rewards: npt.ArrayLike,
    target_probs: npt.ArrayLike,
    logging_propensities: npt.ArrayLike,
    cluster_ids: npt.ArrayLike | None,
) -> tuple[FloatArray, FloatArray, IntArray | None]:
    r = _vector("rewards", rewards, None)
    target = _target("target_probs", target_probs, r.size)
    propensity = _propensities(logging_propensities, r.size)
    return r, target / propensity, _groups(cluster_ids, r.size)


def _result(
    estimator: Estimator,
    value: float,
    influence: FloatArray,
    groups: IntArray | None,
    level: float,
    diagnostics: WeightDiagnostics,
    clipping: Clipping | None = None,
) -> OffPolicyEstimate:
    z = two_sided_z(level)
    variance, units = _mean_variance(influence, groups)
    se = math.sqrt(max(variance, 0.0))
    return OffPolicyEstimate(
        estimator, value, se, value - z * se, value + z * se, float(level), influence.size, units, diagnostics, clipping
    )


def ips(
    rewards: npt.ArrayLike,
    target_probs: npt.ArrayLike,
    logging_propensities: npt.ArrayLike,
    *,
    cluster_ids: npt.ArrayLike | None = None,
    level: float = 0.95,
    rule: ReliabilityRule = DEFAULT_RULE,
) -> OffPolicyEstimate:
    """Horvitz–Thompson IPS: (1/n) Σ w_i r_i with w_i = target_i / propensity_i; CLT interval on the mean of w·r.

    Unbiased when the logging policy gives every action the target may take a
    positive probability; see `WeightDiagnostics` for when the weights are too
    heavy for the interval to be trusted.
    """
    r, w, groups = _prepare(rewards, target_probs, logging_propensities, cluster_ids)
    influence = w * r
    return _result("ips", float(influence.mean()), influence, groups, level, _diagnose(w, groups, rule))


def snips(
    rewards: npt.ArrayLike,
    target_probs: npt.ArrayLike,
    logging_propensities: npt.ArrayLike,
    *,
    cluster_ids: npt.ArrayLike | None = None,
    level: float = 0.95,
    rule: ReliabilityRule = DEFAULT_RULE,
) -> OffPolicyEstimate:
    """Self-normalised IPS (Swaminathan & Joachims 2015): Σ w r / Σ w, delta-method variance of the ratio.

    Invariant to multiplying all weights by a constant; bounded by the observed
    reward range.  Raises `StatsError` when Σw = 0 (no overlap: the estimate is 0/0).
    """
    r, w, groups = _prepare(rewards, target_probs, logging_propensities, cluster_ids)
    total = float(w.sum())
    if total <= 0.0:
        msg = "target_probs: zero on every logged action, so SNIPS is 0/0 (no overlap between the policies)"
        raise StatsError(msg, "the log holds no evidence about this target policy; collect exploration that covers it")
    value = float(w @ r) / total
    influence = w * (r - value) / (total / r.size)
    return _result("snips", value, influence, groups, level, _diagnose(w, groups, rule))


def clipped_ips(
    rewards: npt.ArrayLike,
    target_probs: npt.ArrayLike,
    logging_propensities: npt.ArrayLike,
    cap: float,
    *,
    reward_range: tuple[float, float] = (0.0, 1.0),
    cluster_ids: npt.ArrayLike | None = None,
    level: float = 0.95,
    rule: ReliabilityRule = DEFAULT_RULE,
) -> OffPolicyEstimate:
    """IPS with weights capped at `cap`: (1/n) Σ min(w_i, cap) r_i, reporting the cap, clipped mass and bias bound.

    Rewards must lie in `reward_range` = (r_lo, r_hi) (clicks: (0, 1)); the
    bias truth − E[estimate] = E[(w − cap)₊ r] then lies in [r_lo·D, r_hi·D],
    D = E[(w − cap)₊], estimated by its sample mean (`Clipping`).  The
    diagnostics in `weights` describe the raw, unclipped weights: capping does
    not create overlap, so reliability is judged on them.
    """
    if not (isinstance(cap, float | int) and math.isfinite(cap) and cap > 0.0):
        msg = f"cap: weight cap must be a finite positive number, got {cap!r}"
        raise StatsError(msg, "cap weights at e.g. 10-100 times the typical weight")
    low, high = (float(reward_range[0]), float(reward_range[1]))
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        msg = f"reward_range: must be finite (low, high) with low <= high, got {reward_range!r}"
        raise StatsError(msg, "clicks and conversions lie in (0, 1)")
    r, w, groups = _prepare(rewards, target_probs, logging_propensities, cluster_ids)
    if ((r < low) | (r > high)).any():
        msg = f"rewards: must lie in reward_range [{low:g}, {high:g}], got range [{r.min():g}, {r.max():g}]"
        raise StatsError(msg, "the clipping bias bound holds only for rewards inside the declared range")
    capped = np.minimum(w, float(cap))
    excess = w - capped
    total = float(w.sum())
    d_hat = float(excess.mean())
    influence = capped * r
    value = float(influence.mean())
    result = _result("clipped_ips", value, influence, groups, level, _diagnose(w, groups, rule))
    clipping = Clipping(
        cap=float(cap),
        clipped_rows=int((excess > 0.0).sum()),
        clipped_mass_share=float(excess.sum()) / total if total > 0.0 else 0.0,
        excess_mean=d_hat,
        bias_bound=max(abs(low), abs(high)) * d_hat,
        observed_shift=float((w * r).mean()) - value,
        clipped_ess=_ess(capped),
        widened_lower=result.lower + low * d_hat,
        widened_upper=result.upper + high * d_hat,
    )
    return replace(result, clipping=clipping)


def on_policy(
    rewards: npt.ArrayLike,
    *,
    cluster_ids: npt.ArrayLike | None = None,
    level: float = 0.95,
    rule: ReliabilityRule = DEFAULT_RULE,
) -> OffPolicyEstimate:
    """The mean reward of a policy from its own log (all weights 1), with the CLT interval.

    For 0/1 rewards the i.i.d. standard error is sqrt(m(1 − m)/(n − 1)), the
    binomial one up to the factor sqrt(n/(n − 1)).
    """
    r = _vector("rewards", rewards, None)
    ones = np.ones_like(r)
    return replace(ips(r, ones, ones, cluster_ids=cluster_ids, level=level, rule=rule), estimator="on_policy")
