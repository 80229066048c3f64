"""Skills: evidence strengthens, weakens and retires them; ids are deterministic; they narrow the search space."""

from __future__ import annotations

import msgspec
import pytest

from agents.brain import MAX_PATTERN_CHARS, SkillNote
from agents.insight import Direction, EffectVerdict, Insight, Role, stage_of
from agents.skill_search import search_parameters, search_space, skill_notes
from agents.skills import SkillPolicy, changed_skills, skill_id_for, update_skills
from schemas.config import default_config

LAMBDA = "re_rank.mmr_lambda"


def insight(
    experiment: str,
    *,
    effect: float,
    lower: float,
    upper: float,
    parameter: str = LAMBDA,
    before: float | int | str = 0.8,
    after: float | int | str = 0.7,
    direction: Direction = "-",
    metric: str = "ctr",
    role: Role = "objective",
    cohort: str = "new",
    arm: str = "t1",
    co_changed: int = 1,
    at_ms: int = 1_000,
    surface: str = "home",
) -> Insight:
    significant = lower > 0 or upper < 0
    higher_better = metric != "latency_p99"
    verdict: EffectVerdict = "neutral"
    if significant:
        verdict = "better" if (lower > 0) == higher_better else "worse"
    return Insight(
        experiment_id=experiment,
        surface=surface,
        cohort=cohort,
        arm_id=arm,
        stage=stage_of(parameter),
        parameter=parameter,
        direction=direction,
        before=before,
        after=after,
        co_changed=co_changed,
        metric=metric,
        role=role,
        control_value=0.05,
        treatment_value=0.05 * (1 + effect),
        effect=effect,
        lower=lower,
        upper=upper,
        level=0.95,
        significant=significant,
        verdict=verdict,
        at_ms=at_ms,
    )


def win(experiment: str, **kw: object) -> Insight:
    return insight(experiment, effect=0.05, lower=0.02, upper=0.08, **kw)  # type: ignore[arg-type]


def loss(experiment: str, **kw: object) -> Insight:
    return insight(experiment, effect=-0.05, lower=-0.08, upper=-0.02, **kw)  # type: ignore[arg-type]


def flat(experiment: str, **kw: object) -> Insight:
    return insight(experiment, effect=0.01, lower=-0.02, upper=0.04, **kw)  # type: ignore[arg-type]


def test_significant_support_creates_an_active_skill_with_a_deterministic_id() -> None:
    skills, changes = update_skills([], [win("e1")], now_ms=5_000)
    assert len(skills) == 1 and len(changes) == 1
    s = skills[0]
    assert s.skill_id == skill_id_for("re_rank", "home", "new", LAMBDA, "-")
    assert (s.stage, s.surface, s.cohort, s.status, s.revision) == ("re_rank", "home", "new", "active", 1)
    assert s.pattern.parameter == LAMBDA and s.pattern.direction == "-"
    assert (s.pattern.lower, s.pattern.upper, s.pattern.step) == pytest.approx((0.7, 0.8, 0.1))
    assert 0.6 < s.confidence < 0.7  # Beta(1, 1) prior + one strong piece of evidence
    assert s.last_validated_ms == 1_000 and s.created_ms == 5_000
    assert len(s.evidence) == 1 and s.evidence[0].verdict == "supports"
    assert changes[0].kind == "created" and changes[0].status_before is None
    # ids depend on what the skill claims, nothing else
    assert skill_id_for("re_rank", "home", "new", LAMBDA, "-") != skill_id_for("re_rank", "home", "all", LAMBDA, "-")
    assert skill_id_for("re_rank", "home", "new", LAMBDA, "-") != skill_id_for("re_rank", "home", "new", LAMBDA, "+")
    again, _ = update_skills([], [win("e9", at_ms=7)], now_ms=1)
    assert again[0].skill_id == s.skill_id


def test_no_skill_from_non_significant_or_contradicting_evidence_alone() -> None:
    assert update_skills([], [flat("e1"), loss("e2")], now_ms=0) == ((), ())


def test_repeated_support_strengthens_and_widens_the_range() -> None:
    skills, _ = update_skills([], [win("e1")], now_ms=0)
    first = skills[0]
    skills, changes = update_skills(skills, [win("e2", before=0.7, after=0.55, at_ms=2_000)], now_ms=10)
    s = skills[0]
    assert changes[0].kind == "strengthened"
    assert s.confidence > first.confidence
    assert s.revision == 2 and s.last_validated_ms == 2_000 and s.updated_ms == 10
    assert (s.pattern.lower, s.pattern.upper, s.pattern.step) == pytest.approx((0.55, 0.8, 0.15))
    assert len(s.evidence) == 2


def test_replaying_the_same_insights_changes_nothing() -> None:
    batch = [win("e1"), win("e2", at_ms=2_000)]
    skills, changes = update_skills([], batch, now_ms=0)
    assert len(changes) == 2
    replayed, none = update_skills(skills, batch, now_ms=99)
    assert none == () and replayed == skills


def test_contradiction_weakens_and_repeated_contradiction_retires() -> None:
    skills, _ = update_skills([], [win("e1"), win("e2", at_ms=2_000)], now_ms=0)
    strong = skills[0].confidence
    skills, changes = update_skills(skills, [loss("e3", at_ms=3_000)], now_ms=0)
    assert changes[0].kind == "weakened" and skills[0].status == "weakened" and skills[0].strikes == 1
    assert skills[0].confidence < strong
    assert skills[0].last_validated_ms == 2_000  # a contradiction does not validate
    skills, changes = update_skills(skills, [loss("e4", at_ms=4_000)], now_ms=0)
    assert changes[0].kind == "retired" and skills[0].status == "retired"
    assert (changes[0].status_before, changes[0].status_after) == ("weakened", "retired")


def test_support_between_contradictions_resets_the_count() -> None:
    skills, _ = update_skills([], [win("e1"), win("e2", at_ms=2)], now_ms=0)
    skills, _ = update_skills(skills, [loss("e3", at_ms=3)], now_ms=0)
    skills, changes = update_skills(skills, [win("e4", at_ms=4)], now_ms=0)
    assert skills[0].strikes == 0 and skills[0].status == "active"  # confidence back above 0.6
    assert changes[0].kind == "strengthened"
    skills, _ = update_skills(skills, [loss("e5", at_ms=5)], now_ms=0)
    assert skills[0].status == "weakened"  # one strike again, not two


def test_a_retired_skill_is_revived_as_weakened_by_new_support() -> None:
    skills, _ = update_skills([], [win("e1", at_ms=1), loss("e2", at_ms=2), loss("e3", at_ms=3)], now_ms=0)
    assert skills[0].status == "retired"
    skills, changes = update_skills(skills, [win("e4", at_ms=4)], now_ms=0)
    assert changes[0].kind == "revived" and skills[0].status == "weakened"


def test_non_significant_evidence_nudges_little() -> None:
    base, _ = update_skills([], [win("e1")], now_ms=0)
    nudged, changes = update_skills(base, [flat("e2", at_ms=2)], now_ms=0)
    strong, _ = update_skills(base, [win("e2", at_ms=2)], now_ms=0)
    assert changes[0].kind == "nudged" and nudged[0].status == "active"
    small = abs(nudged[0].confidence - base[0].confidence)
    assert 0 < small < 0.05
    assert small < abs(strong[0].confidence - base[0].confidence) / 2


def test_attribution_is_shared_among_co_changed_parameters() -> None:
    alone, _ = update_skills([], [win("e1")], now_ms=0)
    shared, _ = update_skills([], [win("e1", co_changed=3)], now_ms=0)
    assert 0.5 < shared[0].confidence < alone[0].confidence
    assert shared[0].evidence[0].weight == pytest.approx(1 / 3)


def test_a_guardrail_harm_contradicts_even_when_the_objective_wins() -> None:
    skills, _ = update_skills([], [win("e1"), win("e2", at_ms=2)], now_ms=0)
    harm = insight(
        "e3", effect=0.3, lower=0.15, upper=0.45, metric="latency_p99", role="guardrail", at_ms=3
    )  # p99 +30%: worse
    skills, changes = update_skills(skills, [win("e3", at_ms=3), harm], now_ms=0)
    assert changes[0].verdict == "contradicts" and changes[0].metric == "latency_p99"
    assert skills[0].status == "weakened"
    lenient, changes = update_skills(
        update_skills([], [win("e1")], now_ms=0)[0],
        [win("e3", at_ms=3), harm],
        now_ms=0,
        policy=SkillPolicy(guardrails_contradict=False),
    )
    assert changes[0].verdict == "supports" and lenient[0].status == "active"


def test_cohorts_surfaces_and_directions_are_separate_skills() -> None:
    skills, changes = update_skills(
        [],
        [
            win("e1", cohort="new"),
            win("e1", cohort="returning"),
            win("e1", cohort="new", surface="search"),
            win("e1", cohort="new", arm="t2", direction="+", before=0.8, after=0.9),
        ],
        now_ms=0,
    )
    assert len(skills) == 4 and len({s.skill_id for s in skills}) == 4
    assert {c.kind for c in changes} == {"created"}
    assert changed_skills(skills, changes[:1]) == tuple(s for s in skills if s.skill_id == changes[0].skill_id)


def test_skills_round_trip_through_json() -> None:
    skills, _ = update_skills([], [win("e1"), loss("e2", at_ms=2)], now_ms=0)
    data = msgspec.json.encode(skills[0])
    assert msgspec.json.decode(data, type=type(skills[0])) == skills[0]


# --------------------------------------------------------------------------- the Actor's view


def _hub() -> tuple:  # type: ignore[type-arg]
    insights = [
        # new users: lower mmr_lambda (more diversity) helps, twice
        win("e1", cohort="new", before=0.8, after=0.7),
        win("e2", cohort="new", before=0.7, after=0.65, at_ms=2),
        # pooled: raising the rank weight of conversion helps
        win(
            "e3",
            cohort="all",
            parameter="rank.objective_weights.conversion",
            direction="+",
            before=3.0,
            after=4.0,
        ),
        # pooled: raising the candidate cut helped once, then failed twice -> retired
        win("e4", cohort="all", parameter="pre_rank.candidate_cut", direction="+", before=1000, after=2000, at_ms=4),
        loss("e5", cohort="all", parameter="pre_rank.candidate_cut", direction="+", before=1000, after=2000, at_ms=5),
        loss("e6", cohort="all", parameter="pre_rank.candidate_cut", direction="+", before=1000, after=2500, at_ms=6),
        # pooled: a switch of combination helped
        win(
            "e7",
            cohort="all",
            parameter="rank.combination",
            direction="=",
            before="weighted_sum",
            after="weighted_product",
        ),
    ]
    skills, _ = update_skills([], insights, now_ms=0)
    return skills


def test_search_space_narrows_to_what_skills_recommend() -> None:
    skills = _hub()
    incumbent = default_config()
    space = {d.parameter: d for d in search_space(skills, "home", "new", incumbent=incumbent)}
    assert list(space) == [
        "rank.combination",
        "rank.objective_weights.conversion",
        "re_rank.mmr_lambda",
        "pre_rank.candidate_cut",
    ]  # stage order: rank, re_rank, routing
    lam = space[LAMBDA]
    assert lam.preferred == "-"
    # from the current value 0.8 down to one step (0.1) past the furthest value that worked (0.65)
    assert (lam.lower, lam.upper) == pytest.approx((0.55, 0.8))
    assert lam.lower is not None and lam.upper is not None
    assert lam.lower > 0.0 and lam.upper - lam.lower < 1.0  # narrower than the bounds [0, 1]
    conv = space["rank.objective_weights.conversion"]
    assert (conv.preferred, conv.lower, conv.upper) == ("+", 3.0, 5.0)  # pooled skill applies to "new"
    combo = space["rank.combination"]
    assert (combo.preferred, combo.choices) == ("=", ("weighted_product",))
    cut = space["pre_rank.candidate_cut"]
    assert cut.preferred is None and cut.avoid == ("+",) and cut.upper == 1000  # retired: do not raise it
    assert search_parameters(space.values()) == (
        "rank.combination",
        "rank.objective_weights.conversion",
        "re_rank.mmr_lambda",
    )
    # without an incumbent, ranges come from what was tried
    loose = {d.parameter: d for d in search_space(skills, "home", "new")}
    assert (loose[LAMBDA].lower, loose[LAMBDA].upper) == pytest.approx((0.55, 0.8))
    # another surface has no skills: no restriction
    assert search_space(skills, "search", "new") == []
    assert search_parameters(search_space(skills, "search", "new")) == ()


def test_search_space_clips_to_bounds_and_ignores_unconfident_skills() -> None:
    skills, _ = update_skills(
        [], [win("e1", cohort="all", direction="+", before=0.8, after=0.95, co_changed=1)], now_ms=0
    )
    (dim,) = search_space(skills, "home", "all", incumbent=default_config())
    assert dim.upper == 1.0  # 0.95 + 0.15 clipped to the parameter's upper bound
    strict = SkillPolicy(search_confidence=0.9)
    assert search_space(skills, "home", "all", policy=strict) == []


def test_cohort_specific_skills_override_pooled_ones() -> None:
    skills, _ = update_skills(
        [],
        [
            win("e1", cohort="all", direction="+", before=0.8, after=0.9),
            win("e2", cohort="returning", direction="-", before=0.8, after=0.7),
        ],
        now_ms=0,
    )
    assert [d.preferred for d in search_space(skills, "home", "returning")] == ["-"]
    assert [d.preferred for d in search_space(skills, "home", "new")] == ["+"]


def test_skill_notes_for_the_actor() -> None:
    notes = skill_notes(_hub(), "home", "new")
    assert all(isinstance(n, SkillNote) for n in notes)
    assert len(notes) == 4
    assert notes[-1].pattern.startswith("AVOID (retired)") and "pre_rank.candidate_cut" in notes[-1].pattern
    assert notes[0].confidence >= notes[1].confidence >= notes[2].confidence
    assert all(len(n.pattern) <= MAX_PATTERN_CHARS for n in notes)
    assert {n.cohort for n in notes} == {"new", "all"}
    assert "re_rank.mmr_lambda down within [0.65, 0.8]" in next(n.pattern for n in notes if n.stage == "re_rank")
    assert len(skill_notes(_hub(), "home", "new", limit=2)) == 2


def test_policy_is_validated() -> None:
    with pytest.raises(ValueError, match="retire_strikes"):
        SkillPolicy(retire_strikes=0)
    with pytest.raises(ValueError, match="nonsignificant_weight"):
        SkillPolicy(nonsignificant_weight=2.0)


def test_a_shared_win_steers_the_search_only_once_a_second_win_backs_it() -> None:
    def space(*insights: Insight) -> tuple[str, ...]:
        skills, _ = update_skills([], list(insights), now_ms=0)
        return search_parameters(search_space(skills, "home", "all", incumbent=default_config()))

    assert space(win("e1", cohort="all", co_changed=1)) == (LAMBDA,)  # its own win
    assert space(win("e1", cohort="all", co_changed=2)) == ()  # which of the two paid is unknown
    assert space(win("e1", cohort="all", co_changed=3)) == ()
    assert space(win("e1", cohort="all", co_changed=3), win("e2", cohort="all", co_changed=3, at_ms=2_000)) == (LAMBDA,)
