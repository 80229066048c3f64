"""Holm's step-down correction across the treatment arms of one experiment.

Method: Holm, "A Simple Sequentially Rejective Multiple Test Procedure",
Scand. J. Statist. 6 (1979).  With m p-values sorted ascending
p_(1) <= … <= p_(m), the adjusted values are

    p̃_(i) = max_{j <= i} min(1, (m − j + 1)·p_(j)),

and H_(i) is rejected when p̃_(i) <= α.  This controls the family-wise error
rate at α under any dependence between the tests (the arms share a control).
Always-valid p-values stay valid at any stopping time, so applying Holm to
the current always-valid p-values at every look keeps the family-wise
guarantee over continuous monitoring.

Callers: the Online agent at each interim read (p-values of each treatment
vs control from `SequentialState.p_value`), the tests.  Pure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from agents.stats.errors import StatsError


@dataclass(frozen=True, slots=True)
class HolmResult:
    """Holm-adjusted p-values and reject flags, in the caller's order."""

    p_values: tuple[float, ...]
    adjusted: tuple[float, ...]
    reject: tuple[bool, ...]
    alpha: float


def holm(p_values: Sequence[float], alpha: float = 0.05) -> HolmResult:
    """Adjust `p_values` (one per treatment arm) by Holm's step-down method at family-wise level `alpha`."""
    if not 0.0 < alpha < 1.0:
        msg = f"alpha: must be in (0, 1), got {alpha!r}"
        raise StatsError(msg)
    ps = [float(p) for p in p_values]
    if not ps:
        msg = "p_values: need at least one p-value"
        raise StatsError(msg)
    if any(not (0.0 <= p <= 1.0) or math.isnan(p) for p in ps):
        msg = f"p_values: each must be in [0, 1], got {ps}"
        raise StatsError(msg)
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        adjusted[i] = running
    return HolmResult(tuple(ps), tuple(adjusted), tuple(a <= alpha for a in adjusted), alpha)
