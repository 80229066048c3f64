"""Skills: the Skillhub's entries and how evidence strengthens, weakens or retires them (pure, no I/O).

A `Skill` is a claim about one surface and cohort: "moving `parameter` in
`direction` (within `pattern`'s range) is good here".  It is identified by
(stage, surface, cohort, parameter, direction[, choice]) — `skill_id_for`
hashes exactly that, so the same claim always has the same id in every
process — and carries its `Evidence` (experiment, arm, metric, effect,
interval, significant), a `confidence` in [0, 1], a `status` ("active",
"weakened", "retired") and when it was last validated.

Who calls what:

- the Skill agent, after each decision, calls `update_skills(skills,
  insights, now_ms)` with the Skillhub's skills and the Insight agent's
  `Insight`s (`agents.insight.experiment_insights`), then stores
  `changed_skills(...)` through a `SkillStore` (`agents.skillhub`) and
  publishes the `SkillChange`s to `rectune.decisions`;
- the Actor calls `search_space(...)` and `search_parameters(...)` to tighten
  its search (`ProposalContext.parameters`), and `skill_notes(...)` for the
  `SkillNote`s its brain is shown; the Critic shows the same notes;
- `rectune skills` prints what the store holds (`describe`).

The update rule (`SkillPolicy` holds the knobs).  One experiment arm gives a
skill at most one piece of evidence (deduplicated by experiment and arm, so
replaying insights after a restart changes nothing).  Its verdict is
"contradicts" when any guardrail metric got significantly worse, otherwise
the objective metric's verdict ("supports" when significantly better,
"contradicts" when significantly worse, "neutral" when not significant).
Confidence is the mean of a Beta posterior on "the claim holds": each
evidence adds w·p to `support` and w·(1−p) to `against`, where p = Φ(z) is
the probability the deciding metric moved the good way (z from its effect
and interval on the log scale) and w is 1 for significant evidence, 0.2 for
non-significant (it nudges little), divided by the number of parameters the
arm changed together (shared attribution).  Status: significant support
resets the contradiction count, turns "weakened" back to "active" once
confidence ≥ `active_confidence`, and revives a "retired" skill as
"weakened"; significant contradiction weakens an active skill, and the
`retire_strikes`-th contradiction in a row retires it.  Skills are created
only from significant support; a significant failure with no skill to
contradict is the Critic's business (its record of failures), not a skill.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

import msgspec

from agents.brain import MAX_PATTERN_CHARS, ParamValue, SkillNote, clip_text, parameter_specs
from agents.insight import (
    ALL_COHORTS,
    STAGES,
    Direction,
    EffectVerdict,
    Insight,
    Stage,
    metric_def,
    stage_of,
)
from agents.stats.distributions import normal_cdf, normal_ppf
from schemas.config import CascadeConfig

Status: TypeAlias = Literal["active", "weakened", "retired"]
EvidenceVerdict: TypeAlias = Literal["supports", "contradicts", "neutral"]
ChangeKind: TypeAlias = Literal["created", "strengthened", "weakened", "retired", "revived", "nudged"]

STATUSES: Final[tuple[Status, ...]] = ("active", "weakened", "retired")
SCHEMA_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class SkillPolicy:
    """The knobs of `update_skills` and `search_space` (defaults are what the runtime uses).

    `prior_*`: Beta prior pseudo-counts (1, 1: confidence starts at 0.5);
    `significant_weight` / `nonsignificant_weight`: evidence weights before
    sharing among co-changed parameters; `retire_strikes`: significant
    contradictions in a row that retire a skill; `active_confidence`: the
    confidence a weakened skill needs to be active again; `search_confidence`:
    the confidence a skill needs to steer `search_space`; `max_evidence`: the
    evidence kept per skill (oldest dropped; counts stay in support/against);
    `guardrails_contradict`: a significant guardrail harm contradicts the skill.
    """

    prior_support: float = 1.0
    prior_against: float = 1.0
    significant_weight: float = 1.0
    nonsignificant_weight: float = 0.2
    retire_strikes: int = 2
    active_confidence: float = 0.6
    search_confidence: float = 0.5
    max_evidence: int = 64
    guardrails_contradict: bool = True

    def __post_init__(self) -> None:
        """Check the ranges."""
        if self.prior_support <= 0 or self.prior_against <= 0:
            msg = "prior_support, prior_against: must be > 0"
            raise ValueError(msg)
        if not 0 <= self.nonsignificant_weight <= self.significant_weight:
            msg = "nonsignificant_weight: must be in [0, significant_weight]"
            raise ValueError(msg)
        if self.retire_strikes < 1 or self.max_evidence < 1:
            msg = "retire_strikes, max_evidence: must be >= 1"
            raise ValueError(msg)
        if not (0 <= self.active_confidence <= 1 and 0 <= self.search_confidence <= 1):
            msg = "active_confidence, search_confidence: must be in [0, 1]"
            raise ValueError(msg)


DEFAULT_POLICY: Final = SkillPolicy()


class SkillPattern(msgspec.Struct, frozen=True, kw_only=True):
    """What a skill recommends: move `parameter` in `direction` (to `choice` for "=").

    For numbers, [`lower`, `upper`] is the envelope of the values (before and
    after) of the moves that supported it, and `step` the largest such move:
    `search_space` lets the Actor go one `step` beyond what worked.
    """

    parameter: str
    direction: Direction
    choice: str = ""
    lower: float | None = None
    upper: float | None = None
    step: float | None = None


class Evidence(msgspec.Struct, frozen=True, kw_only=True):
    """One experiment arm's evidence for (or against) a skill, read on its deciding `metric`."""

    experiment_id: str
    arm_id: str
    metric: str
    effect: float
    lower: float
    upper: float
    significant: bool
    verdict: EvidenceVerdict
    weight: float
    before: ParamValue
    after: ParamValue
    at_ms: int


class Skill(msgspec.Struct, frozen=True, kw_only=True):
    """One Skillhub entry (stored as JSON by `agents.skillhub`; `revision` guards concurrent writers).

    `confidence` = support / (support + against); `strikes` counts significant
    contradictions since the last significant support.
    """

    skill_id: str
    stage: Stage
    surface: str
    cohort: str
    pattern: SkillPattern
    evidence: tuple[Evidence, ...]
    confidence: float
    status: Status
    last_validated_ms: int
    support: float
    against: float
    strikes: int = 0
    revision: int = 1
    created_ms: int = 0
    updated_ms: int = 0
    schema_version: int = SCHEMA_VERSION


class SkillChange(msgspec.Struct, frozen=True, kw_only=True):
    """What one piece of evidence did to one skill (published to `rectune.decisions`)."""

    skill_id: str
    kind: ChangeKind
    experiment_id: str
    arm_id: str
    metric: str
    verdict: EvidenceVerdict
    confidence_before: float
    confidence_after: float
    status_before: Status | None
    status_after: Status


def skill_id_for(stage: str, surface: str, cohort: str, parameter: str, direction: str, choice: str = "") -> str:
    """The deterministic id of a skill: a hash of what it claims (not of its evidence)."""
    canonical = msgspec.json.encode([stage, surface, cohort, parameter, direction, choice])
    return "sk-" + hashlib.sha256(canonical).hexdigest()[:16]


# --------------------------------------------------------------------------- evidence from insights


@dataclass(frozen=True, slots=True)
class _Key:
    surface: str
    cohort: str
    stage: Stage
    parameter: str
    direction: Direction
    choice: str


def _choice(insight: Insight) -> str:
    return str(insight.after) if insight.direction == "=" else ""


def _p_good(insight: Insight) -> float:
    """P(the metric moved the good way) from the effect and its interval on the log scale, in [0.001, 0.999]."""
    good = 1.0 if metric_def(insight.metric).higher_is_better else -1.0
    z_level = normal_ppf(0.5 + 0.5 * insight.level)
    p = 0.5
    if insight.effect > -1.0 and insight.lower > -1.0 and math.isfinite(insight.upper):
        se = (math.log1p(insight.upper) - math.log1p(insight.lower)) / (2.0 * z_level)
        if se > 0.0:
            p = normal_cdf(good * math.log1p(insight.effect) / se)
    elif insight.verdict != "neutral":
        p = 1.0 - normal_cdf(z_level) if insight.verdict == "worse" else normal_cdf(z_level)
    return min(max(p, 0.001), 0.999)


_EVIDENCE_VERDICT: Final[dict[EffectVerdict, EvidenceVerdict]] = {
    "better": "supports",
    "worse": "contradicts",
    "neutral": "neutral",
}


@dataclass(frozen=True, slots=True)
class _Reading:
    key: _Key
    evidence: Evidence
    p_good: float


def _readings(insights: Iterable[Insight], policy: SkillPolicy) -> list[_Reading]:
    groups: dict[tuple[_Key, str, str], list[Insight]] = defaultdict(list)
    for insight in insights:
        key = _Key(
            insight.surface, insight.cohort, insight.stage, insight.parameter, insight.direction, _choice(insight)
        )
        groups[(key, insight.experiment_id, insight.arm_id)].append(insight)
    readings: list[_Reading] = []
    for (key, _, _), group in groups.items():
        harms = [i for i in group if i.role == "guardrail" and i.verdict == "worse"]
        objective = next((i for i in group if i.role == "objective"), None)
        if harms and policy.guardrails_contradict:
            deciding = max(harms, key=lambda i: (abs(i.effect), i.metric))
            verdict: EvidenceVerdict = "contradicts"
        elif objective is not None:
            deciding = objective
            verdict = _EVIDENCE_VERDICT[objective.verdict]
        else:
            continue
        base = policy.significant_weight if deciding.significant else policy.nonsignificant_weight
        evidence = Evidence(
            experiment_id=deciding.experiment_id,
            arm_id=deciding.arm_id,
            metric=deciding.metric,
            effect=deciding.effect,
            lower=deciding.lower,
            upper=deciding.upper,
            significant=deciding.significant,
            verdict=verdict,
            weight=base / max(deciding.co_changed, 1),
            before=deciding.before,
            after=deciding.after,
            at_ms=deciding.at_ms,
        )
        readings.append(_Reading(key, evidence, _p_good(deciding)))
    readings.sort(key=lambda r: (r.evidence.at_ms, r.evidence.experiment_id, r.evidence.arm_id, _skill_id_of(r.key)))
    return readings


def _skill_id_of(key: _Key) -> str:
    return skill_id_for(key.stage, key.surface, key.cohort, key.parameter, key.direction, key.choice)


# --------------------------------------------------------------------------- the update


def _numbers(before: ParamValue, after: ParamValue) -> tuple[float, float] | None:
    if isinstance(before, str) or isinstance(after, str):
        return None
    return float(before), float(after)


def _widen(pattern: SkillPattern, evidence: Evidence) -> SkillPattern:
    values = _numbers(evidence.before, evidence.after)
    if values is None:
        return pattern
    lo, hi = min(values), max(values)
    step = abs(values[1] - values[0])
    return msgspec.structs.replace(
        pattern,
        lower=lo if pattern.lower is None else min(pattern.lower, lo),
        upper=hi if pattern.upper is None else max(pattern.upper, hi),
        step=step if pattern.step is None else max(pattern.step, step),
    )


def _new_skill(reading: _Reading, now_ms: int, policy: SkillPolicy) -> Skill:
    key = reading.key
    pattern = _widen(
        SkillPattern(parameter=key.parameter, direction=key.direction, choice=key.choice), reading.evidence
    )
    return Skill(
        skill_id=_skill_id_of(key),
        stage=key.stage,
        surface=key.surface,
        cohort=key.cohort,
        pattern=pattern,
        evidence=(),
        confidence=policy.prior_support / (policy.prior_support + policy.prior_against),
        status="active",
        last_validated_ms=0,
        support=policy.prior_support,
        against=policy.prior_against,
        strikes=0,
        revision=0,  # bumped to 1 when the first evidence is applied
        created_ms=now_ms,
        updated_ms=now_ms,
    )


def _apply(skill: Skill, reading: _Reading, now_ms: int, policy: SkillPolicy) -> tuple[Skill, ChangeKind]:
    evidence = reading.evidence
    support = skill.support + evidence.weight * reading.p_good
    against = skill.against + evidence.weight * (1.0 - reading.p_good)
    confidence = support / (support + against)
    status, strikes, pattern, validated = skill.status, skill.strikes, skill.pattern, skill.last_validated_ms
    kind: ChangeKind = "nudged"
    if evidence.significant and evidence.verdict == "supports":
        strikes, pattern, validated = 0, _widen(pattern, evidence), max(validated, evidence.at_ms)
        kind = "strengthened"
        if status == "retired":
            status, kind = "weakened", "revived"
        elif status == "weakened" and confidence >= policy.active_confidence:
            status = "active"
    elif evidence.significant and evidence.verdict == "contradicts":
        strikes += 1
        if strikes >= policy.retire_strikes:
            status, kind = "retired", "retired"
        else:
            status, kind = "weakened", "weakened"
    kept = (*skill.evidence, evidence)[-policy.max_evidence :]
    updated = msgspec.structs.replace(
        skill,
        pattern=pattern,
        evidence=kept,
        confidence=confidence,
        status=status,
        last_validated_ms=validated,
        support=support,
        against=against,
        strikes=strikes,
        revision=skill.revision + 1,
        updated_ms=now_ms,
    )
    return updated, kind


def update_skills(
    skills: Iterable[Skill],
    insights: Iterable[Insight],
    now_ms: int,
    policy: SkillPolicy = DEFAULT_POLICY,
) -> tuple[tuple[Skill, ...], tuple[SkillChange, ...]]:
    """Fold new insights into the skills: (every skill after the update, sorted by id; what changed).

    Deterministic and idempotent: evidence is applied in (time, experiment,
    arm) order, and an experiment arm already recorded on a skill is skipped.
    Each changed skill's `revision` grows by one per applied evidence (the
    store's compare-and-set relies on it).  See the module docstring for the
    rule.  Called by the Skill agent after each decision.
    """
    by_id: dict[str, Skill] = {s.skill_id: s for s in skills}
    changes: list[SkillChange] = []
    for reading in _readings(insights, policy):
        skill_id = _skill_id_of(reading.key)
        evidence = reading.evidence
        current = by_id.get(skill_id)
        if current is None:
            if not (evidence.significant and evidence.verdict == "supports"):
                continue
            current = _new_skill(reading, now_ms, policy)
        elif any(e.experiment_id == evidence.experiment_id and e.arm_id == evidence.arm_id for e in current.evidence):
            continue
        before_status: Status | None = current.status if current.revision > 0 else None
        before_confidence = current.confidence
        updated, kind = _apply(current, reading, now_ms, policy)
        if before_status is None:
            kind = "created"
        by_id[skill_id] = updated
        changes.append(
            SkillChange(
                skill_id=skill_id,
                kind=kind,
                experiment_id=evidence.experiment_id,
                arm_id=evidence.arm_id,
                metric=evidence.metric,
                verdict=evidence.verdict,
                confidence_before=before_confidence,
                confidence_after=updated.confidence,
                status_before=before_status,
                status_after=updated.status,
            )
        )
    return tuple(by_id[k] for k in sorted(by_id)), tuple(changes)


def changed_skills(skills: Iterable[Skill], changes: Iterable[SkillChange]) -> tuple[Skill, ...]:
    """The skills `changes` touched, in their final state (what the Skill agent upserts)."""
    touched = {c.skill_id for c in changes}
    return tuple(s for s in skills if s.skill_id in touched)


# --------------------------------------------------------------------------- the Actor's view


class SearchDimension(msgspec.Struct, frozen=True, kw_only=True):
    """One parameter of the Actor's tightened search space.

    `preferred` is the direction the most confident usable skill recommends
    (None when skills only say what to avoid); [`lower`, `upper`] the values
    the Actor may propose (None = no skill-derived bound); `choices` the
    allowed values of a choice parameter; `avoid` the moves retired skills
    advise against ("+", "-", or "=value").
    """

    parameter: str
    stage: Stage
    preferred: Direction | None
    lower: float | None
    upper: float | None
    choices: tuple[str, ...] = ()
    avoid: tuple[str, ...] = ()
    confidence: float
    skill_ids: tuple[str, ...]


def relevant_skills(skills: Iterable[Skill], surface: str, cohort: str) -> dict[str, list[Skill]]:
    """The skills that apply to (surface, cohort), per parameter.

    A parameter with any skill for this cohort uses only those; otherwise the
    pooled `ALL_COHORTS` skills apply.
    """
    specific: dict[str, list[Skill]] = defaultdict(list)
    pooled: dict[str, list[Skill]] = defaultdict(list)
    for skill in skills:
        if skill.surface != surface:
            continue
        if skill.cohort == cohort:
            specific[skill.pattern.parameter].append(skill)
        elif skill.cohort == ALL_COHORTS:
            pooled[skill.pattern.parameter].append(skill)
    merged = dict(pooled)
    merged.update(specific)
    return {p: sorted(group, key=lambda s: s.skill_id) for p, group in sorted(merged.items())}


def _avoid_token(pattern: SkillPattern) -> str:
    return f"={pattern.choice}" if pattern.direction == "=" else pattern.direction


def _preferred_range(pattern: SkillPattern, current: float | None) -> tuple[float | None, float | None]:
    """From the current value (else from where the supporting moves started) to one step past the furthest."""
    step = pattern.step or 0.0
    if pattern.direction == "+":
        reach = max((x for x in (pattern.upper, current) if x is not None), default=None)
        start = current if current is not None else pattern.lower
        return start, None if reach is None else reach + step
    reach = min((x for x in (pattern.lower, current) if x is not None), default=None)
    start = current if current is not None else pattern.upper
    return None if reach is None else reach - step, start


def _dimension(
    parameter: str,
    group: Sequence[Skill],
    current: ParamValue | None,
    bounds: tuple[float | None, float | None],
    policy: SkillPolicy,
) -> SearchDimension | None:
    usable = [s for s in group if s.status != "retired" and s.confidence >= policy.search_confidence]
    retired = [s for s in group if s.status == "retired"]
    best = max(usable, key=lambda s: (s.confidence, s.last_validated_ms, s.skill_id)) if usable else None
    avoid = tuple(
        sorted({_avoid_token(s.pattern) for s in retired} - ({_avoid_token(best.pattern)} if best else set()))
    )
    if best is None and not avoid:
        return None
    cur = None if current is None or isinstance(current, str) else float(current)
    lower: float | None = None
    upper: float | None = None
    choices: tuple[str, ...] = ()
    if best is not None and best.pattern.direction == "=":
        choices = (best.pattern.choice,)
    elif best is not None:
        lower, upper = _preferred_range(best.pattern, cur)
    else:
        for s in retired:
            anchor = cur if cur is not None else (s.pattern.lower if s.pattern.direction == "+" else s.pattern.upper)
            if anchor is None:
                continue
            if s.pattern.direction == "+":
                upper = anchor if upper is None else min(upper, anchor)
            elif s.pattern.direction == "-":
                lower = anchor if lower is None else max(lower, anchor)
    lo_bound, hi_bound = bounds
    if lower is not None and lo_bound is not None:
        lower = max(lower, lo_bound)
    if upper is not None and hi_bound is not None:
        upper = min(upper, hi_bound)
    return SearchDimension(
        parameter=parameter,
        stage=stage_of(parameter),
        preferred=best.pattern.direction if best else None,
        lower=lower,
        upper=upper,
        choices=choices,
        avoid=avoid,
        confidence=best.confidence if best else max(s.confidence for s in retired),
        skill_ids=tuple(s.skill_id for s in (best, *retired) if s is not None),
    )


def search_space(
    skills: Iterable[Skill],
    surface: str,
    cohort: str = ALL_COHORTS,
    *,
    incumbent: CascadeConfig | None = None,
    policy: SkillPolicy = DEFAULT_POLICY,
) -> list[SearchDimension]:
    """The Actor's search space as the Skillhub narrows it, one `SearchDimension` per parameter with skills.

    With an `incumbent`, a preferred "+" allows [current, max(tried, current)
    + step] (mirrored for "−"), a retired direction caps the range at the
    current value, and every range is clipped to the parameter's bounds;
    without one, ranges come from the values that worked.  Ordered by stage
    (pre_rank, rank, re_rank, routing) then path.  Called by the Actor
    before it proposes.
    """
    specs = {}
    if incumbent is not None:
        specs = {s.name: s for s in parameter_specs(incumbent.for_surface(surface))}
    dims: list[SearchDimension] = []
    for parameter, group in relevant_skills(skills, surface, cohort).items():
        spec = specs.get(parameter)
        current = spec.current if spec is not None else None
        bounds = (spec.lower, spec.upper) if spec is not None else (None, None)
        dim = _dimension(parameter, group, current, bounds, policy)
        if dim is not None:
            dims.append(dim)
    dims.sort(key=lambda d: (STAGES.index(d.stage), d.parameter))
    return dims


def search_parameters(space: Iterable[SearchDimension]) -> tuple[str, ...]:
    """The paths a skill recommends moving: what the Actor puts in `ProposalContext.parameters`.

    Empty when no skill is confident yet — the Actor then searches every
    tunable parameter (an empty `parameters` means no restriction).
    """
    return tuple(d.parameter for d in space if d.preferred is not None)


def _pct(x: float) -> str:
    return f"{x * 100:+.1f}%"


def describe(skill: Skill) -> str:
    """One line saying what a skill claims and how well it is supported (notes, CLI)."""
    p = skill.pattern
    if p.direction == "=":
        move = f"{p.parameter} = {p.choice}"
    else:
        arrow = "up" if p.direction == "+" else "down"
        span = f" within [{p.lower:g}, {p.upper:g}]" if p.lower is not None and p.upper is not None else ""
        move = f"{p.parameter} {arrow}{span}"
    sig = [e for e in skill.evidence if e.significant]
    supports = sum(1 for e in sig if e.verdict == "supports")
    against = sum(1 for e in sig if e.verdict == "contradicts")
    text = f"{move}: {supports} significant support(s), {against} contradiction(s) in {len(skill.evidence)} read(s)"
    if skill.evidence:
        last = skill.evidence[-1]
        text += f"; last {last.metric} {_pct(last.effect)} [{_pct(last.lower)}, {_pct(last.upper)}] ({last.verdict})"
    # The text starts "<path> up|down" (or "<path> = <choice>"), the form the offline brain reads as a hint,
    # except for a retired skill, which must never read as a recommendation.
    if skill.status == "retired":
        text = "AVOID (retired): " + text
    elif skill.status == "weakened":
        text += "; weakened by a recent contradiction"
    return clip_text(text, MAX_PATTERN_CHARS)


def skill_notes(skills: Iterable[Skill], surface: str, cohort: str = ALL_COHORTS, *, limit: int = 8) -> list[SkillNote]:
    """The skills relevant to (surface, cohort) as `SkillNote`s for `ProposalContext.skills`.

    Most useful first: active and weakened by confidence, then retired ones
    (shown as things to avoid); at most `limit`.  Called by the Actor and Critic.
    """
    relevant = [s for group in relevant_skills(skills, surface, cohort).values() for s in group]
    relevant.sort(key=lambda s: (s.status == "retired", -s.confidence, s.skill_id))
    return [
        SkillNote(stage=s.stage, cohort=s.cohort, pattern=describe(s), confidence=round(s.confidence, 4))
        for s in relevant[:limit]
    ]
