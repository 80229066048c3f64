"""Off-policy value estimates from logged propensities: the Critic's harm check before any traffic sees a proposal.

Where exploration logs exist (rows logged by a stochastic policy μ that records
the probability μ(a_i | x_i) of the action it took), the value of another policy
π on the same traffic can be estimated without serving it.  Each row i brings a
reward r_i, the logging propensity p_i = μ(a_i | x_i) > 0 and the target
probability t_i = π(a_i | x_i) of the same logged action; its importance weight
is w_i = t_i / p_i.

Estimators (all return an interval and weight diagnostics):

- `ips` — inverse propensity scoring, the Horvitz–Thompson estimator
  (Horvitz & Thompson, JASA 1952): V̂ = (1/n) Σ w_i r_i.  Unbiased whenever
  μ > 0 wherever π > 0; its variance is Var(w r)/n, so heavy weights make it
  noisy.
- `snips` — self-normalised IPS (Swaminathan & Joachims, "The Self-Normalized
  Estimator for Counterfactual Learning", NeurIPS 2015): V̂ = Σ w_i r_i / Σ w_i,
  a ratio estimator.  Biased by O(1/n) but invariant to a common scale of the
  weights, bounded by the reward range, and usually less variable.  Variance by
  the delta method: the linearised values l_i = w_i (r_i − V̂) / w̄ give
  Var(V̂) ≈ Var(l)/n.
- `clipped_ips` — IPS with the weights capped at M (Ionides, "Truncated
  Importance Sampling", JCGS 2008; Bottou et al., JMLR 2013): V̂_M = (1/n) Σ
  min(w_i, M) r_i.  It trades variance for a bias that is reported, not hidden:
  the truth minus E[V̂_M] equals E[(w − M)₊ r], which lies in
  [r_lo·D, r_hi·D] for rewards in [r_lo, r_hi] with D = E[(w − M)₊] ≥ 0.
  `Clipping` carries the cap, the share of weight mass removed, the estimated
  worst-case bound max(|r_lo|, |r_hi|)·D̂, the interval widened by it, and the
  observed shift mean((w − M)₊ r), which estimates the bias itself.  The
  worst-case bound is often uninformative for rare rewards (it assumes a
  reward on every clipped row): on OBD at M = 10 it is 0.16 for a click rate
  of 0.003, while the observed shift is 0.
- `on_policy` — the plain mean of rewards logged by the policy itself (weights 1),
  the reference an off-policy estimate is checked against.
- `difference` — candidate minus incumbent on the same log, with the paired
  variance (the two estimates share rows, so their errors are correlated):
  the Critic's estimate of harm.

Variance.  The intervals are fixed-sample normal (CLT) intervals value ± z·se.
Rows are independent unless `cluster_ids` is given; one user contributes
several rows, so pass user ids (or user buckets) to get the cluster-robust
variance (G/(G−1))·Σ_g (Σ_{i∈g} (l_i − l̄))² / n² of the mean of the per-row
influence values l_i (Liang & Zeger 1986; with one row per cluster it equals
the i.i.d. s²/n exactly).  The CLT interval of IPS is honest about the
variance but not about skew: when a few heavy-weight rows carry the reward the
estimator is right-skewed and the nominal 95% interval misses mostly on its
upper side (simulated: weights up to 6.25 and ESS ≈ 600 give 94.2% coverage;
weights up to 25 with ESS ≈ 220 about 90%, although the ESS rule below still
passes them — pinned in the tests).

Heavy weights.  Every result carries `WeightDiagnostics`: the maximum weight,
the mean weight (whose expectation is exactly 1 when μ covers π's support, so a
mean far from 1 signals missing support or wrong propensities), and Kish's
effective sample size ESS = (Σw)² / Σw² (Kong 1992; Owen, "Monte Carlo theory,
methods and examples", §9.3).  A result is flagged `reliable = False` with a
`reason` when ESS < `ReliabilityRule.min_ess` (100), ESS < `min_ess_share`·n
(1%), or |mean weight − 1| > `max_mean_weight_z` standard errors (4): the
Critic must then not treat the estimate as evidence of safety.

Measured on the Open Bandit Dataset sample (`tests/agents/test_ope_obd.py`):
the uniform-random policy's click rate estimated from the Thompson-sampling
log is 0.00319 by SNIPS (95% CI [0.00157, 0.00481]; IPS 0.00301
[0.00149, 0.00453]) against 0.00460 [0.00327, 0.00593] on-policy in the
random log — agreement within the combined 95% uncertainty (z = −1.32 and
−1.55), with weights up to 178, mean weight 0.943 and ESS 656 of 10,000 rows.

Callers: the Critic (harm of a proposal against the incumbent from exploration
logs: `difference`, `snips`, `clipped_ips` as a sensitivity check) and the tests
(`tests/agents/test_ope.py`; `tests/agents/test_ope_obd.py` checks the
estimators on the Open Bandit Dataset).  Pure numpy; no I/O.  Errors are
`agents.stats.StatsError`, naming the argument and the rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from agents.stats.distributions import normal_ppf
from agents.stats.errors import StatsError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
Estimator = Literal["ips", "snips", "clipped_ips", "on_policy"]

MIN_ROWS: Final = 2
_HINT_ROWS: Final = (
    "pass one value per logged row: reward, target probability and logging propensity of the logged action"
)
_HINT_PROPENSITY: Final = "log the probability with which the logging policy chose the logged action (0 < p <= 1)"


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


def _z(level: float) -> float:
    if not (isinstance(level, float | int) and 0.0 < level < 1.0):
        msg = f"level: confidence level must be in (0, 1), got {level!r}"
        raise StatsError(msg, "use e.g. 0.95")
    return normal_ppf(0.5 + 0.5 * float(level))


def _vector(name: str, values: npt.ArrayLike, rows: int | None) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        msg = f"{name}: must be 1-D (one value per logged row), got shape {array.shape}"
        raise StatsError(msg, _HINT_ROWS)
    if rows is None and array.size < MIN_ROWS:
        msg = f"{name}: needs at least {MIN_ROWS} logged rows for a variance, got {array.size}"
        raise StatsError(msg, _HINT_ROWS)
    if rows is not None and array.size != rows:
        msg = f"{name}: must have one value per logged row ({rows}), got {array.size}"
        raise StatsError(msg, _HINT_ROWS)
    if not np.isfinite(array).all():
        msg = f"{name}: must be finite (no NaN or inf)"
        raise StatsError(msg, _HINT_ROWS)
    return array


def _target(name: str, values: npt.ArrayLike, rows: int) -> FloatArray:
    target = _vector(name, values, rows)
    if ((target < 0.0) | (target > 1.0)).any():
        msg = f"{name}: target probabilities must lie in [0, 1], got range [{target.min():g}, {target.max():g}]"
        raise StatsError(msg, "pass the target policy's probability of each row's logged action")
    return target


def _propensities(values: npt.ArrayLike, rows: int) -> FloatArray:
    propensity = _vector("logging_propensities", values, rows)
    if ((propensity <= 0.0) | (propensity > 1.0)).any():
        msg = (
            "logging_propensities: must lie in (0, 1] (a logged action had a positive chance), "
            f"got range [{propensity.min():g}, {propensity.max():g}]"
        )
        raise StatsError(msg, _HINT_PROPENSITY)
    return propensity


def _groups(cluster_ids: npt.ArrayLike | None, rows: int) -> IntArray | None:
    if cluster_ids is None:
        return None
    ids = np.asarray(cluster_ids)
    if ids.ndim != 1 or ids.size != rows:
        msg = f"cluster_ids: must be 1-D with one id per logged row ({rows}), got shape {ids.shape}"
        raise StatsError(msg, "pass the user id (or user bucket) of every row")
    _, inverse = np.unique(ids, return_inverse=True)
    groups: IntArray = inverse.astype(np.intp).reshape(-1)
    if int(groups.max()) + 1 < MIN_ROWS:
        msg = f"cluster_ids: needs at least {MIN_ROWS} distinct clusters for a variance, got 1"
        raise StatsError(msg, "pass user ids; a single cluster has no between-cluster variance")
    return groups


def _mean_variance(values: FloatArray, groups: IntArray | None) -> tuple[float, int]:
    """Variance of the mean of `values` (i.i.d. rows, or cluster-robust over `groups`) and the number of units."""
    n = values.size
    centred = values - values.mean()
    if groups is None:
        return float(centred @ centred) / (n * (n - 1)), n
    sums = np.bincount(groups, weights=centred)
    g = sums.size
    return float(sums @ sums) * g / ((g - 1) * n * n), g


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
    z = _z(level)
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
    z = _z(level)
    return OffPolicyDifference(
        estimator, value, se, value - z * se, value + z * se, float(level), r.size, units, candidate, incumbent
    )


def agreement(first: OffPolicyEstimate, second: OffPolicyEstimate, level: float = 0.95) -> Agreement:
    """Whether two estimates from independent logs agree within their combined `level` uncertainty.

    |a − b| <= z·sqrt(se_a² + se_b²), z the two-sided normal quantile (1.96 at 95%).
    """
    z = _z(level)
    gap = first.value - second.value
    se = math.hypot(first.std_error, second.std_error)
    z_score = gap / se if se > 0.0 else (0.0 if gap == 0.0 else math.copysign(math.inf, gap))
    return Agreement(gap, se, z * se, z_score, float(level), abs(gap) <= z * se)
