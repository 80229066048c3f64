"""Always-valid sequential inference: the mixture SPRT and its confidence sequence.

Method: the normal-mixture sequential probability ratio test (mSPRT) of
Johari, Koomen, Pekelis & Walsh, "Peeking at A/B Tests" (KDD 2017) and
"Always Valid Inference" (Operations Research 2022), §3-4.  At each look the
caller supplies an estimate d̂ of a difference (absolute, or a log ratio) and
its variance V (delta method over buckets, optionally CUPED-adjusted).  With a
N(0, τ²) mixing distribution over the true difference θ, the mixture
likelihood ratio against H0: θ = θ0 is

    Λ = sqrt(V / (V + τ²)) · exp( τ² (d̂ − θ0)² / (2 V (V + τ²)) )

(Johari et al.'s two-sample form with V = 2σ²/n).  Under H0, and when the
estimates form a Gaussian process with independent increments in information
time 1/V (true in the limit for cumulative means and delta-method ratios of
i.i.d. bucket/user clusters, even when users return), Λ is a nonnegative
martingale, so by Ville's inequality P(sup_n Λ_n ≥ 1/α) ≤ α.  Hence:

- always-valid p-value: p_n = min(p_{n−1}, 1/Λ_n), p_0 = 1; P(ever p ≤ α) ≤ α
  under H0 however often the experiment is read;
- confidence sequence: CI_n = d̂_n ± sqrt( V(V+τ²)/τ² · (2 log(1/α) + log((V+τ²)/V)) ),
  and the running intersection ∩_{k≤n} CI_k covers θ at all looks
  simultaneously with probability ≥ 1 − α.  p_n ≤ α exactly when the
  intersection excludes θ0 (duality), so stopping on either is the same rule.

Caveats: V is estimated (from ~64 buckets per arm) rather than known, and the
normal limit is used for the estimates, so validity is asymptotic; `proofs`
measures it on heterogeneous synthetic traffic.  The test is two-sided.

Choice of τ² (`mixing_variance`): τ² = k*·V_N, where V_N is the variance the
estimate will have at the planned horizon and k* solves k = 2 log(1/α) +
log(1 + k).  This k* minimises the |z| needed at the horizon, which is then
exactly z* = sqrt(k* + 1) (3.03 for α = 0.05, vs 1.96 fixed-horizon); see
`power`.  Equivalently τ ≈ 0.74 × the absolute MDE at α = 0.05, power 0.8:
the mixture is centred on effects the traffic can actually resolve.  τ² must
be fixed at launch (from the power plan) and not changed with the data.

Callers: the Online agent (one `SequentialState` per treatment arm and
metric, updated each interim read and persisted with the experiment),
`power` (boundary), `proofs` (vectorised paths), the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Final

import numpy as np
import numpy.typing as npt

from agents.stats.errors import StatsError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_FIXED_POINT_ITERATIONS: Final = 200


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        msg = f"alpha: must be in (0, 1), got {alpha!r}"
        raise StatsError(msg)


def optimal_mixing_ratio(alpha: float) -> float:
    """k* = τ²/V_N minimising the horizon boundary: the root of k = 2·log(1/α) + log(1 + k)."""
    _check_alpha(alpha)
    c = 2.0 * math.log(1.0 / alpha)
    k = c + 1.0
    for _ in range(_FIXED_POINT_ITERATIONS):  # contraction: derivative 1/(1+k) < 1
        nxt = c + math.log1p(k)
        if abs(nxt - k) < 1e-13 * nxt:
            return nxt
        k = nxt
    return k


def terminal_boundary(alpha: float) -> float:
    """|z| the mSPRT needs at the planned horizon when τ² = k*·V_N: z* = sqrt(k* + 1)."""
    return math.sqrt(optimal_mixing_ratio(alpha) + 1.0)


def mixing_variance(terminal_variance: float, alpha: float) -> float:
    """τ² = k*·V_N for an estimate whose variance at the planned horizon is `terminal_variance`."""
    if not (terminal_variance > 0.0 and math.isfinite(terminal_variance)):
        msg = f"terminal_variance: must be positive and finite, got {terminal_variance!r}"
        raise StatsError(msg)
    return optimal_mixing_ratio(alpha) * terminal_variance


def log_likelihood_ratio(
    estimate: npt.ArrayLike, variance: npt.ArrayLike, tau2: float, null: float = 0.0
) -> FloatArray:
    """log Λ of the normal-mixture SPRT, elementwise; looks with variance <= 0 carry no information (log Λ = −inf)."""
    if not (tau2 > 0.0 and math.isfinite(tau2)):
        msg = f"tau2: mixing variance must be positive and finite, got {tau2!r}"
        raise StatsError(msg)
    d = np.asarray(estimate, dtype=np.float64) - null
    v = np.asarray(variance, dtype=np.float64)
    ok = v > 0.0
    vs = np.where(ok, v, 1.0)
    out = 0.5 * np.log(vs / (vs + tau2)) + tau2 * d * d / (2.0 * vs * (vs + tau2))
    return np.where(ok, out, -np.inf)


def always_valid_p_path(estimates: npt.ArrayLike, variances: npt.ArrayLike, tau2: float) -> FloatArray:
    """Running always-valid p-values min_k min(1, 1/Λ_k) along the LAST axis (looks), vectorised over the rest."""
    log_lr = log_likelihood_ratio(estimates, variances, tau2)
    p = np.exp(-np.maximum(log_lr, 0.0))
    out: FloatArray = np.minimum.accumulate(p, axis=-1)
    return out


def first_crossing(p_path: npt.ArrayLike, alpha: float) -> IntArray:
    """Index of the first look with p <= alpha along the last axis, or −1 where it never happens."""
    _check_alpha(alpha)
    hit = np.asarray(p_path) <= alpha
    idx = np.argmax(hit, axis=-1).astype(np.int64)
    out: IntArray = np.where(hit.any(axis=-1), idx, -1)
    return out


def confidence_radius(variance: npt.ArrayLike, tau2: float, alpha: float) -> FloatArray:
    """Half-width of the mSPRT confidence interval at one look: sqrt(V(V+τ²)/τ²·(2 log(1/α) + log((V+τ²)/V)))."""
    _check_alpha(alpha)
    if not (tau2 > 0.0 and math.isfinite(tau2)):
        msg = f"tau2: mixing variance must be positive and finite, got {tau2!r}"
        raise StatsError(msg)
    v = np.asarray(variance, dtype=np.float64)
    vs = np.where(v > 0.0, v, np.nan)
    out: FloatArray = np.sqrt(vs * (vs + tau2) / tau2 * (2.0 * math.log(1.0 / alpha) + np.log1p(tau2 / vs)))
    return np.where(v > 0.0, out, np.inf)


@dataclass(frozen=True, slots=True)
class SequentialState:
    """The running state of one always-valid test (one treatment arm, one metric), carried across looks.

    Immutable: `update` returns a new state, so the Online agent can persist
    each read and resume after a restart.  `p_value` is the running minimum
    of 1/Λ; `lower`/`upper` the running intersection of confidence intervals
    (an empty intersection, lower > upper, signals a broken model, e.g. a
    drifting metric); `verdict` is +1/−1 from the sign of the estimate at the
    first look where p <= alpha (treatment better/worse), 0 before.
    """

    tau2: float
    alpha: float
    looks: int = 0
    p_value: float = 1.0
    lower: float = -math.inf
    upper: float = math.inf
    estimate: float = math.nan
    variance: float = math.nan
    verdict: int = 0
    verdict_look: int = 0

    @classmethod
    def start(cls, tau2: float, alpha: float = 0.05) -> SequentialState:
        """A fresh test with mixing variance `tau2` (from `power.PowerPlan.tau2`) at level `alpha`."""
        _check_alpha(alpha)
        if not (tau2 > 0.0 and math.isfinite(tau2)):
            msg = f"tau2: mixing variance must be positive and finite, got {tau2!r}"
            raise StatsError(msg, "take tau2 from the power plan (mixing_variance)")
        return cls(tau2=tau2, alpha=alpha)

    @property
    def rejected(self) -> bool:
        """True once the always-valid p-value has reached alpha (the null θ = 0 is rejected for good)."""
        return self.p_value <= self.alpha

    def update(self, estimate: float, variance: float) -> SequentialState:
        """Fold in one look: the current cumulative estimate of the difference and its variance."""
        if not math.isfinite(estimate):
            msg = f"estimate: must be finite, got {estimate!r}"
            raise StatsError(msg)
        if not (variance > 0.0 and math.isfinite(variance)):
            msg = f"variance: must be positive and finite, got {variance!r}"
            raise StatsError(msg, "read only once both arms have events in several buckets")
        log_lr = float(log_likelihood_ratio(estimate, variance, self.tau2))
        p = min(self.p_value, math.exp(-max(log_lr, 0.0)))
        radius = float(confidence_radius(variance, self.tau2, self.alpha))
        verdict, verdict_look = self.verdict, self.verdict_look
        if verdict == 0 and p <= self.alpha:
            verdict, verdict_look = (1 if estimate > 0.0 else -1), self.looks + 1
        return replace(
            self,
            looks=self.looks + 1,
            p_value=p,
            lower=max(self.lower, estimate - radius),
            upper=min(self.upper, estimate + radius),
            estimate=estimate,
            variance=variance,
            verdict=verdict,
            verdict_look=verdict_look,
        )
