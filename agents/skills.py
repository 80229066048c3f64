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
- how skills narrow the Actor's search and read as text (`search_space`,
  `search_parameters`, `skill_notes`, `describe`) lives in
  `agents.skill_search`.

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
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

import msgspec

from agents.brain import ParamValue
from agents.insight import (
    Direction,
    EffectVerdict,
    Insight,
    Stage,
    metric_def,
)
from agents.stats.distributions import normal_cdf, normal_ppf

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

    `search_confidence` (default 0.6, the same bar as `active_confidence`): a
    skill is born from one significant win whose weight is shared among the m
    parameters the arm changed (times the read's probability of a gain, about
    1 for a clear win), so its confidence is about (1 + 1/m)/(2 + 1/m): 0.67
    when the arm changed it alone, just under 0.60 with one other parameter,
    0.57 with two.  A shared win cannot say which parameter paid, and letting
    it steer confined round after round to parameters that mostly rode along;
    such a skill steers once a second win backs it (two wins shared three
    ways: 0.62).  At 0.5, the prior's own mean, every skill would steer.
    """

    prior_support: float = 1.0
    prior_against: float = 1.0
    significant_weight: float = 1.0
    nonsignificant_weight: float = 0.2
    retire_strikes: int = 2
    active_confidence: float = 0.6
    search_confidence: float = 0.6
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
