"""What the brain reads before a proposal round: each arm's diagnostics and ratio metrics, with their intervals.

What lives here: `brain_readings` (the `ProposalContext.metrics` of a round:
at most `_MAX_READINGS` `MetricReading`s, in priority order),
`GUARD_CONVERSION` (the conversion guardrail's ratio as the brain reads it),
`_ratio_reading` (one arm's ratio with its 95% interval), `_cuped_readings`
(an experiment's arms adjusted with their A/A pre-period, as the Online agent reads them) and
`_paired_readings` (a per-request experiment's arms with the paired read's intervals).

Who calls it: `agents.loop.AgentLoop.metrics` (for the idle phase,
`agents.loop_propose`); `GUARD_CONVERSION` is re-exported by `agents.loop`.
Pure functions: no I/O.
"""

from __future__ import annotations

import math
from typing import Final

from agents.arm_ids import is_experiment_arm, is_pre_period_arm, parse_arm_id, pre_period_id
from agents.brain import MetricReading
from agents.diagnostics import diagnostic_values
from agents.loop_state import LoopInput
from agents.online import OnlinePolicy
from agents.stats.cuped import cuped_from_sums
from agents.stats.distributions import two_sided_z
from agents.stats.errors import StatsError
from agents.stats.ratio import named_rows, paired_comparison, ratio_from_sums
from schemas.metrics import ArmTotals

_MAX_READINGS: Final = 64
_Z95: Final = two_sided_z(0.95)

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


def _by_experiment(arms: list[tuple[str, ArmTotals]]) -> dict[str, list[tuple[str, ArmTotals]]]:
    """An experiment's arms (A/A pre-period arms left out), by experiment id."""
    out: dict[str, list[tuple[str, ArmTotals]]] = {}
    for arm_id, totals in arms:
        parsed = parse_arm_id(arm_id)
        if parsed is not None and not parsed.pre_period:
            out.setdefault(parsed.experiment, []).append((arm_id, totals))
    return out


def _cuped_readings(
    name: str, numerator: str, denominator: str, arms: list[tuple[str, ArmTotals]], inp: LoopInput
) -> dict[str, MetricReading]:
    """Each experiment arm's ratio adjusted with its A/A pre-period covariates (CUPED), with its 95% interval.

    The Online agent decides on these adjusted reads (`agents.online_primary`);
    the raw ones carry the between-user variance of a returning population
    that the pre-period explains (the reads' variance ratio is often 0.2), so
    a brain fed raw intervals learns from each arm about a fifth of what it
    says.  An experiment counts when every one of its arms (`<exp>.c`,
    `<exp>.t<N>`) has its pre-period totals (`<exp>.pre.c`, …) in `inp`; the
    fit pools θ over its arms as the Online agent does.  Arms whose fit fails
    or is not finite keep their raw reading.
    """
    by_experiment = _by_experiment(arms)
    out: dict[str, MetricReading] = {}
    for experiment, members in by_experiment.items():
        pre = [inp.totals.get(pre_period_id(experiment, arm_id)) for arm_id, _ in members]
        if len(members) < 2 or any(p is None for p in pre):
            continue
        try:
            fit = cuped_from_sums(
                [t.sums for _, t in members], [p.sums for p in pre if p is not None], numerator, denominator
            )
        except StatsError:
            continue
        for (arm_id, _), arm in zip(members, fit.arms, strict=True):
            if not (math.isfinite(arm.value) and math.isfinite(arm.variance) and arm.variance >= 0.0):
                continue
            lower, upper = arm.interval()
            out[arm_id] = MetricReading(name=name, value=arm.value, lower=lower, upper=upper, arm=arm_id)
    return out


def _paired_readings(
    name: str, numerator: str, denominator: str, arms: list[tuple[str, ArmTotals]]
) -> dict[str, MetricReading]:
    """A per-request experiment's arms with intervals that carry its paired read (as the Online agent reads it).

    A brain reads an arm's lift as t/c − 1 of two independent readings
    (`agents.ascent.arm_effects`), whose squared relative standard errors
    add.  The arms of a per-request experiment hold the same users, so their
    own intervals carry the between-user variance the paired read cancels
    (about ten times the paired variance in the simulated worlds).  Each
    treatment arm a's paired log-ratio variance V_a is therefore split: the
    control's reading gets min_a V_a / 2 and arm a's the rest, so t/c − 1
    read as independent has exactly the paired read's standard error.
    """
    by_experiment = _by_experiment(arms)
    out: dict[str, MetricReading] = {}
    for members in by_experiment.values():
        controls = [(a, t) for a, t in members if (p := parse_arm_id(a)) is not None and p.is_control]
        if len(controls) != 1:
            continue
        control_id, control = controls[0]
        control_rows = named_rows(control.sums, numerator, denominator)
        reads: dict[str, tuple[float, float]] = {}  # arm -> (value, paired log-ratio variance)
        control_value = math.nan
        for arm_id, totals in members:
            if arm_id == control_id:
                continue
            try:
                cmp = paired_comparison(control_rows, named_rows(totals.sums, numerator, denominator))
            except StatsError:
                continue
            if math.isfinite(cmp.log_ratio_variance) and cmp.log_ratio_variance > 0.0:
                reads[arm_id] = (cmp.treatment, cmp.log_ratio_variance)
                control_value = cmp.control
        if not reads:
            continue
        control_share = min(v for _, v in reads.values()) / 2.0
        split = {control_id: (control_value, control_share)}
        split.update({a: (value, v - control_share) for a, (value, v) in reads.items()})
        for arm_id, (value, relative_variance) in split.items():
            half = _Z95 * value * math.sqrt(relative_variance)
            out[arm_id] = MetricReading(name=name, value=value, lower=value - half, upper=value + half, arm=arm_id)
    return out


def brain_readings(policy: OnlinePolicy, inp: LoopInput) -> tuple[MetricReading, ...]:
    """The brain's readings (at most 64), in priority order: the incumbent arms' diagnostics
    (`agents.diagnostics.diagnostic_values`: near_duplicate_share, categories_per_list, fresh_share,
    long_tail_share; NaN left out — the diagnostic rules read them), then each arm's primary metric (the Online
    policy's) with its 95% interval (the brain's warm start and lift model; CUPED-adjusted for an experiment's
    arms when its A/A pre-period covers them, `_cuped_readings`; under a per-request policy with the paired
    read's intervals, `_paired_readings`), then the experiment arms'
    diagnostics.  A/A pre-period arms serve the incumbent and are left out.  A brain that needs more history
    than fits keeps it itself (the offline brain remembers every reading it was shown)."""
    metric = policy.primary
    arms = sorted((a, t) for a, t in inp.totals.items() if not is_pre_period_arm(a))
    incumbent = [(a, t) for a, t in arms if not is_experiment_arm(a)]
    experiment = [(a, t) for a, t in arms if is_experiment_arm(a)]
    out: list[MetricReading] = []
    for arm_id, totals in incumbent:
        out.extend(MetricReading(name=n, value=v, arm=arm_id) for n, v in diagnostic_values(totals).items())
    ratios = [(metric.name, metric.numerator, metric.denominator)]
    if policy.guardrails.conversion_margin is not None:
        ratios.append(GUARD_CONVERSION)  # so a brain can learn which moves cost conversions
    for name, numerator, denominator in ratios:
        if policy.randomization_unit == "request":
            adjusted = _paired_readings(name, numerator, denominator, arms)
        else:
            adjusted = _cuped_readings(name, numerator, denominator, arms, inp)
        out.extend(
            r
            for arm_id, totals in arms
            if (r := adjusted.get(arm_id) or _ratio_reading(name, numerator, denominator, arm_id, totals))
        )
    for arm_id, totals in experiment:
        out.extend(MetricReading(name=n, value=v, arm=arm_id) for n, v in diagnostic_values(totals).items())
    return tuple(out[:_MAX_READINGS])
