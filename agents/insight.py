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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias, TypeVar

import msgspec
import numpy as np
import numpy.typing as npt

from agents.brain import MetricReading, ParamChange, ParamValue, parameter_specs
from agents.stats.distributions import normal_ppf
from agents.stats.errors import StatsError
from agents.stats.ratio import compare, ratio_from_sums
from schemas.config import CascadeConfig
from schemas.metrics import LATENCY_EDGES_MS, N_LATENCY_BINS, ArmTotals, latency_quantile

Stage: TypeAlias = Literal["pre_rank", "rank", "re_rank", "routing"]
Direction: TypeAlias = Literal["+", "-", "="]
Role: TypeAlias = Literal["objective", "guardrail"]
EffectVerdict: TypeAlias = Literal["better", "worse", "neutral"]
Sense: TypeAlias = Literal["max", "min"]

STAGES: Final[tuple[Stage, ...]] = ("pre_rank", "rank", "re_rank", "routing")
#: The cohort name of pooled (all-users) reads; skills for it apply where no cohort-specific skill exists.
ALL_COHORTS: Final = "all"
#: Parameters that route candidates between stages (the cuts): stage "routing", whatever their prefix.
ROUTING_PARAMETERS: Final = frozenset({"pre_rank.candidate_cut", "rank.cut"})
DEFAULT_LEVEL: Final = 0.95


def stage_of(path: str) -> Stage:
    """The cascade stage a parameter path belongs to.

    Candidate cuts between stages (`ROUTING_PARAMETERS`, any `*_cut` leaf, and
    anything under `routing.`) are "routing"; otherwise the path's first
    segment (`pre_rank`, `rank`, `re_rank`).  Raises `ValueError` for a path
    outside the cascade.  Callers: `experiment_insights`, `agents.skills`.
    """
    head, _, rest = path.partition(".")
    if head == "routing" or path in ROUTING_PARAMETERS or (rest and path.rsplit(".", 1)[-1].endswith("_cut")):
        return "routing"
    if head == "pre_rank":
        return "pre_rank"
    if head == "rank":
        return "rank"
    if head == "re_rank":
        return "re_rank"
    msg = f"parameter: {path!r} is not a cascade parameter path (pre_rank.*, rank.*, re_rank.*, routing.*)"
    raise ValueError(msg)


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True, slots=True)
class MetricDef:
    """How one metric is read from `ArmTotals`.

    `kind` "ratio": Σ numerator / Σ denominator over user buckets (delta
    method); "quantile": the `quantile` of the latency histogram.
    `higher_is_better` gives the metric's sense (Pareto, verdicts, skills).
    """

    name: str
    kind: Literal["ratio", "quantile"]
    higher_is_better: bool
    numerator: str = ""
    denominator: str = ""
    quantile: float = 0.0

    @property
    def sense(self) -> Sense:
        """Pareto sense: "max" when higher is better, else "min"."""
        return "max" if self.higher_is_better else "min"


METRICS: Final[Mapping[str, MetricDef]] = {
    m.name: m
    for m in (
        MetricDef("ctr", "ratio", True, numerator="clicks", denominator="impressions"),
        MetricDef("clicks_per_request", "ratio", True, numerator="clicks", denominator="requests"),
        MetricDef("conversion_rate", "ratio", True, numerator="conversions", denominator="requests"),
        MetricDef("revenue_per_request", "ratio", True, numerator="revenue", denominator="requests"),
        MetricDef("latency_p99", "quantile", False, quantile=0.99),
        MetricDef("diversity", "ratio", True, numerator="distinct_categories", denominator="requests"),
    )
}
DEFAULT_METRICS: Final = tuple(METRICS)


def ratio_metric_name(numerator: str, denominator: str) -> str | None:
    """The `METRICS` name of the ratio numerator/denominator (e.g. clicks/requests → "clicks_per_request"), if known.

    Callers that name a north star (the simulated preset, the demo policy) use
    it so the Online reads, Insight, the Skillhub and the brain share one name.
    """
    for name, metric in METRICS.items():
        if metric.kind == "ratio" and (metric.numerator, metric.denominator) == (numerator, denominator):
            return name
    return None


def insight_objective_for(primary: str) -> str:
    """The Insight/Skill objective for a primary metric: its own name if `METRICS` knows it, else "ctr".

    Callers that build a loop's settings (the simulated preset, the demo) use it
    so an unknown north star falls back the same way everywhere.
    """
    return primary if primary in METRICS else "ctr"


def metric_def(name: str) -> MetricDef:
    """The definition of a known metric; `ValueError` naming the known ones otherwise."""
    found = METRICS.get(name)
    if found is None:
        msg = f"metric: {name!r} is unknown; known: {sorted(METRICS)}"
        raise ValueError(msg)
    return found


class MetricEffect(msgspec.Struct, frozen=True, kw_only=True):
    """Treatment vs control on one metric in one cohort: values, relative lift and its interval.

    `effect` = treatment / control − 1; [`lower`, `upper`] its interval at
    `level`; `significant` when the interval excludes 0.
    """

    metric: str
    control: float
    treatment: float
    effect: float
    lower: float
    upper: float
    level: float
    significant: bool


class Skipped(msgspec.Struct, frozen=True, kw_only=True):
    """A read that could not be made (thin or empty traffic, unknown parameter) and why."""

    cohort: str
    arm_id: str
    what: str
    reason: str


def _bin_lower(index: int) -> float:
    return 0.0 if index == 0 else float(LATENCY_EDGES_MS[index - 1])


def _bin_upper(index: int) -> float:
    return math.inf if index >= N_LATENCY_BINS - 1 else float(LATENCY_EDGES_MS[index])


def quantile_interval(hist: npt.ArrayLike, q: float, level: float) -> tuple[float, float, float]:
    """(estimate, lower, upper) of the `q` quantile of a fixed-layout latency histogram.

    Distribution-free: the ranks n·q ± z·√(n·q·(1−q)) (normal approximation
    of the binomial order-statistic interval) bound the quantile, and each
    bound is snapped outward to its bin's edge.  `upper` is inf when the
    upper rank lies beyond the data (too few observations for this `q`).
    """
    counts = np.asarray(hist, dtype=np.int64)
    n = int(counts.sum())
    if n <= 0:
        msg = "latency histogram: empty"
        raise StatsError(msg, "read the arm only once it has traffic")
    if not 0.0 < level < 1.0 or not 0.0 < q < 1.0:
        msg = f"q, level: must be in (0, 1), got {q!r}, {level!r}"
        raise StatsError(msg)
    z = normal_ppf(0.5 + 0.5 * level)
    half = z * math.sqrt(n * q * (1.0 - q))
    lo_rank = max(1, math.floor(n * q - half))
    hi_rank = math.ceil(n * q + half) + 1
    cumulative = np.cumsum(counts)
    lo_bin = int(np.searchsorted(cumulative, lo_rank, side="left"))
    upper = math.inf if hi_rank > n else _bin_upper(int(np.searchsorted(cumulative, hi_rank, side="left")))
    return latency_quantile(counts, q), _bin_lower(lo_bin), upper


def _quantile_effect(metric: MetricDef, control: ArmTotals, treatment: ArmTotals, level: float) -> MetricEffect:
    arm_level = math.sqrt(level)  # two independent intervals, each at √level: both cover with probability level
    c, c_lo, c_hi = quantile_interval(control.latency_hist, metric.quantile, arm_level)
    t, t_lo, t_hi = quantile_interval(treatment.latency_hist, metric.quantile, arm_level)
    if not (math.isfinite(c_hi) and math.isfinite(t_hi)) or c_lo <= 0.0:
        msg = f"{metric.name}: too few requests to bound the {metric.quantile:g} quantile"
        raise StatsError(msg, "wait for more traffic")
    lower, upper = t_lo / c_hi - 1.0, t_hi / c_lo - 1.0
    return MetricEffect(
        metric=metric.name,
        control=c,
        treatment=t,
        effect=t / c - 1.0,
        lower=lower,
        upper=upper,
        level=level,
        significant=lower > 0.0 or upper < 0.0,
    )


def _ratio_effect(metric: MetricDef, control: ArmTotals, treatment: ArmTotals, level: float) -> MetricEffect:
    cmp = compare(
        ratio_from_sums(control.sums, metric.numerator, metric.denominator),
        ratio_from_sums(treatment.sums, metric.numerator, metric.denominator),
    )
    if not math.isfinite(cmp.lift) or not math.isfinite(cmp.log_ratio_variance):
        msg = f"{metric.name}: a relative lift needs both arms' values > 0 (got {cmp.control:g}, {cmp.treatment:g})"
        raise StatsError(msg, "wait for more traffic")
    lower, upper = cmp.lift_interval(level)
    return MetricEffect(
        metric=metric.name,
        control=cmp.control,
        treatment=cmp.treatment,
        effect=cmp.lift,
        lower=lower,
        upper=upper,
        level=level,
        significant=lower > 0.0 or upper < 0.0,
    )


def metric_effect(metric: str, control: ArmTotals, treatment: ArmTotals, level: float = DEFAULT_LEVEL) -> MetricEffect:
    """Relative lift of `treatment` over `control` on one metric, with its interval.

    Raises `StatsError` when the read is impossible (no traffic, a zero
    control value, too few requests for a p99 interval); `ValueError` for an
    unknown metric.
    """
    definition = metric_def(metric)
    if definition.kind == "quantile":
        return _quantile_effect(definition, control, treatment, level)
    return _ratio_effect(definition, control, treatment, level)


def cohort_effects(
    control: ArmTotals,
    treatment: ArmTotals,
    metrics: Sequence[str] = DEFAULT_METRICS,
    level: float = DEFAULT_LEVEL,
) -> tuple[tuple[MetricEffect, ...], tuple[tuple[str, str], ...]]:
    """Every metric's lift + interval for one cohort's pair of arms; and (metric, reason) for the reads refused.

    The per-cohort read the brief asks for: the Insight agent calls it for
    each (cohort, treatment arm); the dashboard can call it directly.
    """
    effects: list[MetricEffect] = []
    refused: list[tuple[str, str]] = []
    for name in metrics:
        try:
            effects.append(metric_effect(name, control, treatment, level))
        except StatsError as err:
            refused.append((name, err.message))
    return tuple(effects), tuple(refused)


def verdict_of(metric: str, effect: MetricEffect) -> EffectVerdict:
    """The effect read in the metric's sense: "better"/"worse" when significant, else "neutral"."""
    if not effect.significant:
        return "neutral"
    up = effect.lower > 0.0
    return "better" if up == metric_def(metric).higher_is_better else "worse"


# --------------------------------------------------------------------------- insights


class ArmChanges(msgspec.Struct, frozen=True, kw_only=True):
    """One treatment arm of a decided experiment and its changes against the control config."""

    arm_id: str
    changes: tuple[ParamChange, ...]


class Insight(msgspec.Struct, frozen=True, kw_only=True):
    """One finding: moving `parameter` `direction`-wards in arm `arm_id` moved `metric` by `effect`.

    `before`/`after` are the control and treatment values (`direction` "+"/"−"
    for numbers, "=" for a choice switched to `after`); `co_changed` is how
    many parameters the arm changed together (attribution is shared);
    `role` says whether `metric` was the experiment's objective or a
    guardrail; `verdict` reads the effect in the metric's sense.
    Published to `rectune.decisions`; folded into the Skillhub.
    """

    experiment_id: str
    surface: str
    cohort: str
    arm_id: str
    stage: Stage
    parameter: str
    direction: Direction
    before: ParamValue
    after: ParamValue
    co_changed: int
    metric: str
    role: Role
    control_value: float
    treatment_value: float
    effect: float
    lower: float
    upper: float
    level: float
    significant: bool
    verdict: EffectVerdict
    at_ms: int


class InsightReport(msgspec.Struct, frozen=True, kw_only=True):
    """What `experiment_insights` found (`insights`), the raw per-arm effects, and the reads it had to skip."""

    experiment_id: str
    surface: str
    insights: tuple[Insight, ...]
    effects: tuple[tuple[str, str, tuple[MetricEffect, ...]], ...]  # (cohort, arm_id, effects)
    skipped: tuple[Skipped, ...] = ()


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
) -> InsightReport:
    """The insights of one decided experiment.

    `totals` maps cohort → arm id → merged totals (include the pooled
    `ALL_COHORTS` read if you want one); `control_config` is the incumbent
    the arms' changes were made against (its `surface` overrides applied);
    `objective` is the metric the experiment optimised (every other metric
    in `metrics` is a guardrail).  Cohorts where an arm has no totals or a
    metric cannot be read are listed in `skipped`, never raised.
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
            effects, refused = cohort_effects(by_arm[control_arm], by_arm[arm.arm_id], wanted, level)
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


# --------------------------------------------------------------------------- Pareto front


class TriedConfig(msgspec.Struct, frozen=True, kw_only=True):
    """A config that was served to some traffic, with its estimated metrics (name, value) pairs."""

    config_id: str
    metrics: tuple[tuple[str, float], ...]

    def value(self, metric: str) -> float:
        """The estimate of `metric`; `KeyError` when this config has none."""
        for name, value in self.metrics:
            if name == metric:
                return value
        raise KeyError(metric)


T = TypeVar("T")


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """True when `a` is at least as good as `b` everywhere and better somewhere (all objectives maximised)."""
    return all(x >= y for x, y in zip(a, b, strict=True)) and any(x > y for x, y in zip(a, b, strict=True))


def pareto_indices(vectors: Sequence[Sequence[float]]) -> tuple[int, ...]:
    """Indices of the non-dominated vectors (maximise every coordinate); ties are all kept.

    Raises `ValueError` for ragged vectors or a NaN (a NaN would make every
    comparison false and silently keep a bad point).
    """
    if not vectors:
        return ()
    width = len(vectors[0])
    for i, vector in enumerate(vectors):
        if len(vector) != width:
            msg = f"vectors[{i}]: every point needs {width} values, got {len(vector)}"
            raise ValueError(msg)
        if any(math.isnan(v) for v in vector):
            msg = f"vectors[{i}]: NaN in {list(vector)}"
            raise ValueError(msg)
    return tuple(
        i
        for i, candidate in enumerate(vectors)
        if not any(dominates(other, candidate) for j, other in enumerate(vectors) if j != i)
    )


def pareto_by(items: Sequence[T], key: Callable[[T], Sequence[float]]) -> tuple[T, ...]:
    """The non-dominated `items`, in input order, where `key` gives each item's vector to maximise."""
    return tuple(items[i] for i in pareto_indices([key(item) for item in items]))


def pareto_front(
    configs: Iterable[TriedConfig],
    metrics: Sequence[str] = ("ctr", "latency_p99", "diversity"),
    senses: Mapping[str, Sense] | None = None,
) -> tuple[TriedConfig, ...]:
    """The tried configs no other tried config beats on every one of `metrics` (in input order).

    Senses come from `senses`, else from `METRICS` (CTR and diversity up,
    latency p99 down).  Every config must carry every metric (`KeyError`
    otherwise).  Called after each decision by `update_front` (the Insight
    step of `agents.loop_learn`), which publishes the front in the insight
    record.
    """
    sign = []
    for name in metrics:
        sense = (senses or {}).get(name) or metric_def(name).sense
        sign.append(1.0 if sense == "max" else -1.0)
    points = list(configs)
    return pareto_by(points, lambda c: [s * c.value(m) for s, m in zip(sign, metrics, strict=True)])


def tried_configs(report: InsightReport, cohort: str = ALL_COHORTS, control_id: str = "") -> tuple[TriedConfig, ...]:
    """The arms of a report as `TriedConfig`s on one cohort: control once, then each treatment.

    Ids are the arm ids, prefixed "experiment_id/" unless they already start with the
    experiment id (control: `control_id`, else its arm id so prefixed).
    Only metrics read for every arm are kept, so the points are comparable.
    Feed the result (accumulated over experiments) to `pareto_front`.
    """
    rows = [(arm_id, {e.metric: e for e in effects}) for c, arm_id, effects in report.effects if c == cohort]
    if not rows:
        return ()
    common = [m for m in rows[0][1] if all(m in by_metric for _, by_metric in rows)]

    def qualified(arm_id: str) -> str:
        return arm_id if arm_id.startswith(report.experiment_id) else f"{report.experiment_id}/{arm_id}"

    control = TriedConfig(
        config_id=control_id or qualified("control"),
        metrics=tuple((m, rows[0][1][m].control) for m in common),
    )
    treated = tuple(
        TriedConfig(
            config_id=qualified(arm_id),
            metrics=tuple((m, by_metric[m].treatment) for m in common),
        )
        for arm_id, by_metric in rows
    )
    return (control, *treated)


#: Objectives of the running front besides the loop's own objective: the latency and diversity trade-offs.
FRONT_TRADE_OFFS: Final = ("latency_p99", "diversity")
#: Most configs the running front keeps (the best by the objective when more are non-dominated).
MAX_FRONT: Final = 32


def update_front(
    front: Sequence[TriedConfig], report: InsightReport, objective: str, *, control_id: str = ""
) -> tuple[tuple[TriedConfig, ...], tuple[str, ...]]:
    """The running Pareto front of tried configs after one more experiment's `report`, and the metrics it compared.

    Called by the Insight step (`agents.loop_learn.learn`) after each
    decision.  Points are (objective, latency p99, diversity) estimates of
    every arm, as `tried_configs` reads them for all cohorts; a metric an arm
    was not read on is left out of the comparison for the whole front.  The
    estimates come from the experiment that served each config, so configs
    from different weeks are compared on absolute values measured at
    different times (seasonal drift shifts them together).  Keeps at most
    `MAX_FRONT` configs, the best on the objective.  Without an objective
    read the front stays as it was (with the metrics it has in common).
    """
    points = [*front, *tried_configs(report, control_id=control_id)]
    metrics = _front_metrics(points, objective)
    if objective not in metrics:
        return tuple(front), _front_metrics(front, objective)
    kept = pareto_front([p for p in points if all(math.isfinite(p.value(m)) for m in metrics)], metrics)
    sense = metric_def(objective).sense
    ranked = sorted(kept, key=lambda p: p.value(objective), reverse=sense == "max")
    return tuple(ranked[:MAX_FRONT]), metrics


def _front_metrics(points: Sequence[TriedConfig], objective: str) -> tuple[str, ...]:
    """The objective and `FRONT_TRADE_OFFS`, those every point has."""
    wanted = (objective, *(m for m in FRONT_TRADE_OFFS if m != objective))
    return tuple(m for m in wanted if points and all(_has(p, m) for p in points))


def _has(point: TriedConfig, metric: str) -> bool:
    return any(name == metric for name, _ in point.metrics)
