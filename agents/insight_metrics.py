"""Insight's metric maths: which metrics it reads and each one's lift with an interval (pure, no I/O).

Lives here: `METRICS` (each a `MetricDef`: a ratio over user buckets, read
with the delta method, or the latency histogram's p99), the name helpers
`ratio_metric_name` / `insight_objective_for` / `metric_def`, the
order-statistic interval of a histogram quantile (`quantile_interval`), and
the treatment-vs-control reads `metric_effect` / `cohort_effects` with their
`MetricEffect` result and its `verdict_of`.  Callers: `agents.insight`
(`experiment_insights` reads every arm with `cohort_effects`),
`agents.insight_pareto` (metric senses), `agents.skills` (`metric_def`),
the simulated preset and the demo (`ratio_metric_name`,
`insight_objective_for`); everything public is re-exported by
`agents.insight`, which documents the statistics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

import msgspec
import numpy as np
import numpy.typing as npt

from agents.stats.cuped import cuped_from_sums
from agents.stats.distributions import normal_ppf
from agents.stats.errors import StatsError
from agents.stats.ratio import Comparison, compare_sums
from schemas.metrics import LATENCY_EDGES_MS, N_LATENCY_BINS, ArmTotals, latency_quantile

EffectVerdict: TypeAlias = Literal["better", "worse", "neutral"]
Sense: TypeAlias = Literal["max", "min"]

DEFAULT_LEVEL: Final = 0.95


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


def _ratio_effect(
    metric: MetricDef,
    control: ArmTotals,
    treatment: ArmTotals,
    level: float,
    covariates: tuple[ArmTotals, ArmTotals] | None = None,
    *,
    paired: bool = False,
) -> MetricEffect:
    cmp = None
    if covariates is not None and not paired:
        cmp = _cuped_compare(metric, (control, treatment), covariates)
    if cmp is None:
        cmp = compare_sums(control.sums, treatment.sums, metric.numerator, metric.denominator, paired=paired)
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


def _cuped_compare(
    metric: MetricDef, arms: tuple[ArmTotals, ArmTotals], covariates: tuple[ArmTotals, ArmTotals]
) -> Comparison | None:
    """The CUPED-adjusted comparison of (control, treatment) on `metric`; None when the fit is impossible."""
    try:
        fit = cuped_from_sums(
            [a.sums for a in arms], [c.sums for c in covariates], metric.numerator, metric.denominator
        )
        cmp = fit.compare(1, 0)
    except StatsError:
        return None
    return cmp if math.isfinite(cmp.difference_variance) and cmp.difference_variance > 0.0 else None


def metric_effect(
    metric: str,
    control: ArmTotals,
    treatment: ArmTotals,
    level: float = DEFAULT_LEVEL,
    covariates: tuple[ArmTotals, ArmTotals] | None = None,
    *,
    paired: bool = False,
) -> MetricEffect:
    """Relative lift of `treatment` over `control` on one metric, with its interval.

    With `covariates` (the two arms' A/A pre-period totals, same users) a
    ratio metric is read CUPED-adjusted, as the Online agent reads it, and
    falls back to the raw read when the fit is impossible; `paired` (the
    arms hold the same users: a per-request experiment) reads it paired per
    bucket (`agents.stats.ratio.compare_sums`) and ignores `covariates`; a quantile ignores
    them.  Raises `StatsError` when the read is impossible (no traffic, a
    zero control value, too few requests for a p99 interval); `ValueError`
    for an unknown metric.
    """
    definition = metric_def(metric)
    if definition.kind == "quantile":
        return _quantile_effect(definition, control, treatment, level)
    return _ratio_effect(definition, control, treatment, level, covariates, paired=paired)


def cohort_effects(
    control: ArmTotals,
    treatment: ArmTotals,
    metrics: Sequence[str] = DEFAULT_METRICS,
    level: float = DEFAULT_LEVEL,
    covariates: tuple[ArmTotals, ArmTotals] | None = None,
    *,
    paired: bool = False,
) -> tuple[tuple[MetricEffect, ...], tuple[tuple[str, str], ...]]:
    """Every metric's lift + interval for one cohort's pair of arms; and (metric, reason) for the reads refused.

    The per-cohort read the brief asks for: the Insight agent calls it for
    each (cohort, treatment arm), with the pair's pre-period `covariates`
    when it has them (`metric_effect`); the dashboard can call it directly.
    """
    effects: list[MetricEffect] = []
    refused: list[tuple[str, str]] = []
    for name in metrics:
        try:
            effects.append(metric_effect(name, control, treatment, level, covariates, paired=paired))
        except StatsError as err:
            refused.append((name, err.message))
    return tuple(effects), tuple(refused)


def verdict_of(metric: str, effect: MetricEffect) -> EffectVerdict:
    """The effect read in the metric's sense: "better"/"worse" when significant, else "neutral"."""
    if not effect.significant:
        return "neutral"
    up = effect.lower > 0.0
    return "better" if up == metric_def(metric).higher_is_better else "worse"
