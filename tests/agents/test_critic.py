"""The Critic's hard rules: each rejects what it should and names itself with the figures; brains only prune."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agents.brain import (
    CritiqueVerdict,
    ParamChange,
    Proposal,
    apply_changes,
    parameter_specs,
    proposal_id_for,
    vet_proposal,
)
from agents.critic import (
    CriticError,
    CriticRules,
    DiversityFloor,
    FailedMove,
    FailureMemory,
    FailureRecord,
    LatencyModel,
    TrustRegion,
    Verdict,
    candidate_distance,
    critique,
    guaranteed_categories,
    param_class,
    trust_coordinate,
    within_limit,
)
from agents.ope import OffPolicyDifference, difference
from schemas.config import CascadeConfig, ConfigError, default_config
from schemas.guardrails import Guardrails

INC = default_config()
LAX = Guardrails(max_exploration_rate=0.5, min_mmr_lambda=0.0, max_per_category_ceiling=200, min_list_size=1)


def make(*changes: tuple[str, float | int | str], incumbent: CascadeConfig = INC) -> Proposal:
    """A proposal vetted against lax guardrails (so the Critic's own rules are what is tested)."""
    effective, config = vet_proposal(incumbent, [ParamChange(name=n, value=v) for n, v in changes], guardrails=LAX)
    return Proposal(proposal_id=proposal_id_for(effective), title="t", changes=effective, config=config)


def judge(
    candidates: Sequence[Proposal],
    *,
    rules: CriticRules | None = None,
    latency_model: LatencyModel | None = None,
    failures: FailureMemory | None = None,
    ope: dict[str, OffPolicyDifference] | None = None,
    brain: Sequence[CritiqueVerdict] | None = None,
    incumbent: CascadeConfig = INC,
    incumbent_p99_ms: float | None = None,
) -> list[Verdict]:
    return critique(
        candidates,
        incumbent,
        rules or CriticRules(),
        latency_model=latency_model or LatencyModel(),
        failures=failures or FailureMemory(),
        ope_estimates=ope,
        brain_verdicts=brain,
        incumbent_p99_ms=incumbent_p99_ms,
    )


def only(verdicts: list[Verdict]) -> Verdict:
    assert len(verdicts) == 1
    return verdicts[0]


def text(verdict: Verdict) -> str:
    return " | ".join(verdict.reasons)


# --------------------------------------------------------------------------- kept baseline


def test_a_small_valid_move_is_kept_with_its_figures() -> None:
    verdict = only(judge([make(("re_rank.mmr_lambda", 0.7))]))
    assert verdict.kept and verdict.rule is None
    assert verdict.predicted_p99_ms == pytest.approx(72.0)
    assert "latency_budget: predicted p99 72.0 ms" in text(verdict)
    assert "trust_region: largest move 0.67 trust steps (re_rank.mmr_lambda)" in text(verdict)
    assert verdict.harm is None


def test_verdicts_follow_candidate_order_one_each() -> None:
    candidates = [make(("re_rank.mmr_lambda", 0.5)), make(("re_rank.mmr_lambda", 0.7)), make(("rank.cut", 150))]
    verdicts = judge(candidates)
    assert [v.proposal_id for v in verdicts] == [c.proposal_id for c in candidates]
    assert [v.kept for v in verdicts] == [False, True, True]


# --------------------------------------------------------------------------- 1. schema / guardrails


def test_schema_rejects_a_guardrail_breach_naming_the_guardrail() -> None:
    candidate = make(("re_rank.exploration_rate", 0.15))  # fine under LAX, over the default 0.1 guardrail
    verdict = only(judge([candidate]))
    assert not verdict.kept and verdict.rule == "schema"
    assert "re_rank.exploration_rate" in text(verdict) and "exploration guardrail" in text(verdict)
    assert verdict.predicted_p99_ms is None


def test_schema_rejects_unknown_paths_forged_configs_and_forged_ids() -> None:
    good = make(("re_rank.mmr_lambda", 0.7))
    unknown = Proposal(
        proposal_id="p-x", title="t", changes=(ParamChange(name="re_rank.bogus", value=1.0),), config=INC
    )
    forged_config = Proposal(proposal_id=good.proposal_id, title="t", changes=good.changes, config=INC)
    forged_id = Proposal(proposal_id="p-000000000000", title="t", changes=good.changes, config=good.config)
    verdicts = judge([unknown, forged_config, forged_id])
    assert [v.rule for v in verdicts] == ["schema"] * 3
    assert "re_rank.bogus: unknown parameter" in text(verdicts[0])
    assert "config is not what its changes make" in text(verdicts[1])
    assert "is not its changes' id" in text(verdicts[2])


def test_schema_enforces_the_search_space_and_size() -> None:
    candidate = make(("re_rank.mmr_lambda", 0.7), ("re_rank.freshness_boost", 0.2))
    outside = only(judge([candidate], rules=CriticRules(allowed=("re_rank.mmr_lambda",))))
    assert outside.rule == "schema" and "not in this experiment's search space" in text(outside)
    too_big = only(judge([candidate], rules=CriticRules(max_changes=1)))
    assert too_big.rule == "schema" and "at most 1 changes" in text(too_big)


# --------------------------------------------------------------------------- 2. trust region


@pytest.mark.parametrize(
    ("name", "inside", "outside", "figure"),
    [
        ("re_rank.mmr_lambda", 0.65, 0.6, "allowed [0.65, 0.95]"),  # unit: ±0.15
        ("rank.objective_weights.conversion", 3.9, 4.0, "allowed [2.1, 3.9]"),  # weight: ±30%
        ("pre_rank.candidate_cut", 2000, 2001, "allowed [500, 2000]"),  # cut: ×2
        ("rank.cut", 50, 49, "allowed [50, 200]"),
        ("re_rank.list_size", 18, 19, "allowed [6, 18]"),  # count: max(2, 50%)
    ],
)
def test_trust_region_edges(name: str, inside: float, outside: float, figure: str) -> None:
    rules = CriticRules(latency_budget_ms=1e6)
    assert only(judge([make((name, inside))], rules=rules)).kept
    verdict = only(judge([make((name, outside))], rules=rules))
    assert verdict.rule == "trust_region"
    assert name in text(verdict) and figure in text(verdict)


def test_a_zero_weight_may_move_by_the_minimum_step() -> None:
    incumbent = apply_changes(INC, [ParamChange(name="rank.objective_weights.dwell", value=0.0)])
    rules = CriticRules(trust=TrustRegion(weight_min_step=0.05))
    assert only(
        judge([make(("rank.objective_weights.dwell", 0.05), incumbent=incumbent)], rules=rules, incumbent=incumbent)
    ).kept
    verdict = only(
        judge([make(("rank.objective_weights.dwell", 0.06), incumbent=incumbent)], rules=rules, incumbent=incumbent)
    )
    assert verdict.rule == "trust_region"


def test_choice_changes_follow_the_trust_switch() -> None:
    candidate = make(("rank.combination", "weighted_product"))
    assert only(judge([candidate])).kept
    verdict = only(judge([candidate], rules=CriticRules(trust=TrustRegion(choices=False))))
    assert verdict.rule == "trust_region" and "choice changes are off" in text(verdict)


def test_trust_box_and_coordinates_agree() -> None:
    trust = TrustRegion()
    for spec in parameter_specs(INC):
        if spec.kind == "choice":
            assert param_class(spec) == "choice"
            continue
        low, high = trust.box(spec)
        assert low <= float(spec.current) <= high
        for edge in (low, high):
            assert abs(trust_coordinate(spec, edge, trust)) <= 1.0 + 1e-9


# --------------------------------------------------------------------------- 3. latency budget


def test_latency_budget_rejects_with_the_prediction_and_the_budget() -> None:
    candidate = make(("pre_rank.candidate_cut", 2000), ("rank.cut", 200))
    verdict = only(judge([candidate], rules=CriticRules(latency_budget_ms=100.0)))
    assert verdict.rule == "latency_budget"
    assert verdict.predicted_p99_ms == pytest.approx(20 + 0.02 * 2000 + 0.2 * 200 + 12)
    assert "predicted p99 112.0 ms" in text(verdict) and "> budget 100 ms" in text(verdict)
    assert "candidate_cut 2000, rank.cut 200, list_size 12" in text(verdict)


def test_observed_latency_drives_the_budget() -> None:
    # The incumbent is observed at 3x the prior: doubling its cuts must now break a 250 ms budget.
    observed = LatencyModel.fit([(INC, 216.0)])
    assert observed.source == "scaled_prior" and observed.predict(INC) == pytest.approx(216.0)
    candidate = make(("pre_rank.candidate_cut", 2000), ("rank.cut", 200))
    assert only(judge([candidate])).kept
    verdict = only(judge([candidate], latency_model=observed))
    assert verdict.rule == "latency_budget" and "scaled_prior, n=1" in text(verdict)


def test_the_measured_incumbent_bounds_a_candidate_that_does_no_more_work() -> None:
    # The default config is predicted at 72 ms by the prior; measured at 60 ms it is within a 65 ms budget, and
    # so is any candidate that keeps or cuts its work, however far off the model's margin puts it.
    rules = CriticRules(latency_budget_ms=65.0)
    same_work = make(("re_rank.mmr_lambda", 0.7))
    less_work = make(("rank.cut", 80))
    more_work = make(("re_rank.list_size", 14))
    without = judge([same_work, less_work, more_work], rules=rules)
    assert [v.rule for v in without] == ["latency_budget"] * 3  # no measurement: the model alone
    verdicts = judge([same_work, less_work, more_work], rules=rules, incumbent_p99_ms=60.0)
    assert [v.kept for v in verdicts] == [True, True, False]
    assert verdicts[0].predicted_p99_ms == pytest.approx(60.0)
    assert "no more work than the incumbent, whose measured p99 bounds it" in text(verdicts[1])
    assert verdicts[2].rule == "latency_budget" and "predicted p99 74.0 ms" in text(verdicts[2])
    # the bound only ever lowers a prediction: a model below the measurement stands
    low = judge([same_work], rules=rules, incumbent_p99_ms=90.0)
    assert only(low).predicted_p99_ms == pytest.approx(72.0)


def test_the_actor_sees_the_rule_the_critic_applies() -> None:
    # the incumbent is predicted at 41 ms (margin 10 ms) against a 40 ms budget, and measured at 31 ms
    model = LatencyModel(intercept_ms=5.0, per_candidate_ms=0.01, per_rank_ms=0.1, per_list_item_ms=0.5, margin_ms=10.0)
    limit = model.limit(40.0, incumbent_p99_ms=31.0)
    assert LatencyModel.of_limit(limit).predict(INC) == pytest.approx(model.predict(INC)) == pytest.approx(41.0)
    rules = CriticRules(latency_budget_ms=40.0)
    candidates = [make(("re_rank.mmr_lambda", 0.7)), make(("rank.cut", 200)), make(("rank.cut", 60))]
    kept = [v.kept for v in judge(candidates, rules=rules, latency_model=model, incumbent_p99_ms=31.0)]
    assert kept == [within_limit(limit, c.config, INC) for c in candidates] == [True, False, True]
    unmeasured = model.limit(40.0)
    assert [within_limit(unmeasured, c.config, INC) for c in candidates] == [False, False, True]


def _config(candidate_cut: int, rank_cut: int, list_size: int) -> CascadeConfig:
    return apply_changes(
        INC,
        [
            ParamChange(name="pre_rank.candidate_cut", value=candidate_cut),
            ParamChange(name="rank.cut", value=rank_cut),
            ParamChange(name="re_rank.list_size", value=list_size),
        ],
    )


def test_latency_fit_recovers_a_linear_truth_and_adds_a_margin() -> None:
    rng = np.random.default_rng(7)
    rows = []
    for _ in range(40):
        cc, rc, ls = int(rng.integers(500, 4000)), int(rng.integers(50, 400)), int(rng.integers(8, 24))
        p99 = 10.0 + 0.01 * cc + 0.1 * rc + 0.5 * ls + float(rng.normal(0, 1.0))
        rows.append((_config(cc, rc, ls), p99))
    model = LatencyModel.fit(rows)
    assert model.source == "fit" and model.observations == 40
    assert model.per_candidate_ms == pytest.approx(0.01, rel=0.1)
    assert model.per_rank_ms == pytest.approx(0.1, rel=0.2)
    assert model.residual_sd_ms == pytest.approx(1.0, rel=0.35)
    assert model.margin_ms > 1.0  # z · s · sqrt(1 + k/n)
    target = _config(2000, 200, 12)
    assert model.point(target) == pytest.approx(10 + 20 + 20 + 6, abs=1.5)
    assert model.predict(target) == pytest.approx(model.point(target) + model.margin_ms)


def test_latency_fit_never_predicts_less_for_more_work_and_keeps_prior_slopes_it_cannot_see() -> None:
    rng = np.random.default_rng(3)
    rows = []
    for _ in range(30):
        cc, rc = int(rng.integers(500, 4000)), int(rng.integers(50, 400))
        # rank.cut "helps" latency in this noisy sample; list_size never varies
        rows.append((_config(cc, rc, 12), 30.0 + 0.02 * cc - 0.01 * rc + float(rng.normal(0, 2.0))))
    model = LatencyModel.fit(rows)
    assert model.source == "fit"
    assert model.per_rank_ms == 0.0  # clamped, not negative
    assert model.per_list_item_ms == LatencyModel().per_list_item_ms  # no data on list_size: the prior's slope


def test_latency_model_fallbacks_and_refusals() -> None:
    assert LatencyModel.fit([]) == LatencyModel()
    few = LatencyModel.fit([(INC, 50.0), (_config(2000, 200, 12), 80.0)])
    assert few.source == "scaled_prior" and few.observations == 2
    with pytest.raises(CriticError, match=r"observations\[0\]: p99 must be a finite positive"):
        LatencyModel.fit([(INC, math.nan)])
    with pytest.raises(CriticError, match="LatencyModel"):
        LatencyModel(per_rank_ms=-1.0)


# --------------------------------------------------------------------------- 4. diversity floor


def test_diversity_floor_rejects_lists_dominated_by_one_category() -> None:
    candidate = make(("re_rank.max_per_category", 6))  # 12 items, 6 per category: 2 categories guaranteed
    assert guaranteed_categories(candidate.config) == 2
    verdict = only(judge([candidate]))
    assert verdict.rule == "diversity_floor"
    assert "guarantees 2 distinct categories" in text(verdict) and "< floor 3" in text(verdict)


def test_diversity_floor_on_relevance_only_re_ranking() -> None:
    candidate = make(("re_rank.mmr_lambda", 0.95))
    assert only(judge([candidate])).kept
    verdict = only(judge([candidate], rules=CriticRules(diversity=DiversityFloor(max_mmr_lambda=0.9))))
    assert verdict.rule == "diversity_floor" and "mmr_lambda 0.95 > 0.9" in text(verdict)


def test_an_incumbent_below_the_floor_can_still_be_improved() -> None:
    incumbent = apply_changes(INC, [ParamChange(name="re_rank.max_per_category", value=6)])  # 2 categories
    better = make(("re_rank.max_per_category", 5), incumbent=incumbent)  # 3 categories
    same = make(("re_rank.mmr_lambda", 0.7), incumbent=incumbent)  # still 2, but no worse
    verdicts = judge([better, same], incumbent=incumbent)
    assert [v.kept for v in verdicts] == [True, True]


# --------------------------------------------------------------------------- 5. failure memory


def test_failure_memory_blocks_a_repeat_in_the_same_direction() -> None:
    record = FailureRecord(moves=(FailedMove("re_rank.mmr_lambda", 0.8, 0.6),), reason="ctr -3%", experiment_id="exp-7")
    memory = FailureMemory(records=(record,))
    repeat = make(("re_rank.mmr_lambda", 0.65))  # 75% of the failed step
    superset = make(("re_rank.mmr_lambda", 0.66), ("re_rank.freshness_boost", 0.2))
    small = make(("re_rank.mmr_lambda", 0.75))  # 25% of the failed step
    opposite = make(("re_rank.mmr_lambda", 0.9))
    verdicts = judge([repeat, superset, small, opposite], failures=memory)
    assert [v.rule for v in verdicts] == ["failure_memory", "failure_memory", None, None]
    assert "repeats a recorded failure in exp-7: re_rank.mmr_lambda 0.8 -> 0.6 (ctr -3%)" in text(verdicts[0])
    strict = FailureMemory(records=(record,), tolerance=0.0)  # only a full repeat (or beyond) counts
    assert [v.rule for v in judge([repeat], failures=strict)] == [None]


def test_failure_memory_needs_every_failed_move_and_matches_choices() -> None:
    failed = make(("rank.combination", "weighted_product"), ("rank.cut", 150))
    memory = FailureMemory().add(FailureRecord.from_changes(INC, failed.changes, reason="rolled back"))
    only_choice = make(("rank.combination", "weighted_product"))
    both = make(("rank.combination", "weighted_product"), ("rank.cut", 160))
    verdicts = judge([only_choice, both], failures=memory)
    assert [v.rule for v in verdicts] == [None, "failure_memory"]


def test_failure_direction_is_judged_from_the_current_incumbent() -> None:
    # The failure went 0.8 -> 0.6; the incumbent is now 0.55.  Moving up to 0.62 is not the failed move.
    incumbent = apply_changes(INC, [ParamChange(name="re_rank.mmr_lambda", value=0.55)])
    memory = FailureMemory(records=(FailureRecord(moves=(FailedMove("re_rank.mmr_lambda", 0.8, 0.6),)),))
    up = make(("re_rank.mmr_lambda", 0.62), incumbent=incumbent)
    down = make(("re_rank.mmr_lambda", 0.45), incumbent=incumbent)
    verdicts = judge([up, down], failures=memory, incumbent=incumbent)
    assert [v.rule for v in verdicts] == [None, "failure_memory"]


# --------------------------------------------------------------------------- 6. near duplicates


def test_near_duplicates_keep_the_first_and_drop_copies_of_the_incumbent() -> None:
    first = make(("re_rank.mmr_lambda", 0.70))
    copy = make(("re_rank.mmr_lambda", 0.71))  # 0.067 trust steps from the first
    tiny = make(("re_rank.mmr_lambda", 0.81))  # 0.067 trust steps from the incumbent
    other = make(("re_rank.freshness_boost", 0.2))
    verdicts = judge([first, copy, tiny, other])
    assert [v.rule for v in verdicts] == [None, "near_duplicate", "near_duplicate", None]
    assert f"0.067 trust steps from {first.proposal_id} < 0.25 (the first is kept)" in text(verdicts[1])
    assert "from the incumbent" in text(verdicts[2])


def test_a_rule_rejected_candidate_does_not_shadow_a_later_one() -> None:
    rejected = make(("re_rank.mmr_lambda", 0.70), ("pre_rank.candidate_cut", 2000), ("rank.cut", 200))
    later = make(("re_rank.mmr_lambda", 0.70), ("pre_rank.candidate_cut", 1990), ("rank.cut", 199))
    verdicts = judge([rejected, later], rules=CriticRules(latency_budget_ms=111.9))  # 112.0 vs 111.6 ms
    assert [v.rule for v in verdicts] == ["latency_budget", None]


def test_distance_is_in_trust_steps() -> None:
    specs = parameter_specs(INC)
    a, b = make(("re_rank.mmr_lambda", 0.65)).config, make(("re_rank.mmr_lambda", 0.95)).config
    assert candidate_distance(a, b, specs, TrustRegion()) == pytest.approx(2.0)
    cut = make(("rank.cut", 200)).config
    assert candidate_distance(cut, INC, specs, TrustRegion()) == pytest.approx(1.0)


# --------------------------------------------------------------------------- 7. off-policy harm


def _ope(rows: int, seed: int = 0) -> OffPolicyDifference:
    """Uniform logging over 4 actions; action 0 clicks at 30%, the others at 5%; incumbent = 0, candidate = 1."""
    rng = np.random.default_rng(seed)
    actions = rng.integers(0, 4, rows)
    rewards = (rng.random(rows) < np.where(actions == 0, 0.30, 0.05)).astype(float)
    return difference(rewards, (actions == 1).astype(float), (actions == 0).astype(float), np.full(rows, 0.25))


def test_reliable_estimated_harm_rejects() -> None:
    candidate = make(("re_rank.mmr_lambda", 0.7))
    harm = _ope(8000)
    assert harm.reliable and harm.upper < 0
    verdict = only(judge([candidate], ope={candidate.proposal_id: harm}))
    assert verdict.rule == "ope_harm" and verdict.harm is harm
    assert "snips lift" in text(verdict) and "upper bound below -0" in text(verdict)
    tolerant = only(judge([candidate], ope={candidate.proposal_id: harm}, rules=CriticRules(harm_threshold=1.0)))
    assert tolerant.kept and "no harm shown" in text(tolerant)


def test_unreliable_estimates_are_recorded_not_used() -> None:
    candidate = make(("re_rank.mmr_lambda", 0.7))
    thin = _ope(200, seed=1)  # ESS about 50 < 100
    assert not thin.reliable and thin.upper < 0
    verdict = only(judge([candidate], ope={candidate.proposal_id: thin}))
    assert verdict.kept and verdict.harm is thin
    assert "ope_harm: not evidence either way" in text(verdict) and "unreliable" in text(verdict)


# --------------------------------------------------------------------------- 8. brains only prune


def test_a_brain_keep_cannot_resurrect_a_rule_rejected_candidate() -> None:
    candidate = make(("re_rank.mmr_lambda", 0.5))
    keep = CritiqueVerdict(proposal_id=candidate.proposal_id, verdict="keep", reason="looks great, ship it")
    verdict = only(judge([candidate], brain=[keep]))
    assert not verdict.kept and verdict.rule == "trust_region"
    assert "brain: keep ignored (rejected by rule trust_region)" in text(verdict)


def test_a_brain_reject_removes_a_rule_kept_candidate() -> None:
    kept, rejected = make(("re_rank.mmr_lambda", 0.7)), make(("re_rank.freshness_boost", 0.2))
    brain = [
        CritiqueVerdict(proposal_id=rejected.proposal_id, verdict="reject", reason="freshness hurt cohort young"),
        CritiqueVerdict(proposal_id=kept.proposal_id, verdict="keep", reason="fine"),
    ]
    verdicts = judge([kept, rejected], brain=brain)
    assert [v.rule for v in verdicts] == [None, "brain"]
    assert "brain: reject: freshness hurt cohort young" in text(verdicts[1])


def test_every_broken_hard_rule_is_listed_first_one_wins() -> None:
    candidate = make(("pre_rank.candidate_cut", 3000), ("rank.cut", 300), ("re_rank.max_per_category", 6))
    verdict = only(judge([candidate], rules=CriticRules(latency_budget_ms=100.0)))
    assert verdict.rule == "trust_region"
    rules = [reason.split(":", 1)[0] for reason in verdict.reasons]
    assert rules == ["trust_region", "trust_region", "latency_budget", "diversity_floor"]


def test_rule_configuration_is_checked() -> None:
    with pytest.raises(CriticError, match="latency_budget_ms"):
        CriticRules(latency_budget_ms=0.0)
    with pytest.raises(CriticError, match="cut_factor"):
        TrustRegion(cut_factor=1.0)
    with pytest.raises(CriticError, match="tolerance"):
        FailureMemory(tolerance=1.0)


# --------------------------------------------------------------------------- property: nothing invalid is kept

TIGHT = Guardrails(
    max_candidate_cut=1_500,
    max_rank_cut=150,
    max_per_category_ceiling=5,
    max_exploration_rate=0.05,
    min_mmr_lambda=0.72,
    min_list_size=8,
)
SPECS = parameter_specs(INC)
NAMES = [spec.name for spec in SPECS]


@st.composite
def changes_strategy(draw: st.DrawFn) -> list[ParamChange]:
    out: list[ParamChange] = []
    for _ in range(draw(st.integers(1, 3))):
        mode = draw(st.sampled_from(["near", "near", "near", "near", "wild", "unknown"]))
        if mode == "unknown":
            name = draw(st.sampled_from(["re_rank.bogus", "overrides", "rank", "pre_rank.fusion_weights.nope"]))
            out.append(ParamChange(name=name, value=draw(st.floats(-1, 2))))
            continue
        spec = draw(st.sampled_from(SPECS))
        value: float | int | str
        if spec.kind == "choice":
            value = draw(st.sampled_from([*spec.choices, "bogus"]))
        elif mode == "wild":
            value = draw(
                st.one_of(
                    st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 400_000), st.text(max_size=3)
                )
            )
        else:
            factor = draw(st.floats(-0.45, 0.45))
            current = float(spec.current)
            moved = current * (1 + factor) if abs(current) > 0.5 else current + factor * 0.3
            value = round(moved) if spec.kind == "int" else moved
        out.append(ParamChange(name=spec.name, value=value))
    return out


@st.composite
def proposal_strategy(draw: st.DrawFn) -> Proposal:
    changes = draw(changes_strategy())
    try:
        config = apply_changes(INC, changes)
    except ConfigError:
        config = INC
    if draw(st.integers(0, 9)) == 0:
        config = INC  # a forged config
    try:  # proposal_id_for sorts (name, value) pairs: a path repeated with a str and a float cannot be sorted
        pid = proposal_id_for(changes) if draw(st.integers(0, 9)) else "p-forged"
    except TypeError:
        pid = "p-unsortable"
    return Proposal(proposal_id=pid, title="h", changes=tuple(changes), config=config)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(proposal_strategy(), min_size=1, max_size=4))
def test_critique_never_keeps_what_vetting_or_guardrails_refuse(candidates: list[Proposal]) -> None:
    rules = CriticRules(guardrails=TIGHT, latency_budget_ms=1e6)
    verdicts = critique(candidates, INC, rules, latency_model=LatencyModel(), failures=FailureMemory())
    assert len(verdicts) == len(candidates)
    event("some kept" if any(v.kept for v in verdicts) else "none kept")
    specs = {spec.name: spec for spec in SPECS}
    for candidate, verdict in zip(candidates, verdicts, strict=True):
        assert verdict.kept == (verdict.rule is None)
        if not verdict.kept:
            continue
        effective, config = vet_proposal(INC, candidate.changes, guardrails=TIGHT)  # must not raise
        TIGHT.check(candidate.config)
        assert config == candidate.config and proposal_id_for(effective) == candidate.proposal_id
        for change in effective:
            assert abs(trust_coordinate(specs[change.name], change.value, rules.trust)) <= 1 + 1e-9


def test_the_property_generator_does_produce_keepers() -> None:
    """Guard against a vacuous property: near moves under the tight guardrails are often kept."""
    rules = CriticRules(guardrails=TIGHT, latency_budget_ms=1e6)
    rng = np.random.default_rng(0)
    kept = 0
    for _ in range(60):
        spec = SPECS[int(rng.integers(len(SPECS)))]
        if spec.kind == "choice":
            continue
        value = float(spec.current) * (1 + float(rng.uniform(-0.25, 0.25)))
        change = ParamChange(name=spec.name, value=round(value) if spec.kind == "int" else value)
        try:
            config = apply_changes(INC, [change])
        except ConfigError:
            continue
        proposal = Proposal(proposal_id=proposal_id_for([change]), title="h", changes=(change,), config=config)
        kept += only(critique([proposal], INC, rules, latency_model=LatencyModel(), failures=FailureMemory())).kept
    assert kept >= 10
