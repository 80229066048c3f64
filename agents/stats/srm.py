"""Sample-ratio mismatch (SRM): does each arm receive the traffic share it was allocated?

An SRM means assignment or logging is broken (a crashing arm, a bot filter
that treats arms differently, a cache); no metric read of such an experiment
can be trusted, so the Online agent halts at p < 0.001 and alerts
(Fabijan et al., "Diagnosing Sample Ratio Mismatch in Online Controlled
Experiments", KDD 2019).  Two tests:

- `srm_counts`: Pearson's chi-square goodness of fit of per-arm counts against
  the allocation shares, df = arms − 1.  Exact for counts of independent
  randomisation units (distinct users).  Applied to *requests* it assumes
  requests are independent; they are not (each user makes several, and heavy
  users move many requests at once), so on large traffic it raises false
  alarms — use it for user counts, or for requests only as a screen.
- `srm_buckets` (preferred for requests, what the Online agent calls): the
  arm shares of requests s_a = Σ_b N_ab / Σ_b T_b over user buckets, with a
  cluster-robust covariance from the delta method over buckets (linearised
  l_ab = (N_ab − s_a T_b)/T̄), and the Wald statistic
  W = (s − π)ᵀ Σ̂⁻¹ (s − π) on the first arms − 1 shares.  Because Σ̂ is
  estimated from n buckets, W is referred to Hotelling's T² distribution:
  (n − p)/(p (n − 1))·W ~ F(p, n − p), p = arms − 1 (the small-sample
  correction matters at a 1e-3 threshold with n = 64).  This is the
  randomisation unit done right: users, grouped in buckets, not requests.

An arm with a positive allocated share and no traffic at all has zero
variance; the test then reports p = 0 (a certain mismatch).

Callers: the Online agent on every interim read, before any metric is
looked at; the tests.  Pure numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from agents.stats.distributions import chi2_sf, f_sf
from agents.stats.errors import StatsError

HALT_P: Final = 1e-3


@dataclass(frozen=True, slots=True)
class SrmResult:
    """An SRM check: observed and expected shares, the statistic, its p-value and whether to halt."""

    method: str
    observed_shares: tuple[float, ...]
    expected_shares: tuple[float, ...]
    statistic: float
    df: float
    p_value: float
    threshold: float

    @property
    def halt(self) -> bool:
        """True when the mismatch is significant at `threshold` (default 0.001): stop and alert."""
        return self.p_value < self.threshold

    @property
    def reason(self) -> str:
        """One line for the decision log."""
        obs = "/".join(f"{100 * s:.2f}" for s in self.observed_shares)
        exp = "/".join(f"{100 * s:.2f}" for s in self.expected_shares)
        verdict = "halt" if self.halt else "ok"
        return f"SRM {verdict}: observed {obs}% vs allocated {exp}% ({self.method}, p={self.p_value:.3g})"


def _shares(shares: Sequence[float], arms: int) -> npt.NDArray[np.float64]:
    pi = np.asarray(shares, dtype=np.float64)
    if pi.shape != (arms,) or not np.isfinite(pi).all() or (pi < 0.0).any() or pi.sum() <= 0.0:
        msg = f"shares: need {arms} finite non-negative allocation shares with a positive sum, got {list(shares)}"
        raise StatsError(msg)
    out: npt.NDArray[np.float64] = pi / pi.sum()
    return out


def _check_threshold(threshold: float) -> None:
    if not 0.0 < threshold < 1.0:
        msg = f"threshold: must be in (0, 1), got {threshold!r}"
        raise StatsError(msg)


def srm_counts(counts: Sequence[float], shares: Sequence[float], *, threshold: float = HALT_P) -> SrmResult:
    """Pearson chi-square of per-arm unit counts against allocation shares (df = arms − 1)."""
    _check_threshold(threshold)
    observed = np.asarray(counts, dtype=np.float64)
    if observed.ndim != 1 or observed.size < 2 or not np.isfinite(observed).all() or (observed < 0).any():
        msg = f"counts: need one finite non-negative count per arm (at least 2 arms), got {list(counts)}"
        raise StatsError(msg)
    total = observed.sum()
    if total <= 0.0:
        msg = "counts: total must be positive"
        raise StatsError(msg, "check SRM once the experiment has traffic")
    pi = _shares(shares, observed.size)
    expected = total * pi
    if ((expected == 0.0) & (observed > 0.0)).any():
        statistic = math.inf
    else:
        live = expected > 0.0
        statistic = float((((observed - expected) ** 2)[live] / expected[live]).sum())
    df = float(np.count_nonzero(pi > 0.0) - 1)
    p = 0.0 if math.isinf(statistic) else (chi2_sf(statistic, df) if df > 0 else 1.0)
    shares_seen = tuple((observed / total).tolist())
    return SrmResult("pearson chi-square", shares_seen, tuple(pi.tolist()), statistic, df, p, threshold)


def srm_buckets(counts: npt.ArrayLike, shares: Sequence[float], *, threshold: float = HALT_P) -> SrmResult:
    """Cluster-robust SRM over user buckets: `counts` is (arms × buckets) requests; Wald/Hotelling-T² F test."""
    _check_threshold(threshold)
    table = np.asarray(counts, dtype=np.float64)
    if table.ndim != 2 or table.shape[0] < 2 or not np.isfinite(table).all() or (table < 0).any():
        msg = f"counts: need a finite non-negative (arms × buckets) table with at least 2 arms, got shape {table.shape}"
        raise StatsError(msg)
    arms, n = table.shape
    p = arms - 1
    if n <= p + 1:
        msg = f"counts: need more buckets than arms for a covariance, got {n} buckets for {arms} arms"
        raise StatsError(msg)
    bucket_totals = table.sum(axis=0)
    total = bucket_totals.sum()
    if total <= 0.0:
        msg = "counts: total must be positive"
        raise StatsError(msg, "check SRM once the experiment has traffic")
    pi_all = _shares(shares, arms)
    observed_all = table.sum(axis=1) / total
    # Arms with no share and no traffic (stopped arms keep their place) carry no information, and with them in
    # the first p rows the live rows sum to a constant: a singular covariance.  Test the live arms only.
    live = (pi_all > 0.0) | (observed_all > 0.0)
    if int(live.sum()) < 2:
        return SrmResult(
            "bucket Wald (Hotelling T², F)",
            tuple(observed_all.tolist()),
            tuple(pi_all.tolist()),
            0.0,
            0.0,
            1.0,
            threshold,
        )
    table, pi, observed = table[live], pi_all[live], observed_all[live]
    p = table.shape[0] - 1
    lin = (table - observed[:, None] * bucket_totals[None, :]) / bucket_totals.mean()
    cov = (lin[:p] @ lin[:p].T) / ((n - 1) * n)
    delta = (observed - pi)[:p]
    diag = np.diag(cov)
    dead = diag <= 1e-300
    if (dead & (np.abs(delta) > 0.0)).any():
        statistic, p_value = math.inf, 0.0
    else:
        keep = ~dead
        p_eff = int(keep.sum())
        if p_eff == 0:
            statistic, p_value = 0.0, 1.0
        else:
            sub = cov[np.ix_(keep, keep)]
            w = float(delta[keep] @ np.linalg.solve(sub, delta[keep]))
            statistic = (n - p_eff) / (p_eff * (n - 1)) * w
            p_value = f_sf(statistic, p_eff, n - p_eff)
    return SrmResult(
        "bucket Wald (Hotelling T², F)",
        tuple(observed_all.tolist()),
        tuple(pi_all.tolist()),
        statistic,
        float(p),
        p_value,
        threshold,
    )
