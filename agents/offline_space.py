"""The offline brain's Optuna search box: one distribution per tunable parameter, and values in and out of it.

What lives here: `_Dimension` (a parameter's distribution and box, with the
Skillhub hints that narrowed it), `_dimension` (trust box ∩ guardrails,
narrowed by hints; None when it is a single point), `_contains`,
`_param_value` / `_rounded` (a config value → an Optuna param and an asked
param → a config value, rounded to `_DECIMALS`), `_values` (a config's
tunable values) and `_freeze` (a config's identity for repeat checks).

Who calls it: the offline brain (`agents.offline_study` when it builds and
warm-starts a study, `agents.offline_candidates` when it turns each ask into a
candidate, `agents.offline_memory` for repeat checks).  Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from agents.brain import ParamSpec, ParamValue, parameter_specs
from agents.critic import CUT_PARAMS, CriticRules
from agents.diagnostics import guardrail_box
from agents.skill_hints import SkillHint, _narrow
from schemas.config import CascadeConfig
from schemas.guardrails import Guardrails

_DECIMALS: Final = 4


@dataclass(frozen=True, slots=True)
class _Dimension:
    spec: ParamSpec
    distribution: BaseDistribution
    low: float = 0.0
    high: float = 0.0
    hints: tuple[SkillHint, ...] = ()


def _dimension(
    spec: ParamSpec, rules: CriticRules, guardrails: Guardrails, hints: Sequence[SkillHint]
) -> _Dimension | None:
    if spec.kind == "choice":
        if not rules.trust.choices or len(spec.choices) < 2:
            return None
        return _Dimension(spec, CategoricalDistribution(spec.choices))
    low, high = rules.trust.box(spec)
    floor, ceiling = guardrail_box(spec.name, guardrails)
    low, high = max(low, floor), min(high, ceiling)
    current = float(spec.current)
    used = tuple(sorted(hints, key=lambda h: -h.confidence))
    for hint in used:
        low, high = _narrow(low, high, current, hint)
    if spec.kind == "int":
        low, high = float(math.ceil(low - 1e-9)), float(math.floor(high + 1e-9))
        if high <= low:
            return None
        return _Dimension(
            spec, IntDistribution(int(low), int(high), log=spec.name in CUT_PARAMS and low >= 1), low, high, used
        )
    scale = 10.0**_DECIMALS
    low, high = math.ceil(low * scale - 1e-6) / scale, math.floor(high * scale + 1e-6) / scale
    if high - low <= 1.0 / scale:
        return None
    return _Dimension(spec, FloatDistribution(low, high), low, high, used)


def _contains(dimension: _Dimension, value: ParamValue) -> bool:
    if isinstance(dimension.distribution, CategoricalDistribution):
        return value in dimension.distribution.choices
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return dimension.low - 1e-9 <= float(value) <= dimension.high + 1e-9


def _values(config: CascadeConfig) -> dict[str, ParamValue]:
    return {spec.name: spec.current for spec in parameter_specs(config)}


def _freeze(config: CascadeConfig) -> bytes:
    return msgspec.json.encode(config)


def _param_value(dim: _Dimension, value: ParamValue) -> Any:
    if isinstance(dim.distribution, CategoricalDistribution):
        return value
    if isinstance(dim.distribution, IntDistribution):
        return int(value)
    return float(value)


def _rounded(dim: _Dimension, raw: Any) -> ParamValue:
    if isinstance(dim.distribution, CategoricalDistribution):
        return str(raw)
    if isinstance(dim.distribution, IntDistribution):
        return int(raw)
    return min(max(round(float(raw), _DECIMALS), dim.low), dim.high)
