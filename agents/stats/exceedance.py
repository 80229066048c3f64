"""Always-valid test that a quantile is over its bound, from counts of units above it (pure).

Why: a latency SLO is a quantile bound ("p99 ≤ 50 ms"), and it holds exactly
when the share of requests at or above 50 ms is at most 1%.  Comparing the
p99 read off ~1,000 requests with the SLO at every look is a test at no
stated level: about 10 requests decide the read, the histogram's bins are
12% wide, and the look repeats every step.  On the tuning bench's apparel_core
seeds 0-9 it rolled back 12 arms, 5 of them with a true p99 under the SLO
(48.8-49.5 ms; BENCHMARKS.md), and a rolled-back move is never proposed again.

Method: with p the share of units at or above the threshold and p0 = 1 − q
(0.01 for p99), H0: p ≤ p0 ("the quantile is within the bound").  For any
ratio r > 1 with r·p0 < 1,

    L_r(n, k) = r^k · ((1 − r·p0) / (1 − p0))^(n − k)

(k of n units above) is the likelihood ratio of p = r·p0 against p = p0, a
nonnegative martingale at p = p0 and a supermartingale for every p < p0
(one unit's factor has mean p·r + (1 − p)(1 − r·p0)/(1 − p0), which rises
with p and is 1 at p0).  The average over a fixed set of ratios
(`EXCEEDANCE_RATIOS`: 1.5×, 2×, 3×, 5× the allowed share) is too, so by
Ville's inequality P(sup_n Λ_n ≥ 1/α) ≤ α under H0 however often it is
read: a breach is declared when Λ ≥ 1/α.  Small ratios catch a quantile just
over its bound (slowly), large ones catch a bad config within a few hundred
units.  Units are taken as independent (requests: latency depends on the
config and the load, not on the user).

Callers: the Online agent's latency guardrail (`agents.online_guard`), the
tests.  Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from agents.stats.errors import StatsError

#: Alternatives the e-process mixes (shares above the threshold, as multiples of the allowed share).
EXCEEDANCE_RATIOS: Final = (1.5, 2.0, 3.0, 5.0)


@dataclass(frozen=True, slots=True)
class Exceedance:
    """The test of one quantile bound on `n` units, `k` of them at or above the threshold.

    `log_e` is log Λ (the averaged likelihood ratio); `breached` is Λ ≥ 1/alpha.
    """

    n: int
    k: int
    allowed: float
    alpha: float
    log_e: float

    @property
    def share(self) -> float:
        """The observed share of units at or above the threshold (NaN with no units)."""
        return self.k / self.n if self.n else math.nan

    @property
    def breached(self) -> bool:
        """True once the evidence that the share exceeds `allowed` reaches 1/alpha."""
        return self.log_e >= math.log(1.0 / self.alpha)

    def describe(self) -> str:
        """One line for a decision: the counts, the allowed share and the evidence."""
        return (
            f"{self.k} of {self.n} requests at or over the threshold ({100 * self.share:.2f}%, allowed "
            f"{100 * self.allowed:.3g}%), e-value {math.exp(min(self.log_e, 700.0)):.3g} "
            f"(breach at {1.0 / self.alpha:.3g})"
        )


def exceedance_test(n: int, k: int, *, allowed: float, alpha: float) -> Exceedance:
    """Test H0 "at most `allowed` of the units are at or above the threshold" on `k` of `n` (module docstring).

    Called on every look with the cumulative counts of one window; valid
    under continuous monitoring of that window.
    """
    if not 0.0 < allowed < 1.0:
        msg = f"allowed: must be in (0, 1) (1 − the quantile, e.g. 0.01 for p99), got {allowed!r}"
        raise StatsError(msg)
    if not 0.0 < alpha < 1.0:
        msg = f"alpha: must be in (0, 1), got {alpha!r}"
        raise StatsError(msg)
    if not (0 <= k <= n):
        msg = f"k, n: need 0 <= k <= n, got k={k!r}, n={n!r}"
        raise StatsError(msg)
    terms = [
        k * math.log(r) + (n - k) * (math.log1p(-r * allowed) - math.log1p(-allowed))
        for r in EXCEEDANCE_RATIOS
        if r * allowed < 1.0
    ]
    if not terms:
        return Exceedance(n=n, k=k, allowed=allowed, alpha=alpha, log_e=0.0)
    top = max(terms)
    log_e = top + math.log(sum(math.exp(t - top) for t in terms) / len(terms))
    return Exceedance(n=n, k=k, allowed=allowed, alpha=alpha, log_e=log_e)


__all__ = ["EXCEEDANCE_RATIOS", "Exceedance", "exceedance_test"]
