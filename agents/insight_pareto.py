"""The Pareto front of the configs tried so far (CTR vs latency p99 vs diversity; pure, no I/O).

Lives here: `TriedConfig` (a served config and its estimated metrics), the
generic non-dominated filter (`dominates`, `pareto_indices`, `pareto_by`),
`pareto_front` over tried configs in each metric's sense, `tried_configs`
(a report's arms as points) and `update_front`, the running front with its
`FRONT_TRADE_OFFS` and `MAX_FRONT` cap.  Callers: the Insight step
(`agents.loop_learn.learn` calls `update_front` after each decision and the
front is kept in `agents.loop_state.LoopState`), the Actor and the dashboard
that show it; everything public is re-exported by `agents.insight`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final, TypeVar

import msgspec

from agents.insight_metrics import Sense, metric_def
from agents.insight_records import ALL_COHORTS, InsightReport


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
