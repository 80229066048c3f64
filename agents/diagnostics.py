"""Diagnostic readings of served lists, and the rules that turn them into directed candidates (pure).

The metric windows carry more than the objective: per arm, how crowded the
lists are with near-duplicates, how many categories a list spans, how much of
it is fresh or long-tail.  `diagnostic_values` turns an arm's totals into
four ratios (the Actor loop sends them to the brain as `MetricReading`s):

- `near_duplicate_share` = near_duplicates / impressions — the share of shown
  items that repeat a style already in their list (colourways, sizes);
- `categories_per_list` = distinct_categories / requests;
- `fresh_share` = fresh / impressions;
- `long_tail_share` = long_tail / impressions.

`diagnostic_moves` reads the incumbent's diagnostics and applies explicit
rules (`DiagnosticRules`), in this order:

1. *crowded*: near_duplicate_share ≥ `crowded_share` → lower
   `re_rank.near_duplicate_threshold` by one trust step (a lower threshold
   collapses more near-duplicates); only when `crowded_lowers_mmr` (off by
   default) also lower `re_rank.mmr_lambda` by one trust step (more novelty in
   the re-rank).  One diagnosed cause, one lever: the pair makes the read
   unattributable, and on the oracle landscapes of the shipped worlds it was
   worth less than the threshold alone (apparel_core seed 0 +2.1% against
   +3.2%, apparel_thin seed 0 +7.0% against +8.8%);
2. *narrow*: categories_per_list / list_size ≤ `narrow_share` → lower
   `re_rank.max_per_category` by one count step.

A step is the Critic's trust-region half-width (`TrustRegion.half_width`),
clipped to the trust box, the parameter's bounds and the guardrails that bound
it directly, and rounded towards the incumbent (so it stays inside the box).
Only parameters in the allow-list (all tunables when it is empty) move; a rule
whose parameters cannot move gives no move.  The rules never raise a value:
they only act on evidence of a known failure mode, and leave exploring to the
sampler.  Missing or non-finite readings fire no rule.  The caller
(`agents.offline_brain.OfflineBrain`) vets each move like any candidate and
never repeats one already tried.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from agents.brain import (
    MAX_HYPOTHESIS_CHARS,
    MAX_RATIONALE_CHARS,
    MetricReading,
    ParamChange,
    ParamSpec,
    ParamValue,
    Proposal,
    ProposalContext,
    clip_text,
    parameter_specs,
    proposal_id_for,
    vet_in_context,
)
from agents.critic import TrustRegion, param_class
from schemas.config import CascadeConfig
from schemas.errors import SchemaError
from schemas.guardrails import Guardrails
from schemas.metrics import ArmTotals

#: Diagnostic reading name → (numerator field, denominator field) of `schemas.metrics.BUCKET_FIELDS`.
DIAGNOSTICS: Final[Mapping[str, tuple[str, str]]] = {
    "near_duplicate_share": ("near_duplicates", "impressions"),
    "categories_per_list": ("distinct_categories", "requests"),
    "fresh_share": ("fresh", "impressions"),
    "long_tail_share": ("long_tail", "impressions"),
}
THRESHOLD: Final = "re_rank.near_duplicate_threshold"
MMR: Final = "re_rank.mmr_lambda"
PER_CATEGORY: Final = "re_rank.max_per_category"
_DECIMALS: Final = 4
_EPS: Final = 1e-9


def diagnostic_values(totals: ArmTotals) -> dict[str, float]:
    """The diagnostic ratios of one arm's totals, NaN ones (empty denominators) left out.

    Called by `agents.loop.AgentLoop.metrics` to add diagnostic readings to the brain's context.
    """
    out: dict[str, float] = {}
    for name, (numerator, denominator) in DIAGNOSTICS.items():
        value = totals.ratio(numerator, denominator)
        if math.isfinite(value):
            out[name] = value
    return out


@dataclass(frozen=True, slots=True)
class DiagnosticRules:
    """When the incumbent's diagnostics call for a directed candidate (see the module docstring).

    - `crowded_share` (default 0.10): one shown item in ten repeating a style
      already in its list is clearly visible to a user; healthy de-duplicated
      lists sit near 0.
    - `narrow_share` (default 0.25): distinct categories per list at most a
      quarter of the list size, i.e. four or more items per category on average.
    - `crowded_lowers_mmr` (default off): the crowded rule also lowers `mmr_lambda` one step.
    - `max_candidates`: at most this many diagnostic candidates per proposal call
      (0 disables them).
    """

    crowded_share: float = 0.10
    narrow_share: float = 0.25
    crowded_lowers_mmr: bool = False
    max_candidates: int = 1

    def __post_init__(self) -> None:
        checks = (
            ("crowded_share", 0.0 < self.crowded_share <= 1.0),
            ("narrow_share", 0.0 < self.narrow_share <= 1.0),
            ("max_candidates", self.max_candidates >= 0),
        )
        for name, ok in checks:
            if not ok:
                msg = (
                    f"DiagnosticRules.{name}: out of range ({getattr(self, name)!r}); "
                    "hint: shares lie in (0, 1], max_candidates >= 0"
                )
                raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class DiagnosticMove:
    """One rule that fired: which diagnostic, its value and threshold, and the changes it asks for."""

    rule: str
    diagnostic: str
    value: float
    threshold: float
    changes: tuple[ParamChange, ...]

    def describe(self) -> str:
        """E.g. `near_duplicate_share 0.31 >= 0.10` (quoted in titles and rationales)."""
        op = ">=" if self.rule == "crowded" else "<="
        return f"{self.diagnostic} {self.value:.3g} {op} {self.threshold:.3g}"


def guardrail_box(name: str, guardrails: Guardrails) -> tuple[float, float]:
    """The interval the guardrails allow one parameter directly (±inf where they say nothing).

    Used by the offline brain's search box and by the diagnostic steps.
    """
    limits: dict[str, tuple[float, float]] = {
        "pre_rank.candidate_cut": (-math.inf, guardrails.max_candidate_cut),
        "rank.cut": (-math.inf, guardrails.max_rank_cut),
        "re_rank.max_per_category": (-math.inf, guardrails.max_per_category_ceiling),
        "re_rank.exploration_rate": (-math.inf, guardrails.max_exploration_rate),
        "re_rank.mmr_lambda": (guardrails.min_mmr_lambda, math.inf),
        "re_rank.list_size": (guardrails.min_list_size, math.inf),
    }
    return limits.get(name, (-math.inf, math.inf))


def step_toward(
    spec: ParamSpec, trust: TrustRegion, guardrails: Guardrails, sign: int, fraction: float = 1.0
) -> ParamValue | None:
    """`spec`'s value `fraction` of a trust step up (`sign` +1) or down (−1); None if it cannot move.

    Clipped to the trust box, the parameter's bounds and the guardrails that
    bound it directly, rounded towards the incumbent (so it stays inside the
    box); cuts step on their log scale.  A two-valued choice steps to its
    second (+1) or first (−1) value when the trust region allows choice
    changes.  Called by the diagnostic rules and the offline brain's ascent.
    """
    if spec.kind == "choice" or isinstance(spec.current, str):
        if not trust.choices or len(spec.choices) != 2:
            return None
        choice = spec.choices[1] if sign > 0 else spec.choices[0]
        return None if choice == spec.current else choice
    current = float(spec.current)
    low, high = trust.box(spec)
    floor, ceiling = guardrail_box(spec.name, guardrails)
    if param_class(spec) == "cut":
        target = current * trust.cut_factor ** (sign * fraction)
    else:
        target = current + sign * fraction * trust.half_width(spec)
    target = min(max(target, low, floor), high, ceiling)
    scale = 1.0 if spec.kind == "int" else 10.0**_DECIMALS
    rounded = math.ceil(target * scale - _EPS) if sign < 0 else math.floor(target * scale + _EPS)
    value: float | int = int(rounded) if spec.kind == "int" else rounded / scale
    if (sign < 0 and value >= current - _EPS) or (sign > 0 and value <= current + _EPS):
        return None
    return value


def step_down(spec: ParamSpec, trust: TrustRegion, guardrails: Guardrails) -> float | int | None:
    """`spec`'s value one trust step down (`step_toward` with sign −1; None for choices and when it cannot move)."""
    value = step_toward(spec, trust, guardrails, -1)
    return None if isinstance(value, str) else value


def _change(spec: ParamSpec, value: float | int, move: str, verb: str, objective: str) -> ParamChange:
    old = float(spec.current)
    relative = f" ({(float(value) - old) / abs(old):+.0%})" if old else ""
    return ParamChange(
        name=spec.name,
        value=value,
        hypothesis=clip_text(
            f"lower {spec.name} {spec.current:g} -> {value:g}{relative}: {verb}; "
            f"should improve {objective} by showing more distinct items per list",
            MAX_HYPOTHESIS_CHARS,
        ),
        rationale=clip_text(
            f"diagnostic rule on the incumbent: {move}; one trust step down, clipped to bounds and guardrails",
            MAX_RATIONALE_CHARS,
        ),
    )


def diagnostic_moves(
    incumbent: CascadeConfig,
    readings: Mapping[str, float],
    *,
    rules: DiagnosticRules,
    trust: TrustRegion,
    guardrails: Guardrails,
    allowed: Sequence[str] = (),
    objective: str = "ctr",
) -> list[DiagnosticMove]:
    """Every rule that fires on the incumbent's `readings`, in rule order (see the module docstring).

    Called by `agents.offline_candidates.diagnostic_candidates` (for
    `OfflineBrain.propose_sync`) before the sampler asks; the brain vets,
    de-duplicates and keeps at most `rules.max_candidates` of them.
    """
    specs = {spec.name: spec for spec in parameter_specs(incumbent)}
    allow = frozenset(allowed) or frozenset(specs)
    moves: list[DiagnosticMove] = []

    def stepped(name: str) -> tuple[ParamSpec, float | int] | None:
        spec = specs.get(name)
        if spec is None or name not in allow:
            return None
        value = step_down(spec, trust, guardrails)
        return None if value is None else (spec, value)

    share = readings.get("near_duplicate_share")
    if share is not None and math.isfinite(share) and share >= rules.crowded_share:
        move = DiagnosticMove("crowded", "near_duplicate_share", share, rules.crowded_share, ())
        text = f"{move.describe()}: lists are crowded with near-duplicates (e.g. colourways of one style)"
        changes = []
        if (found := stepped(THRESHOLD)) is not None:
            changes.append(_change(*found, move.describe(), f"{text}; collapse more of them", objective))
        if rules.crowded_lowers_mmr and (found := stepped(MMR)) is not None:
            changes.append(_change(*found, move.describe(), f"{text}; favour novelty in the re-rank", objective))
        if changes:
            moves.append(DiagnosticMove(move.rule, move.diagnostic, share, move.threshold, tuple(changes)))

    per_list = readings.get("categories_per_list")
    list_size = incumbent.re_rank.list_size
    if per_list is not None and math.isfinite(per_list) and list_size > 0:
        ratio = per_list / list_size
        if ratio <= rules.narrow_share and (found := stepped(PER_CATEGORY)) is not None:
            move = DiagnosticMove("narrow", "categories_per_list / list_size", ratio, rules.narrow_share, ())
            text = f"{move.describe()}: lists span few categories"
            change = _change(*found, move.describe(), f"{text}; cap items per category lower", objective)
            moves.append(DiagnosticMove(move.rule, move.diagnostic, ratio, move.threshold, (change,)))
    return moves


def incumbent_diagnostics(
    metrics: Iterable[MetricReading], *, control_arms: Iterable[str], cohort: str = ""
) -> dict[str, float]:
    """The incumbent's diagnostic readings: control arms, one cohort, finite values, the last one winning.

    Called by the offline brain before `diagnostic_moves`.
    """
    controls = frozenset(control_arms)
    found: dict[str, float] = {}
    for reading in metrics:
        if (
            reading.cohort == cohort
            and reading.arm in controls
            and reading.name in DIAGNOSTICS
            and math.isfinite(reading.value)
        ):
            found[reading.name] = float(reading.value)
    return found


def diagnostic_proposals(
    context: ProposalContext,
    moves: Sequence[DiagnosticMove],
    *,
    wanted: int,
    repeat_reason: Callable[[CascadeConfig, Sequence[Proposal]], str],
    title: Callable[[DiagnosticMove, Sequence[ParamChange]], str],
) -> tuple[list[Proposal], tuple[str, ...]]:
    """Up to `wanted` proposals from `moves` (in order), and a note per move tried.

    Each move is trimmed to `context.max_changes` (its first changes are its
    main ones) and vetted with `vet_proposal` (allow-list, guardrails,
    cross-field rules); `repeat_reason(config, earlier)` (the brain's
    tried-config and near-duplicate check) returns why a config must not be
    proposed, "" when it may.  Called by `agents.offline_candidates.diagnostic_candidates`.
    """
    out: list[Proposal] = []
    notes: list[str] = []
    for move in moves:
        if len(out) >= wanted:
            break
        try:
            effective, config = vet_in_context(context, move.changes[: context.max_changes])
        except SchemaError as err:
            notes.append(f"{move.rule} ({move.describe()}): refused, {err.field}: {err.rule}")
            continue
        reason = repeat_reason(config, out)
        if reason:
            notes.append(f"{move.rule} ({move.describe()}): not proposed, {reason}")
            continue
        pid = proposal_id_for(effective)
        out.append(Proposal(proposal_id=pid, title=title(move, effective), changes=effective, config=config))
        notes.append(f"{move.rule} ({move.describe()}): proposed {pid}")
    return out, tuple(notes)
