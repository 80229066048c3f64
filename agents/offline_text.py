"""The offline brain's texts and past-trial evidence (pure): hypotheses, rationales and the Insight summary.

Lives here: `Objective` (a metric the brain optimises), the past-trial
evidence the sampler is warm-started from (`_Trial`, `_Evidence`, `_slope`),
and the text the brain writes — `hypothesis_text`, `rationale_text`,
`insight_summary` and the small formatters.  Callers:
`agents.offline_brain.OfflineBrain` (which re-exports `Objective`),
`agents.offline_study` and `agents.offline_candidates`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, TypeAlias

import numpy as np
from optuna.distributions import CategoricalDistribution

from agents.brain import (
    MAX_FINDING_CHARS,
    MAX_FINDINGS,
    MAX_SUMMARY_CHARS,
    InsightContext,
    InsightText,
    MetricReading,
    ParamChange,
    ParamSpec,
    ParamValue,
    clip_text,
)
from agents.critic import param_class
from agents.offline_space import _Dimension, _values
from agents.skill_hints import parse_skill_note
from schemas.config import CascadeConfig

Direction: TypeAlias = Literal["maximize", "minimize"]


@dataclass(frozen=True, slots=True)
class Objective:
    """A metric the brain optimises: its `MetricReading.name` and direction."""

    name: str
    direction: Direction = "maximize"


@dataclass(frozen=True, slots=True)
class _Trial:
    arm: str
    config: CascadeConfig
    values: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class _Evidence:
    trials: tuple[_Trial, ...]
    objectives: tuple[Objective, ...]
    outside_box: int
    unknown_arms: int


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _short(name: str) -> str:
    return name.split(".", 1)[-1]


def hypothesis_text(dim: _Dimension, value: ParamValue, evidence: _Evidence, fallback: Objective) -> str:
    """A sampled change's hypothesis: which way the primary objective should move, from the past trials' trend."""
    spec = dim.spec
    primary = evidence.objectives[0] if evidence.objectives else fallback
    if spec.kind == "choice":
        return f"switch {spec.name} {spec.current} -> {value}: effect on {primary.name} unknown, exploratory"
    old, new = float(spec.current), float(value)
    verb = "raise" if new > old else "lower"
    change = f"{verb} {spec.name} {_fmt(spec.current)} -> {_fmt(value)}"
    if old != 0.0:
        change += f" ({(new - old) / abs(old):+.0%})"
    slope, n = _slope(evidence, spec.name)
    if slope is None or slope == 0.0:
        return f"{change}: exploratory, no past-trial trend in {primary.name} for this parameter"
    good = slope * (new - old) > 0.0
    if primary.direction == "minimize":
        good = not good
    trend = "rises" if slope > 0 else "falls"
    if good:
        return f"{change} should improve {primary.name} (it {trend} with this parameter over {n} past trials)"
    return f"{change}: against the past-trial trend ({primary.name} {trend} with it over {n} trials); exploratory"


def rationale_text(dim: _Dimension, evidence: _Evidence, sampler_name: str) -> str:
    """A sampled change's rationale: where the sampler searched and what warm-started it."""
    spec = dim.spec
    if isinstance(dim.distribution, CategoricalDistribution):
        where = f"choices {list(dim.distribution.choices)}"
    else:
        where = f"box [{_fmt(dim.low)}, {_fmt(dim.high)}] ({param_class(spec)} trust region"
        where += ", narrowed by the Skillhub)" if dim.hints else ")"
    parts = [f"{sampler_name.upper()} sample in {where}"]
    if evidence.trials:
        primary = evidence.objectives[0]
        pick = max if primary.direction == "maximize" else min
        best = pick(evidence.trials, key=lambda t: t.values[0])
        parts.append(
            f"warm start: {len(evidence.trials)} past trials, best {primary.name} {best.values[0]:.4g} (arm {best.arm})"
        )
    else:
        parts.append("cold start: no past trial in this box")
    if evidence.outside_box:
        parts.append(f"{evidence.outside_box} past trials outside the box not used")
    parts.extend(f"{hint.describe()}: {clip_text(hint.note.pattern, 120)}" for hint in dim.hints)
    return "; ".join(parts)


def insight_summary(context: InsightContext) -> InsightText:
    """The offline brain's statistical summary of a decided experiment: each effect judged by its interval."""
    findings: list[str] = []
    resolved = 0
    for effect in context.effects:
        text, decided = _effect_text(effect)
        resolved += decided
        findings.append(text)
    # Only the changed paths can be named by a relevant note (their kind does not matter here).
    specs = {c.name: ParamSpec(name=c.name, kind="float", current=0.0) for c in context.changes}
    moved = {c.name: c.value for c in context.changes}
    for note in context.skills:
        hint = parse_skill_note(note, specs)
        if hint is not None and hint.parameter in moved:
            findings.append(f"Skillhub note relevant to this change: {hint.describe()}")
    changes = ", ".join(f"{c.name} -> {_fmt(c.value)}" for c in context.changes) or "no parameter change"
    summary = (
        f"Experiment {context.experiment_id} on {context.surface}: decision {context.decision}. "
        f"Changed: {changes}. {resolved} of {len(context.effects)} effects resolved "
        "(interval excludes 0); the rest are not distinguishable from no effect."
    )
    return InsightText(
        summary=clip_text(summary, MAX_SUMMARY_CHARS),
        findings=tuple(clip_text(f, MAX_FINDING_CHARS) for f in findings[:MAX_FINDINGS]),
    )


def _slope(evidence: _Evidence, name: str) -> tuple[float | None, int]:
    """Least-squares slope of the primary objective in one parameter over the past trials (None if < 3 or flat)."""
    xs: list[float] = []
    ys: list[float] = []
    for trial in evidence.trials:
        value = _values(trial.config).get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            xs.append(float(value))
            ys.append(trial.values[0])
    if len(xs) < 3:
        return None, len(xs)
    x, y = np.asarray(xs), np.asarray(ys)
    spread = float(((x - x.mean()) ** 2).sum())
    if spread <= 0.0:
        return None, len(xs)
    return float(((x - x.mean()) * (y - y.mean())).sum() / spread), len(xs)


def _move_text(change: ParamChange, specs: Mapping[str, ParamSpec]) -> str:
    spec = specs.get(change.name)
    before = _fmt(spec.current) if spec is not None else "?"
    return f"{_short(change.name)} {before}->{_fmt(change.value)}"


def _effect_text(effect: MetricReading) -> tuple[str, bool]:
    where = "".join([f" arm {effect.arm}" if effect.arm else "", f" cohort {effect.cohort}" if effect.cohort else ""])
    head = f"{effect.name}{where}: {effect.value:+.4g}"
    if effect.lower is None or effect.upper is None:
        return f"{head} (no interval: not judged)", False
    interval = f"{head} [{effect.lower:+.4g}, {effect.upper:+.4g}]"
    if effect.lower > 0.0:
        return f"{interval}: raised (interval above 0)", True
    if effect.upper < 0.0:
        return f"{interval}: lowered (interval below 0)", True
    return f"{interval}: not resolved (interval includes 0)", False
