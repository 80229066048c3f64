"""What the brain reads before a proposal round: each arm's diagnostics and ratio metrics, with their intervals.

What lives here: `brain_readings` (the `ProposalContext.metrics` of a round:
at most `_MAX_READINGS` `MetricReading`s, in priority order),
`GUARD_CONVERSION` (the conversion guardrail's ratio as the brain reads it)
and `_ratio_reading` (one arm's ratio with its 95% interval).

Who calls it: `agents.loop.AgentLoop._metrics` (for the idle phase,
`agents.loop_propose`); `GUARD_CONVERSION` is re-exported by `agents.loop`.
Pure functions: no I/O.
"""

from __future__ import annotations

import math
from typing import Final

from agents.brain import MetricReading
from agents.diagnostics import diagnostic_values
from agents.loop_baseline import _TREATMENT_ARM, is_pre_period_arm
from agents.loop_state import LoopInput
from agents.online import OnlinePolicy
from agents.stats.ratio import ratio_from_sums
from schemas.metrics import ArmTotals

_MAX_READINGS: Final = 64

#: the conversion guardrail's ratio as the brain reads it (`agents.insight.METRICS` name, numerator, denominator)
GUARD_CONVERSION: Final = ("conversion_rate", "conversions", "requests")


def _ratio_reading(name: str, numerator: str, denominator: str, arm_id: str, totals: ArmTotals) -> MetricReading | None:
    """One arm's ratio with its 95% interval (delta method over user buckets), None when undefined."""
    value = totals.ratio(numerator, denominator)
    if value != value:  # NaN: no denominator yet
        return None
    lower, upper = ratio_from_sums(totals.sums, numerator, denominator).interval()
    finite = math.isfinite(lower) and math.isfinite(upper)
    return MetricReading(
        name=name, value=value, lower=lower if finite else None, upper=upper if finite else None, arm=arm_id
    )


def brain_readings(policy: OnlinePolicy, inp: LoopInput) -> tuple[MetricReading, ...]:
    """The brain's readings (at most 64), in priority order: the incumbent arms' diagnostics
    (`agents.diagnostics.diagnostic_values`: near_duplicate_share, categories_per_list, fresh_share,
    long_tail_share; NaN left out — the diagnostic rules read them), then each arm's primary metric (the Online
    policy's) with its 95% interval (the brain's warm start and lift model), then the experiment arms'
    diagnostics.  A/A pre-period arms serve the incumbent and are left out.  A brain that needs more history
    than fits keeps it itself (the offline brain remembers every reading it was shown)."""
    metric = policy.primary
    arms = sorted((a, t) for a, t in inp.totals.items() if not is_pre_period_arm(a))
    incumbent = [(a, t) for a, t in arms if not _TREATMENT_ARM.search(a)]
    experiment = [(a, t) for a, t in arms if _TREATMENT_ARM.search(a)]
    out: list[MetricReading] = []
    for arm_id, totals in incumbent:
        out.extend(MetricReading(name=n, value=v, arm=arm_id) for n, v in diagnostic_values(totals).items())
    ratios = [(metric.name, metric.numerator, metric.denominator)]
    if policy.guardrails.conversion_margin is not None:
        ratios.append(GUARD_CONVERSION)  # so a brain can learn which moves cost conversions
    for name, numerator, denominator in ratios:
        out.extend(r for arm_id, totals in arms if (r := _ratio_reading(name, numerator, denominator, arm_id, totals)))
    for arm_id, totals in experiment:
        out.extend(MetricReading(name=n, value=v, arm=arm_id) for n, v in diagnostic_values(totals).items())
    return tuple(out[:_MAX_READINGS])
