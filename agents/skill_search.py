"""How the Skillhub narrows the Actor's search, and how skills read as text (pure, no I/O).

Who calls what: the Actor (`agents.loop`) calls `search_space(...)` and
`search_parameters(...)` to tighten its search (`ProposalContext.parameters`),
and `skill_notes(...)` for the `SkillNote`s its brain is shown (the Critic
shows the same notes); `rectune skills` prints skills with `describe`.
What a skill is and how evidence changes it lives in `agents.skills`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import msgspec

from agents.brain import MAX_PATTERN_CHARS, ParamValue, SkillNote, clip_text, parameter_specs
from agents.insight import ALL_COHORTS, STAGES, Direction, Stage, stage_of
from agents.skills import DEFAULT_POLICY, Skill, SkillPattern, SkillPolicy
from schemas.config import CascadeConfig


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
