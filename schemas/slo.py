"""A latency SLO as a test: always-valid evidence that a quantile is over its bound (pure, shared).

Why here: the serving sidecar's SLO breaker and the Online agent's latency
guardrail must judge "p99 ≤ 50 ms" by the same rule, and the two talk only
through topics and `schemas`.  A quantile SLO holds exactly when the share of
requests at or above its bound is at most 1 − q (1% for p99).  Comparing the
p99 read off a histogram with the bound is a test at no stated level: about
10 of 1,000 requests decide the read, the bins are 12% wide, and the look
repeats.  On the tuning bench's apparel_core seeds 0-9 that rule rolled back
12 arms, 5 of them with a true p99 under the SLO (48.8-49.5 ms;
BENCHMARKS.md); in the sidecar it cut back arms whose true p99 was 45 ms.

Method: with p the share of units at or above the threshold and p0 = 1 − q,
H0: p ≤ p0 ("the quantile is within the bound").  For any ratio r > 1 with
r·p0 < 1,

    L_r(n, k) = r^k · ((1 − r·p0) / (1 − p0))^(n − k)

(k of n units above) is the likelihood ratio of p = r·p0 against p = p0, a
nonnegative martingale at p = p0 and a supermartingale for every p < p0
(one unit's factor has mean p·r + (1 − p)(1 − r·p0)/(1 − p0), which rises
with p and is 1 at p0).  The average over a fixed set of ratios
(`EXCEEDANCE_RATIOS`: 1.5×, 2×, 3×, 5× the allowed share) is too, so by
Ville's inequality P(sup_n Λ_n ≥ 1/α) ≤ α under H0 however often the
cumulative counts are read: a breach is declared when Λ ≥ 1/α.  On one
fixed sample (a sliding window, as the breaker reads) Λ is an e-value, so
by Markov's inequality each read alone errs with probability ≤ α.  Small
ratios catch a quantile just over its bound (slowly), large ones catch a bad
config within a few hundred units.  Units are taken as independent
(requests: latency depends on the config and the load, not on the user).

Callers: `quantile_breach` — the sidecar's `serving_sidecar.breaker` (per
window) and the Online agent's latency guardrail (`agents.online_guard`,
cumulative); `exceedance_test` — through it, and the tests.  Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from schemas.errors import SchemaError, refuse
from schemas.metrics import latency_at_or_above

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
    def e_value(self) -> float:
        """Λ itself (capped where exp overflows): the evidence an alert or a decision reports."""
        return math.exp(min(self.log_e, 700.0))

    @property
    def breached(self) -> bool:
        """True once the evidence that the share exceeds `allowed` reaches 1/alpha."""
        return self.log_e >= math.log(1.0 / self.alpha)

    def describe(self) -> str:
        """One line for a decision: the counts, the allowed share and the evidence."""
        return (
            f"{self.k} of {self.n} requests at or over the threshold ({100 * self.share:.2f}%, allowed "
            f"{100 * self.allowed:.3g}%), e-value {self.e_value:.3g} "
            f"(breach at {1.0 / self.alpha:.3g})"
        )


def exceedance_test(n: int, k: int, *, allowed: float, alpha: float) -> Exceedance:
    """Test H0 "at most `allowed` of the units are at or above the threshold" on `k` of `n` (module docstring).

    Called on every look with the cumulative counts of one arm (valid under
    continuous monitoring of them) or with one window's counts (an e-value
    for that window alone).
    """
    if not 0.0 < allowed < 1.0:
        refuse(SchemaError, "allowed", f"must be in (0, 1) (1 − the quantile, e.g. 0.01 for p99), got {allowed!r}")
    if not 0.0 < alpha < 1.0:
        refuse(SchemaError, "alpha", f"must be in (0, 1), got {alpha!r}")
    if not (0 <= k <= n):
        refuse(SchemaError, "k, n", f"need 0 <= k <= n, got k={k!r}, n={n!r}")
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


def quantile_breach(
    histogram: npt.ArrayLike, bound_ms: float, *, quantile: float, alpha: float
) -> tuple[Exceedance, float]:
    """The SLO "`quantile` of latency ≤ `bound_ms`" tested on a latency histogram: (test, counting edge in ms).

    Requests are counted from the first histogram edge at or above the bound
    (`schemas.metrics.latency_at_or_above`; 50.12 ms for 50 ms), so requests
    in the bin that straddles it are not counted against the arm.  Called by
    the sidecar's breaker on each rule's window and by the Online agent's
    latency guardrail on an arm's cumulative histogram.
    """
    hist = np.asarray(histogram, dtype=np.int64)
    over, edge_ms = latency_at_or_above(hist, bound_ms)
    return exceedance_test(int(hist.sum()), over, allowed=1.0 - quantile, alpha=alpha), edge_ms


__all__ = ["EXCEEDANCE_RATIOS", "Exceedance", "exceedance_test", "quantile_breach"]
