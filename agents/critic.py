"""The Critic's hard rules in code: what a candidate config must pass before any traffic sees it (pure, no I/O).

`critique(candidates, incumbent, rules, latency_model=..., failures=...)` judges
each candidate in order and returns one `Verdict` per candidate, in the same
order.  The rules, in the order they run (the first that rejects is the
verdict's `rule`; every reason names its rule and the figures):

1. `schema` — the candidate is vetted again (`agents.brain.vet_proposal`:
   known parameters, bounds, cross-field rules, the guardrails, the search
   space, the change count), its `config` must be exactly what its changes make
   of the incumbent, and its `proposal_id` must be the id of its effective
   changes.  A candidate that fails here is judged by nothing else.
2. `trust_region` — every change stays within a step of the incumbent
   (`TrustRegion`): weights (fusion and objective weights) move by at most
   30% of their value (at least 0.05 absolute, so a zero weight can move),
   unit-interval parameters (`mmr_lambda`, `freshness_boost`,
   `near_duplicate_threshold`, `exploration_rate`) by at most 0.15 absolute,
   cuts (`pre_rank.candidate_cut`, `rank.cut`) by at most a factor 2 either way,
   counts (`list_size`, `max_per_category`, ...) by at most max(2, 50%); a
   choice (`rank.combination`) may change unless `TrustRegion.choices` is off.
3. `latency_budget` — the predicted p99 of the candidate (`LatencyModel`, a
   linear model of p99 in candidate cut, rank cut and list size, fitted to
   observed (config, p99) pairs, conservative when there are none) must be
   within `CriticRules.latency_budget_ms`.
4. `diversity_floor` — the guaranteed number of distinct categories in a full
   list, ceil(list_size / max_per_category), must be at least
   `DiversityFloor.min_categories_per_list`, and `mmr_lambda` at most
   `DiversityFloor.max_mmr_lambda` (1 = pure relevance, no novelty at all).  A
   candidate that does not lower a figure below the incumbent's passes that
   figure, so an incumbent below the floor can still be improved step by step.
5. `failure_memory` — no repeat of a recorded failure (`FailureMemory`; the
   matching rule is in its docstring).
6. `near_duplicate` — a candidate closer than `near_duplicate_distance` to the
   incumbent or to an earlier candidate that passed rules 1–5 is dropped (the
   first is kept).  Distance is Euclidean over parameter moves measured in
   trust-region steps (`trust_coordinate`): 1.0 is one full trust step of one
   parameter; a different choice counts 1.0.
7. `ope_harm` — where an off-policy estimate of candidate minus incumbent
   exists (`agents.ope.difference`, keyed by `proposal_id`), a *reliable*
   estimate whose upper bound is below −`harm_threshold` rejects; an
   unreliable one rejects nothing and is recorded in the reasons.
8. `brain` — a brain's verdicts can only reject what the rules kept; a "keep"
   never overrides a rule (it is noted as ignored).

Rules 2–5 are all evaluated for a candidate that passes rule 1, so the
reasons list every hard rule it breaks (the first one is `rule`).

Callers: the runtime's Critic step (before allocation), the offline brain
(`TrustRegion.box` is its search box, `trust_coordinate` its distance), the
tests.  Errors in the rules' own configuration or the latency observations are
`CriticError` (a `ValueError`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias

import numpy as np

from agents.brain import (
    MAX_CHANGES_PER_PROPOSAL,
    CritiqueVerdict,
    ParamChange,
    ParamSpec,
    ParamValue,
    Proposal,
    llm_rejections,
    parameter_specs,
    proposal_id_for,
    vet_proposal,
)
from agents.ope import OffPolicyDifference
from schemas.config import CascadeConfig
from schemas.errors import SchemaError
from schemas.guardrails import Guardrails

RuleName: TypeAlias = Literal[
    "schema",
    "trust_region",
    "latency_budget",
    "diversity_floor",
    "failure_memory",
    "near_duplicate",
    "ope_harm",
    "brain",
]
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


# --------------------------------------------------------------------------- latency model

LatencySource: TypeAlias = Literal["prior", "scaled_prior", "fit"]


def latency_features(config: CascadeConfig, surface: str = "") -> tuple[float, float, float]:
    """(pre_rank.candidate_cut, rank.cut, re_rank.list_size) of the config served on `surface`."""
    resolved = config.for_surface(surface) if surface else config
    return float(resolved.pre_rank.candidate_cut), float(resolved.rank.cut), float(resolved.re_rank.list_size)


@dataclass(frozen=True, slots=True)
class LatencyModel:
    """p99 ≈ a + b·candidate_cut + c·rank.cut + d·list_size (ms), plus a safety `margin_ms`.

    - `LatencyModel()` is the conservative prior used when nothing was
      observed: 20 ms fixed, 0.02 ms per pre-rank candidate, 0.2 ms per ranked
      item, 1 ms per shown item (the default config: 72 ms).
    - `fit(observations)` with fewer than `min_points` usable points, or
      points that cannot separate the features, scales the prior to the
      observed latency: every coefficient times mean(observed / prior), so the
      predicted cost of more work stays proportional to the prior's (`source`
      "scaled_prior").
    - with enough points it fits ordinary least squares with non-negative
      slopes (more work never predicts less latency; the best-fitting subset
      of non-negative slopes is kept).  A feature that never varied in the
      observations keeps the prior's slope (no data says it is free).  The
      margin is z·s·sqrt(1 + k/n), an upper prediction bound with the
      leverage replaced by its average k/n (`source` "fit").

    Extrapolation is bounded by the trust region (cuts move at most ×2 per
    candidate), which is why a linear model is enough here.
    """

    intercept_ms: float = 20.0
    per_candidate_ms: float = 0.02
    per_rank_ms: float = 0.2
    per_list_item_ms: float = 1.0
    margin_ms: float = 0.0
    source: LatencySource = "prior"
    observations: int = 0
    residual_sd_ms: float = 0.0

    def __post_init__(self) -> None:
        values = (self.intercept_ms, self.per_candidate_ms, self.per_rank_ms, self.per_list_item_ms, self.margin_ms)
        if not all(math.isfinite(v) for v in values) or min(values[1:]) < 0.0:
            msg = f"LatencyModel: coefficients must be finite and slopes/margin >= 0, got {values}"
            raise CriticError(msg)

    def point(self, config: CascadeConfig, surface: str = "") -> float:
        """The fitted p99 of `config` (ms), without the margin; never below 0."""
        candidates, ranked, shown = latency_features(config, surface)
        value = (
            self.intercept_ms
            + self.per_candidate_ms * candidates
            + self.per_rank_ms * ranked
            + self.per_list_item_ms * shown
        )
        return max(value, 0.0)

    def predict(self, config: CascadeConfig, surface: str = "") -> float:
        """The conservative p99 of `config` (ms): the fitted value plus the margin.  The Critic compares this."""
        return self.point(config, surface) + self.margin_ms

    def describe(self) -> str:
        """The model as a formula with its source, for reasons and logs."""
        return (
            f"p99 = {self.intercept_ms:.3g} + {self.per_candidate_ms:.3g}·candidate_cut + "
            f"{self.per_rank_ms:.3g}·rank.cut + {self.per_list_item_ms:.3g}·list_size + {self.margin_ms:.3g} ms margin "
            f"({self.source}, n={self.observations})"
        )

    @classmethod
    def fit(
        cls,
        observations: Iterable[tuple[CascadeConfig, float]],
        *,
        prior: LatencyModel | None = None,
        surface: str = "",
        min_points: int = 6,
        z: float = 1.645,
    ) -> LatencyModel:
        """The model fitted to observed (config, p99 ms) pairs; see the class docstring for the fallbacks."""
        base = prior if prior is not None else cls()
        if min_points < 5 or not (z >= 0.0 and math.isfinite(z)):
            msg = f"LatencyModel.fit: min_points must be >= 5 and z finite >= 0 (got {min_points}, {z})"
            raise CriticError(msg)
        rows: list[tuple[float, float, float]] = []
        ys: list[float] = []
        for index, (config, p99) in enumerate(observations):
            if not (isinstance(p99, int | float) and math.isfinite(p99) and p99 > 0.0):
                msg = f"observations[{index}]: p99 must be a finite positive number of ms, got {p99!r}"
                raise CriticError(msg)
            rows.append(latency_features(config, surface))
            ys.append(float(p99))
        if not rows:
            return base
        x = np.asarray(rows, dtype=np.float64)
        y = np.asarray(ys, dtype=np.float64)
        fitted = _fit_nonnegative(x, y, base, min_points, z) if len(rows) >= min_points else None
        return fitted if fitted is not None else _scaled(base, x, y)


def _prior_slopes(model: LatencyModel) -> np.ndarray:
    return np.array([model.per_candidate_ms, model.per_rank_ms, model.per_list_item_ms], dtype=np.float64)


def _scaled(base: LatencyModel, x: np.ndarray, y: np.ndarray) -> LatencyModel:
    prior = base.intercept_ms + x @ _prior_slopes(base)
    factor = float(np.mean(y / np.maximum(prior, 1e-9)))
    return LatencyModel(
        intercept_ms=base.intercept_ms * factor,
        per_candidate_ms=base.per_candidate_ms * factor,
        per_rank_ms=base.per_rank_ms * factor,
        per_list_item_ms=base.per_list_item_ms * factor,
        margin_ms=base.margin_ms * factor,
        source="scaled_prior",
        observations=int(y.size),
    )


def _fit_nonnegative(
    x: np.ndarray, y: np.ndarray, base: LatencyModel, min_points: int, z: float
) -> LatencyModel | None:
    n = y.size
    prior = _prior_slopes(base)
    varying = [j for j in range(3) if float(np.ptp(x[:, j])) > 0.0]
    fixed = [j for j in range(3) if j not in varying]
    target = y - (x[:, fixed] @ prior[fixed] if fixed else 0.0)
    best: tuple[float, np.ndarray, float, int] | None = None  # (sse, slopes, intercept, k)
    for mask in range(1 << len(varying)):
        free = [varying[i] for i in range(len(varying)) if mask >> i & 1]
        design = np.column_stack([np.ones(n), *(x[:, j] for j in free)])
        if n < design.shape[1] + 2 or np.linalg.matrix_rank(design) < design.shape[1]:
            continue
        coef, *_ = np.linalg.lstsq(design, target, rcond=None)
        if (coef[1:] < 0.0).any():
            continue
        residual = target - design @ coef
        sse = float(residual @ residual)
        slopes = prior.copy()
        slopes[varying] = 0.0
        slopes[free] = coef[1:]
        if best is None or sse < best[0] - 1e-12:
            best = (sse, slopes, float(coef[0]), design.shape[1])
    if best is None or n < min_points:
        return None
    sse, slopes, intercept, k = best
    sd = math.sqrt(sse / max(n - k, 1))
    return LatencyModel(
        intercept_ms=intercept,
        per_candidate_ms=float(slopes[0]),
        per_rank_ms=float(slopes[1]),
        per_list_item_ms=float(slopes[2]),
        margin_ms=z * sd * math.sqrt(1.0 + k / n),
        source="fit",
        observations=n,
        residual_sd_ms=sd,
    )


# --------------------------------------------------------------------------- diversity floor


@dataclass(frozen=True, slots=True)
class DiversityFloor:
    """The least diversity a candidate's lists may have (see the module docstring, rule 4)."""

    min_categories_per_list: int = 3
    max_mmr_lambda: float = 0.95

    def __post_init__(self) -> None:
        if self.min_categories_per_list < 1 or not 0.0 <= self.max_mmr_lambda <= 1.0:
            msg = (
                "DiversityFloor: min_categories_per_list >= 1 and max_mmr_lambda in [0, 1] "
                f"(got {self.min_categories_per_list}, {self.max_mmr_lambda})"
            )
            raise CriticError(msg)


def guaranteed_categories(config: CascadeConfig, surface: str = "") -> int:
    """Distinct categories a full list must show: ceil(list_size / max_per_category)."""
    resolved = (config.for_surface(surface) if surface else config).re_rank
    return -(-resolved.list_size // resolved.max_per_category)


def _diversity_problems(
    config: CascadeConfig, incumbent: CascadeConfig, floor: DiversityFloor, surface: str
) -> list[str]:
    problems: list[str] = []
    cats, inc_cats = guaranteed_categories(config, surface), guaranteed_categories(incumbent, surface)
    if cats < floor.min_categories_per_list and cats < inc_cats:
        resolved = (config.for_surface(surface) if surface else config).re_rank
        problems.append(
            f"diversity_floor: a full list guarantees {cats} distinct categories "
            f"(ceil(list_size {resolved.list_size} / max_per_category {resolved.max_per_category})) "
            f"< floor {floor.min_categories_per_list} (incumbent {inc_cats})"
        )
    lam = (config.for_surface(surface) if surface else config).re_rank.mmr_lambda
    inc_lam = (incumbent.for_surface(surface) if surface else incumbent).re_rank.mmr_lambda
    if lam > floor.max_mmr_lambda and lam > inc_lam:
        problems.append(
            f"diversity_floor: re_rank.mmr_lambda {lam:g} > {floor.max_mmr_lambda:g} "
            f"(too little novelty; incumbent {inc_lam:g})"
        )
    return problems


# --------------------------------------------------------------------------- failure memory


@dataclass(frozen=True, slots=True)
class FailedMove:
    """One parameter move of a failed experiment: `name` went from `before` to `after`."""

    name: str
    before: ParamValue
    after: ParamValue


@dataclass(frozen=True, slots=True)
class FailureRecord:
    """A change-set that failed (lost, breached a guardrail, was rolled back), and why."""

    moves: tuple[FailedMove, ...]
    reason: str = ""
    experiment_id: str = ""

    @classmethod
    def from_changes(
        cls, incumbent: CascadeConfig, changes: Sequence[ParamChange], *, reason: str = "", experiment_id: str = ""
    ) -> FailureRecord:
        """The record of `changes` tried against `incumbent` (unknown paths are skipped)."""
        specs = {spec.name: spec for spec in parameter_specs(incumbent)}
        moves = tuple(
            FailedMove(change.name, specs[change.name].current, change.value)
            for change in changes
            if change.name in specs
        )
        return cls(moves=moves, reason=reason, experiment_id=experiment_id)


@dataclass(frozen=True, slots=True)
class FailureMemory:
    """Recorded failures, and the rule that says when a candidate repeats one.

    A candidate repeats a record when, for *every* move of the record, the
    candidate changes the same parameter and:

    - numeric: in the same direction as the failure, measured from the
      current incumbent (sign(candidate − incumbent) = sign(after − before)),
      and reaches at least (1 − `tolerance`) of the failed step, measured from
      the failure's start: d·(candidate − before) >= (1 − tolerance)·|after − before|
      with d the failure's direction.  With the default tolerance 0.5, a
      failed mmr_lambda 0.8 → 0.6 blocks 0.8 → 0.65 and 0.8 → 0.5, not 0.8 → 0.75;
    - choice: to the same value the failure chose.

    A candidate that moves more parameters than the record still repeats it
    (the failed change-set is contained in it).  Records with no move, or
    with a numeric move of zero, match nothing.
    """

    records: tuple[FailureRecord, ...] = ()
    tolerance: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.tolerance < 1.0:
            msg = f"FailureMemory.tolerance: must be in [0, 1), got {self.tolerance!r}"
            raise CriticError(msg)

    def add(self, record: FailureRecord) -> FailureMemory:
        """A memory with `record` appended."""
        return FailureMemory(records=(*self.records, record), tolerance=self.tolerance)

    def match(self, incumbent: CascadeConfig, changes: Sequence[ParamChange]) -> FailureRecord | None:
        """The first record the candidate `changes` (against `incumbent`) repeats, if any."""
        current = {spec.name: spec.current for spec in parameter_specs(incumbent)}
        proposed = {change.name: change.value for change in changes}
        for record in self.records:
            if record.moves and all(self._repeats(move, current, proposed) for move in record.moves):
                return record
        return None

    def _repeats(self, move: FailedMove, current: Mapping[str, ParamValue], proposed: Mapping[str, ParamValue]) -> bool:
        if move.name not in proposed or move.name not in current:
            return False
        new, now = proposed[move.name], current[move.name]
        if new == now:
            return False
        numbers = (move.before, move.after, new, now)
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in numbers):
            return isinstance(move.after, str) and new == move.after
        before, after, value, base = (float(v) for v in numbers)
        step = after - before
        if step == 0.0:
            return False
        direction = math.copysign(1.0, step)
        same_way = math.copysign(1.0, value - base) == direction
        return same_way and direction * (value - before) >= (1.0 - self.tolerance) * abs(step) - _EPS


def _failure_text(record: FailureRecord) -> str:
    moves = ", ".join(f"{m.name} {_fmt(m.before)} -> {_fmt(m.after)}" for m in record.moves)
    where = f" in {record.experiment_id}" if record.experiment_id else ""
    why = f" ({record.reason})" if record.reason else ""
    return f"failure_memory: repeats a recorded failure{where}: {moves}{why}"


# --------------------------------------------------------------------------- rules and verdicts


@dataclass(frozen=True, slots=True)
class CriticRules:
    """The Critic's configuration (see the module docstring for what each part does).

    `allowed` (when non-empty) and `max_changes` are the experiment's search
    space and candidate size, checked again by rule 1; `harm_threshold` is the
    tolerated loss in the OPE reward's units (clicks per impression, say).
    """

    guardrails: Guardrails = field(default_factory=Guardrails)
    trust: TrustRegion = field(default_factory=TrustRegion)
    latency_budget_ms: float = 250.0
    diversity: DiversityFloor = field(default_factory=DiversityFloor)
    near_duplicate_distance: float = 0.25
    harm_threshold: float = 0.0
    allowed: tuple[str, ...] = ()
    max_changes: int = MAX_CHANGES_PER_PROPOSAL

    def __post_init__(self) -> None:
        checks = (
            ("latency_budget_ms", self.latency_budget_ms > 0.0 and math.isfinite(self.latency_budget_ms)),
            ("near_duplicate_distance", 0.0 <= self.near_duplicate_distance < math.inf),
            ("harm_threshold", 0.0 <= self.harm_threshold < math.inf),
            ("max_changes", 1 <= self.max_changes <= MAX_CHANGES_PER_PROPOSAL),
        )
        for name, ok in checks:
            if not ok:
                msg = f"CriticRules.{name}: out of range: {getattr(self, name)!r}"
                raise CriticError(msg)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The Critic's judgement of one candidate.

    `rule` is the first rule that rejected it (None when kept); `reasons` name
    every rule that objected, and for a kept candidate the figures it passed
    with.  `predicted_p99_ms` is None only when the candidate failed `schema`;
    `harm` is the off-policy estimate used (or recorded as unreliable), if any.
    """

    proposal_id: str
    kept: bool
    reasons: tuple[str, ...]
    rule: RuleName | None
    predicted_p99_ms: float | None
    harm: OffPolicyDifference | None


@dataclass(slots=True)
class _Judgement:
    proposal: Proposal
    reasons: list[str]
    rule: RuleName | None = None
    predicted: float | None = None
    harm: OffPolicyDifference | None = None
    changes: tuple[ParamChange, ...] = ()

    def reject(self, rule: RuleName, reason: str) -> None:
        if self.rule is None:
            self.rule = rule
        self.reasons.append(reason)

    def verdict(self) -> Verdict:
        return Verdict(
            proposal_id=self.proposal.proposal_id,
            kept=self.rule is None,
            reasons=tuple(self.reasons),
            rule=self.rule,
            predicted_p99_ms=self.predicted,
            harm=self.harm,
        )


def candidate_distance(
    first: CascadeConfig, second: CascadeConfig, incumbent_specs: Sequence[ParamSpec], trust: TrustRegion
) -> float:
    """Euclidean distance between two configs in trust steps around the incumbent (see rule 6)."""
    one = {spec.name: spec.current for spec in parameter_specs(first)}
    two = {spec.name: spec.current for spec in parameter_specs(second)}
    total = 0.0
    for spec in incumbent_specs:
        a, b = one.get(spec.name, spec.current), two.get(spec.name, spec.current)
        if a == b:
            continue
        if spec.kind == "choice":
            total += 1.0
            continue
        gap = trust_coordinate(spec, a, trust) - trust_coordinate(spec, b, trust)
        total += gap * gap
    return math.sqrt(total)


def _schema(judgement: _Judgement, incumbent: CascadeConfig, rules: CriticRules) -> bool:
    proposal = judgement.proposal
    try:
        changes, config = vet_proposal(
            incumbent,
            proposal.changes,
            guardrails=rules.guardrails,
            allowed=rules.allowed,
            max_changes=rules.max_changes,
        )
    except SchemaError as err:
        judgement.reject("schema", f"schema: {err.field}: {err.rule}")
        return False
    if config != proposal.config:
        judgement.reject("schema", "schema: the candidate's config is not what its changes make of the incumbent")
        return False
    expected = proposal_id_for(changes)
    if proposal.proposal_id != expected:
        judgement.reject("schema", f"schema: proposal_id {proposal.proposal_id!r} is not its changes' id {expected!r}")
        return False
    judgement.changes = changes
    return True


def _hard_rules(
    judgement: _Judgement,
    incumbent: CascadeConfig,
    specs: Mapping[str, ParamSpec],
    rules: CriticRules,
    latency_model: LatencyModel,
    failures: FailureMemory,
    surface: str,
) -> None:
    # trust region
    widest = (0.0, "")
    for change in judgement.changes:
        spec = specs[change.name]
        ok, text = _within_trust(spec, change.value, rules.trust)
        if not ok:
            judgement.reject("trust_region", text)
        elif spec.kind != "choice":
            used = abs(trust_coordinate(spec, change.value, rules.trust))
            widest = max(widest, (used, change.name))
    # latency budget
    config = judgement.proposal.config
    predicted = latency_model.predict(config, surface)
    judgement.predicted = predicted
    candidates, ranked, shown = latency_features(config, surface)
    latency_text = (
        f"predicted p99 {predicted:.1f} ms (candidate_cut {candidates:g}, rank.cut {ranked:g}, list_size {shown:g}; "
        f"{latency_model.describe()})"
    )
    if predicted > rules.latency_budget_ms:
        judgement.reject("latency_budget", f"latency_budget: {latency_text} > budget {rules.latency_budget_ms:g} ms")
    # diversity floor
    for problem in _diversity_problems(config, incumbent, rules.diversity, surface):
        judgement.reject("diversity_floor", problem)
    # failure memory
    record = failures.match(incumbent, judgement.changes)
    if record is not None:
        judgement.reject("failure_memory", _failure_text(record))
    if judgement.rule is None:
        if widest[1]:
            judgement.reasons.append(f"trust_region: largest move {widest[0]:.2f} trust steps ({widest[1]})")
        judgement.reasons.append(f"latency_budget: {latency_text} <= budget {rules.latency_budget_ms:g} ms")
        judgement.reasons.append(
            f"diversity_floor: guarantees {guaranteed_categories(config, surface)} categories per list "
            f"(floor {rules.diversity.min_categories_per_list})"
        )


def _ope(judgement: _Judgement, estimate: OffPolicyDifference, harm_threshold: float) -> None:
    judgement.harm = estimate
    figures = (
        f"{estimate.estimator} lift {estimate.value:+.4g} "
        f"[{estimate.lower:+.4g}, {estimate.upper:+.4g}] at {estimate.level:.0%}, n={estimate.rows}"
    )
    if not estimate.reliable:
        judgement.reasons.append(f"ope_harm: not evidence either way, {figures}; {estimate.reason}")
    elif estimate.upper < -harm_threshold:
        judgement.reject("ope_harm", f"ope_harm: {figures}: upper bound below -{harm_threshold:g} (estimated harm)")
    else:
        judgement.reasons.append(f"ope_harm: no harm shown, {figures} (threshold -{harm_threshold:g})")


def critique(
    candidates: Sequence[Proposal],
    incumbent: CascadeConfig,
    rules: CriticRules,
    *,
    latency_model: LatencyModel,
    failures: FailureMemory,
    ope_estimates: Mapping[str, OffPolicyDifference] | None = None,
    brain_verdicts: Iterable[CritiqueVerdict] | None = None,
    surface: str = "",
) -> list[Verdict]:
    """One `Verdict` per candidate, in order (see the module docstring for the rules and their order).

    `surface` selects the served config (overrides) for latency and diversity.
    `brain_verdicts` can only reject: a "keep" for a rule-rejected candidate
    is noted as ignored, never honoured.
    """
    specs = {spec.name: spec for spec in parameter_specs(incumbent)}
    spec_list = tuple(specs.values())
    judgements = [_Judgement(proposal=p, reasons=[]) for p in candidates]
    # rules 1-5, per candidate
    for judgement in judgements:
        if _schema(judgement, incumbent, rules):
            _hard_rules(judgement, incumbent, specs, rules, latency_model, failures, surface)
    # rule 6: near-duplicates of the incumbent or of an earlier survivor
    survivors: list[_Judgement] = []
    for judgement in judgements:
        if judgement.rule is not None:
            continue
        config = judgement.proposal.config
        nearest = candidate_distance(config, incumbent, spec_list, rules.trust)
        if nearest < rules.near_duplicate_distance:
            judgement.reject(
                "near_duplicate",
                f"near_duplicate: {nearest:.3f} trust steps from the incumbent < {rules.near_duplicate_distance:g}",
            )
            continue
        for earlier in survivors:
            distance = candidate_distance(config, earlier.proposal.config, spec_list, rules.trust)
            if distance < rules.near_duplicate_distance:
                judgement.reject(
                    "near_duplicate",
                    f"near_duplicate: {distance:.3f} trust steps from {earlier.proposal.proposal_id} "
                    f"< {rules.near_duplicate_distance:g} (the first is kept)",
                )
                break
        else:
            survivors.append(judgement)
    # rule 7: off-policy harm
    estimates = ope_estimates or {}
    for judgement in survivors:
        estimate = estimates.get(judgement.proposal.proposal_id)
        if estimate is not None:
            _ope(judgement, estimate, rules.harm_threshold)
    # rule 8: a brain may only reject more
    verdicts = list(brain_verdicts or ())
    rejected = llm_rejections(verdicts)
    keeps = {v.proposal_id for v in verdicts if v.verdict == "keep"}
    for judgement in judgements:
        pid = judgement.proposal.proposal_id
        if judgement.rule is None and pid in rejected:
            judgement.reject("brain", f"brain: reject: {rejected[pid]}")
        elif judgement.rule is not None and judgement.rule != "brain" and pid in keeps:
            judgement.reasons.append(f"brain: keep ignored (rejected by rule {judgement.rule})")
    return [judgement.verdict() for judgement in judgements]
