"""Insight: after each decision, which parameters moved which metric, per cohort and surface (pure, no I/O).

The Insight agent calls `experiment_insights` once an experiment is decided
(promoted, stopped, rolled back).  Its inputs are what the runtime already
holds: the control config, each treatment arm's `ParamChange`s, and the merged
`ArmTotals` of every arm per cohort.  Its output is an `InsightReport`: frozen
`Insight` records — (surface, cohort, parameter path, direction, metric,
relative lift with an interval, significant) — that the runtime publishes to
`rectune.decisions`, that `agents.skills.update_skills` folds into the
Skillhub, and that `effect_readings` turns into `MetricReading`s for the
brain's narrative (`Brain.summarise`).  `pareto_front` keeps the
non-dominated set of the configs tried so far (e.g. CTR vs latency p99 vs
diversity), which the Actor and the dashboard show.

Metrics (`METRICS`): ratio metrics over user buckets — `ctr` (clicks per
shown item), `clicks_per_request`, `conversion_rate` (conversions per request),
`revenue_per_request`, `diversity` (distinct categories per list) — read with
the delta method (`agents.stats.ratio`): relative lift with the log-ratio
interval, asymmetric and > −100%.  `latency_p99` is a quantile of the fixed
latency histogram: each arm gets a distribution-free order-statistic interval
at level √level, snapped outward to bin edges (the histogram resolves ~12%),
and the lift interval is [t_lo / c_hi − 1, t_hi / c_lo − 1], which covers
with probability ≥ level.  Latency is treated as independent per request (a
property of the config and the request, not the user); the ratio metrics
respect the user as the randomisation unit.

Attribution.  An arm that changes k parameters at once cannot say which of
them moved a metric: every changed parameter gets an `Insight` carrying the
arm's effect and `co_changed = k`, and the Skill agent shares the evidence
among them (weight 1/k).  Intervals are fixed-sample intervals of the final
read, one per (cohort, arm, metric): no correction across that family is
applied here — `significant` is per record, and the runtime's sequential,
Holm-corrected decision stays the authority on promotion.

Layout.  This module keeps the read of one decided experiment
(`experiment_insights`, `effect_readings`); the rest lives beside it and is
re-exported from here (`__all__`), so callers import `agents.insight` only:

- `agents.insight_metrics` — `METRICS` and `MetricDef`, the lift reads
  (`metric_effect`, `cohort_effects`, `quantile_interval`, `verdict_of`) and
  `MetricEffect`;
- `agents.insight_records` — the vocabularies (`Stage`, `Direction`, `Role`,
  `STAGES`, `ALL_COHORTS`), `stage_of`, and the records `ArmChanges`,
  `Insight`, `InsightReport`, `Skipped`;
- `agents.insight_pareto` — `TriedConfig`, `pareto_front` and the running
  front (`tried_configs`, `update_front`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agents.brain import MetricReading, ParamValue, parameter_specs
from agents.insight_metrics import (
    DEFAULT_LEVEL,
    DEFAULT_METRICS,
    METRICS,
    EffectVerdict,
    MetricDef,
    MetricEffect,
    Sense,
    cohort_effects,
    insight_objective_for,
    metric_def,
    metric_effect,
    quantile_interval,
    ratio_metric_name,
    verdict_of,
)
from agents.insight_pareto import (
    FRONT_TRADE_OFFS,
    MAX_FRONT,
    TriedConfig,
    dominates,
    pareto_by,
    pareto_front,
    pareto_indices,
    tried_configs,
    update_front,
)
from agents.insight_records import (
    ALL_COHORTS,
    ROUTING_PARAMETERS,
    STAGES,
    ArmChanges,
    Direction,
    Insight,
    InsightReport,
    Role,
    Skipped,
    Stage,
    stage_of,
)
from schemas.config import CascadeConfig
from schemas.metrics import ArmTotals

__all__ = [
    "ALL_COHORTS",
    "DEFAULT_LEVEL",
    "DEFAULT_METRICS",
    "FRONT_TRADE_OFFS",
    "MAX_FRONT",
    "METRICS",
    "ROUTING_PARAMETERS",
    "STAGES",
    "ArmChanges",
    "Direction",
    "EffectVerdict",
    "Insight",
    "InsightReport",
    "MetricDef",
    "MetricEffect",
    "Role",
    "Sense",
    "Skipped",
    "Stage",
    "TriedConfig",
    "cohort_effects",
    "dominates",
    "effect_readings",
    "experiment_insights",
    "insight_objective_for",
    "metric_def",
    "metric_effect",
    "pareto_by",
    "pareto_front",
    "pareto_indices",
    "quantile_interval",
    "ratio_metric_name",
    "stage_of",
    "tried_configs",
    "update_front",
    "verdict_of",
]


@dataclass(frozen=True, slots=True)
class _Move:
    parameter: str
    stage: Stage
    direction: Direction
    before: ParamValue
    after: ParamValue


def _moves(control: CascadeConfig, arm: ArmChanges) -> tuple[list[_Move], list[Skipped]]:
    current = {spec.name: spec.current for spec in parameter_specs(control)}
    moves: list[_Move] = []
    skipped: list[Skipped] = []
    for change in arm.changes:
        if change.name not in current:
            skipped.append(Skipped(cohort="*", arm_id=arm.arm_id, what=change.name, reason="unknown parameter"))
            continue
        before, after = current[change.name], change.value
        if isinstance(before, str) or isinstance(after, str):
            if before == after:
                continue
            direction: Direction = "="
        elif float(after) == float(before):
            continue
        else:
            direction = "+" if float(after) > float(before) else "-"
        moves.append(_Move(change.name, stage_of(change.name), direction, before, after))
    return moves, skipped


def experiment_insights(
    *,
    experiment_id: str,
    surface: str,
    control_config: CascadeConfig,
    control_arm: str,
    arms: Sequence[ArmChanges],
    totals: Mapping[str, Mapping[str, ArmTotals]],
    objective: str,
    metrics: Sequence[str] = DEFAULT_METRICS,
    level: float = DEFAULT_LEVEL,
    at_ms: int,
    covariates: Mapping[str, Mapping[str, ArmTotals]] | None = None,
    paired: bool = False,
) -> InsightReport:
    """The insights of one decided experiment.

    `totals` maps cohort → arm id → merged totals (include the pooled
    `ALL_COHORTS` read if you want one); `control_config` is the incumbent
    the arms' changes were made against (its `surface` overrides applied);
    `objective` is the metric the experiment optimised (every other metric
    in `metrics` is a guardrail).  `covariates` maps cohort → arm id → the
    arm's A/A pre-period totals: a pair of arms that both have them is read
    CUPED-adjusted (`metric_effect`), as the Online agent decided on it;
    `paired` (a per-request experiment) reads ratios paired per bucket instead.
    Cohorts where an arm has no totals or a metric cannot be read are listed
    in `skipped`, never raised.
    Called by the Insight agent after every decision; pure and deterministic.
    """
    metric_def(objective)
    for name in metrics:
        metric_def(name)
    wanted = tuple(dict.fromkeys((objective, *metrics)))
    resolved = control_config.for_surface(surface)
    insights: list[Insight] = []
    effects_out: list[tuple[str, str, tuple[MetricEffect, ...]]] = []
    skipped: list[Skipped] = []
    for arm in sorted(arms, key=lambda a: a.arm_id):
        moves, unknown = _moves(resolved, arm)
        skipped.extend(unknown)
        if not moves:
            skipped.append(Skipped(cohort="*", arm_id=arm.arm_id, what="changes", reason="no effective change"))
            continue
        for cohort in sorted(totals):
            by_arm = totals[cohort]
            missing = [a for a in (control_arm, arm.arm_id) if a not in by_arm]
            if missing:
                reason = f"no totals for arm(s) {missing}"
                skipped.append(Skipped(cohort=cohort, arm_id=arm.arm_id, what="cohort", reason=reason))
                continue
            pre = (covariates or {}).get(cohort, {})
            pair = (pre[control_arm], pre[arm.arm_id]) if control_arm in pre and arm.arm_id in pre else None
            effects, refused = cohort_effects(
                by_arm[control_arm], by_arm[arm.arm_id], wanted, level, pair, paired=paired
            )
            skipped.extend(Skipped(cohort=cohort, arm_id=arm.arm_id, what=m, reason=r) for m, r in refused)
            effects_out.append((cohort, arm.arm_id, effects))
            insights.extend(
                Insight(
                    experiment_id=experiment_id,
                    surface=surface,
                    cohort=cohort,
                    arm_id=arm.arm_id,
                    stage=move.stage,
                    parameter=move.parameter,
                    direction=move.direction,
                    before=move.before,
                    after=move.after,
                    co_changed=len(moves),
                    metric=effect.metric,
                    role="objective" if effect.metric == objective else "guardrail",
                    control_value=effect.control,
                    treatment_value=effect.treatment,
                    effect=effect.effect,
                    lower=effect.lower,
                    upper=effect.upper,
                    level=effect.level,
                    significant=effect.significant,
                    verdict=verdict_of(effect.metric, effect),
                    at_ms=at_ms,
                )
                for move in moves
                for effect in effects
            )
    return InsightReport(
        experiment_id=experiment_id,
        surface=surface,
        insights=tuple(insights),
        effects=tuple(effects_out),
        skipped=tuple(skipped),
    )


def effect_readings(report: InsightReport) -> tuple[MetricReading, ...]:
    """The report's effects as `MetricReading`s (relative lifts with intervals) for `InsightContext.effects`."""
    return tuple(
        MetricReading(
            name=f"{effect.metric}_lift",
            value=effect.effect,
            lower=effect.lower,
            upper=effect.upper,
            arm=arm_id,
            cohort=cohort,
        )
        for cohort, arm_id, effects in report.effects
        for effect in effects
    )
