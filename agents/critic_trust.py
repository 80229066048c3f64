"""The Critic's trust region: how far one candidate may move each parameter from the incumbent (pure, no I/O).

Lives here: `CriticError`, the parameter classes (`param_class`, `CUT_PARAMS`),
`TrustRegion` (its per-class steps and `box`), `trust_coordinate` (a move in
trust steps) and the small formatting helpers the Critic's reasons share.
Callers: `agents.critic` (rule 2 and the near-duplicate distance), the offline
brain (`TrustRegion.box` is its search box, `trust_coordinate` its distance),
`agents.diagnostics`; everything is re-exported by `agents.critic`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from agents.brain import ParamSpec, ParamValue

ParamClass: TypeAlias = Literal["weight", "unit", "cut", "count", "choice"]

CUT_PARAMS: Final = frozenset({"pre_rank.candidate_cut", "rank.cut"})
_EPS: Final = 1e-9  # relative slack on trust-region edges (a brain that samples the edge exactly must pass)


class CriticError(ValueError):
    """A Critic rule or the latency model's input is misconfigured; the message names the field and the rule."""


# --------------------------------------------------------------------------- trust region


def param_class(spec: ParamSpec) -> ParamClass:
    """How the trust region treats a parameter: a choice, a cut, a count (other ints), unit-interval or weight."""
    if spec.kind == "choice":
        return "choice"
    if spec.name in CUT_PARAMS:
        return "cut"
    if spec.kind == "int":
        return "count"
    if spec.lower is not None and spec.upper is not None and spec.upper - spec.lower <= 1.0:
        return "unit"
    return "weight"


@dataclass(frozen=True, slots=True)
class TrustRegion:
    """How far one candidate may move each parameter from the incumbent (see the module docstring).

    - weights: |new − old| <= max(`weight_rel`·|old|, `weight_min_step`);
    - unit-interval parameters: |new − old| <= `unit_step`;
    - cuts: old / `cut_factor` <= new <= old · `cut_factor`;
    - counts: |new − old| <= max(`count_min_step`, floor(`count_rel`·|old|));
    - choices: any listed choice when `choices` is True, none otherwise.
    """

    weight_rel: float = 0.30
    weight_min_step: float = 0.05
    unit_step: float = 0.15
    cut_factor: float = 2.0
    count_rel: float = 0.5
    count_min_step: int = 2
    choices: bool = True

    def __post_init__(self) -> None:
        checks = (
            ("weight_rel", self.weight_rel > 0.0 and math.isfinite(self.weight_rel)),
            ("weight_min_step", self.weight_min_step > 0.0 and math.isfinite(self.weight_min_step)),
            ("unit_step", 0.0 < self.unit_step <= 1.0),
            ("cut_factor", self.cut_factor > 1.0 and math.isfinite(self.cut_factor)),
            ("count_rel", self.count_rel >= 0.0 and math.isfinite(self.count_rel)),
            ("count_min_step", self.count_min_step >= 1),
        )
        for name, ok in checks:
            if not ok:
                msg = (
                    f"TrustRegion.{name}: out of range ({getattr(self, name)!r}): steps must be positive and "
                    "finite, unit_step in (0, 1], cut_factor > 1"
                )
                raise CriticError(msg)

    def half_width(self, spec: ParamSpec) -> float:
        """One trust step of a numeric parameter in its own units (for cuts: ln(cut_factor), a log step)."""
        current = float(spec.current)
        kind = param_class(spec)
        if kind == "weight":
            return max(self.weight_rel * abs(current), self.weight_min_step)
        if kind == "unit":
            return self.unit_step
        if kind == "cut":
            return math.log(self.cut_factor)
        if kind == "count":
            return float(max(self.count_min_step, math.floor(self.count_rel * abs(current))))
        msg = f"{spec.name}: a choice has no numeric trust step"
        raise CriticError(msg)

    def box(self, spec: ParamSpec) -> tuple[float, float]:
        """The interval a numeric parameter may take in one candidate, clipped to its bounds (ints: integral ends)."""
        current = float(spec.current)
        kind = param_class(spec)
        step = self.half_width(spec)
        if kind == "cut":
            low = float(math.ceil(current / self.cut_factor - _EPS))
            high = float(math.floor(current * self.cut_factor + _EPS))
        else:
            low, high = current - step, current + step
        if spec.lower is not None:
            low = max(low, _inside(spec.lower, spec.open_lower, spec.kind, up=True))
        if spec.upper is not None:
            high = min(high, _inside(spec.upper, spec.open_upper, spec.kind, up=False))
        if spec.kind == "int":
            low, high = float(math.ceil(low - _EPS)), float(math.floor(high + _EPS))
        return low, max(low, high)


def _inside(bound: float, is_open: bool, kind: str, *, up: bool) -> float:
    if not is_open:
        return bound
    if kind == "int":
        return math.floor(bound) + 1.0 if up else math.ceil(bound) - 1.0
    return math.nextafter(bound, math.inf if up else -math.inf)


def trust_coordinate(spec: ParamSpec, value: ParamValue, trust: TrustRegion) -> float:
    """The signed move from the incumbent (`spec.current`) to `value`, in trust steps (±1 = the trust edge).

    Cuts move on a log scale (ln(new/old) / ln(cut_factor)).  Choices: 0 when
    unchanged, 1 when changed.
    """
    if spec.kind == "choice":
        return 0.0 if value == spec.current else 1.0
    if not isinstance(value, int | float) or isinstance(value, bool):
        return math.inf
    current, new = float(spec.current), float(value)
    if param_class(spec) == "cut":
        if current <= 0.0 or new <= 0.0:
            return math.inf
        return math.log(new / current) / trust.half_width(spec)
    return (new - current) / trust.half_width(spec)


def _within_trust(spec: ParamSpec, value: ParamValue, trust: TrustRegion) -> tuple[bool, str]:
    if spec.kind == "choice":
        if trust.choices or value == spec.current:
            return True, ""
        return False, f"trust_region: {spec.name} {spec.current!r} -> {value!r}: choice changes are off"
    low, high = trust.box(spec)
    number = float(value)
    slack = _EPS * max(1.0, abs(low), abs(high))
    if low - slack <= number <= high + slack:
        return True, ""
    coordinate = trust_coordinate(spec, value, trust)
    return False, (
        f"trust_region: {spec.name} {_fmt(spec.current)} -> {_fmt(value)} is {abs(coordinate):.2f} trust steps "
        f"({param_class(spec)}: {_trust_text(spec, trust)}); allowed [{_fmt(low)}, {_fmt(high)}]"
    )


def _trust_text(spec: ParamSpec, trust: TrustRegion) -> str:
    kind = param_class(spec)
    if kind == "weight":
        return f"<= {trust.weight_rel:.0%} relative, at least {trust.weight_min_step:g} absolute"
    if kind == "unit":
        return f"<= {trust.unit_step:g} absolute"
    if kind == "cut":
        return f"within x{trust.cut_factor:g} either way"
    return f"<= max({trust.count_min_step}, {trust.count_rel:.0%}) absolute"


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.6g}"
    return str(value)
