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
estimators on the Open Bandit Dataset).  Pure numpy; no I/O (the logs are read
by the callers).  Errors are `agents.stats.StatsError`, naming the argument and
the rule.

Layout: this module holds no code of its own; it re-exports (`__all__`) the
public names of the modules the estimators live in, so callers import from
`agents.ope`:

- `agents.ope_rows` — per-row input checks, cluster ids, the (clustered)
  variance of a mean, the normal quantile of a confidence level;
- `agents.ope_weights` — `ReliabilityRule`, `DEFAULT_RULE`,
  `WeightDiagnostics`, `effective_sample_size`, `weight_diagnostics`;
- `agents.ope_estimators` — `ips`, `snips`, `clipped_ips`, `on_policy` and
  their results `OffPolicyEstimate`, `Clipping`;
- `agents.ope_harm` — the Critic-facing `difference` (`OffPolicyDifference`)
  and `agreement` (`Agreement`).
"""

from __future__ import annotations

from agents.ope_estimators import Clipping, Estimator, OffPolicyEstimate, clipped_ips, ips, on_policy, snips
from agents.ope_harm import Agreement, OffPolicyDifference, agreement, difference
from agents.ope_rows import MIN_ROWS, FloatArray, IntArray
from agents.ope_weights import (
    DEFAULT_RULE,
    ReliabilityRule,
    WeightDiagnostics,
    effective_sample_size,
    weight_diagnostics,
)

__all__ = [
    "DEFAULT_RULE",
    "MIN_ROWS",
    "Agreement",
    "Clipping",
    "Estimator",
    "FloatArray",
    "IntArray",
    "OffPolicyDifference",
    "OffPolicyEstimate",
    "ReliabilityRule",
    "WeightDiagnostics",
    "agreement",
    "clipped_ips",
    "difference",
    "effective_sample_size",
    "ips",
    "on_policy",
    "snips",
    "weight_diagnostics",
]
