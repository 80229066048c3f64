"""Diagnostic readings and the offline brain's diagnostic candidates (pure: no services)."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest

from agents.brain import MetricReading, Proposal, ProposalContext, parameter_specs
from agents.critic import CriticRules, FailureMemory, LatencyModel, TrustRegion, critique, trust_coordinate
from agents.diagnostics import DiagnosticRules, diagnostic_moves, diagnostic_values, step_down
from agents.loop import AgentLoop, LoopInput, LoopSettings
from agents.offline_brain import OfflineBrain
from agents.online import OnlineAgent, OnlinePolicy
from schemas.config import CascadeConfig, default_config
from schemas.config_log import ServingState
from schemas.guardrails import Guardrails
from schemas.metrics import FIELD_INDEX, N_FIELDS, N_LATENCY_BINS, ArmTotals

BASE = default_config()
# Like examples/start_no_diversity.json: no near-duplicate collapse, pure relevance.
CROWDED_START = msgspec.structs.replace(
    BASE,
    re_rank=msgspec.structs.replace(BASE.re_rank, near_duplicate_threshold=1.0, mmr_lambda=1.0, max_per_category=6),
)
THRESHOLD, MMR, PER_CAT = "re_rank.near_duplicate_threshold", "re_rank.mmr_lambda", "re_rank.max_per_category"
ALLOWED = (THRESHOLD, MMR, PER_CAT, "re_rank.freshness_boost", "rank.combination", "re_rank.exploration_rate")


def readings(arm: str = "control", cohort: str = "", **values: float) -> tuple[MetricReading, ...]:
    out = [MetricReading(name="ctr", value=0.05, arm=arm, cohort=cohort)]
    out += [MetricReading(name=name, value=value, arm=arm, cohort=cohort) for name, value in values.items()]
    return tuple(out)


def context(incumbent: CascadeConfig = CROWDED_START, **kwargs: object) -> ProposalContext:
    base: dict[str, object] = {"surface": "home", "incumbent": incumbent, "k": 3, "parameters": ALLOWED}
    base.update(kwargs)
    return ProposalContext(**base)  # type: ignore[arg-type]


def diagnostic(proposals: list[Proposal]) -> list[Proposal]:
    return [p for p in proposals if p.title.startswith("offline diagnostic")]


def totals(arm: str, **fields: float) -> ArmTotals:
    sums = np.zeros((N_FIELDS, 4), dtype=np.float64)
    for name, value in fields.items():
        sums[FIELD_INDEX[name], 0] = value
    return ArmTotals("home", arm, sums, np.zeros(N_LATENCY_BINS, np.int64), 0, 0, 1)


# --------------------------------------------------------------------------- readings


def test_diagnostic_values_are_the_documented_ratios_and_skip_empty_denominators() -> None:
    full = totals(
        "control", requests=10, impressions=120, near_duplicates=36, distinct_categories=30, fresh=12, long_tail=6
    )
    assert diagnostic_values(full) == pytest.approx(
        {"near_duplicate_share": 0.3, "categories_per_list": 3.0, "fresh_share": 0.1, "long_tail_share": 0.05}
    )
    assert diagnostic_values(totals("control", requests=5, distinct_categories=10)) == {"categories_per_list": 2.0}
    assert diagnostic_values(totals("control")) == {}


def test_loop_sends_incumbent_diagnostics_then_primary_readings_then_experiment_diagnostics() -> None:
    loop = AgentLoop(OfflineBrain(), OnlineAgent(OnlinePolicy(surface="home")), LoopSettings())
    arms = {
        "home-round1.t1": totals("home-round1.t1", requests=10, impressions=100, clicks=5, near_duplicates=1),
        "control": totals("control", requests=10, impressions=100, clicks=4, near_duplicates=30),
        "home-round1.pre.t1": totals("home-round1.pre.t1", requests=10, impressions=100, clicks=4),  # A/A arm
    }
    out = loop.metrics(LoopInput(totals=arms, serving=ServingState(), now_ms=0))
    assert all(".pre." not in r.arm for r in out)  # A/A pre-period arms serve the incumbent: left out
    head = [(r.name, r.arm, r.value) for r in out[:4]]
    assert all(arm == "control" for _, arm, _ in head) and ("near_duplicate_share", "control", 0.3) in head
    primary = [r for r in out[4:6]]
    assert [(r.name, r.arm) for r in primary] == [("ctr", "control"), ("ctr", "home-round1.t1")]
    assert all(r.lower is not None and r.upper is not None and r.lower <= r.value <= r.upper for r in primary)
    conversions = [(r.name, r.arm) for r in out[6:8]]  # the conversion guardrail's ratio, for the brain's guard model
    assert conversions == [("conversion_rate", "control"), ("conversion_rate", "home-round1.t1")]
    assert ("near_duplicate_share", "home-round1.t1", 0.01) in [(r.name, r.arm, r.value) for r in out[8:]]
    assert all(math.isfinite(r.value) for r in out)  # empty denominators (fresh etc. are 0/100, fine; none NaN)


def test_many_arms_never_push_the_incumbents_diagnostics_out() -> None:
    loop = AgentLoop(OfflineBrain(), OnlineAgent(OnlinePolicy(surface="home")), LoopSettings())
    arms = {f"exp-{i:03d}.t1": totals(f"exp-{i:03d}.t1", requests=10, impressions=100, clicks=5) for i in range(80)}
    arms["control"] = totals("control", requests=10, impressions=100, clicks=4, near_duplicates=30)
    out = loop.metrics(LoopInput(totals=arms, serving=ServingState(), now_ms=0))
    assert len(out) == 64
    assert ("near_duplicate_share", "control") in [(r.name, r.arm) for r in out]


# --------------------------------------------------------------------------- rules


def test_step_down_is_one_trust_step_clipped_to_bounds_and_guardrails() -> None:
    specs = {s.name: s for s in parameter_specs(CROWDED_START)}
    trust, guard = TrustRegion(), Guardrails()
    assert step_down(specs[THRESHOLD], trust, guard) == pytest.approx(0.85)
    assert step_down(specs[PER_CAT], trust, guard) == 6 - 3  # count step max(2, floor(0.5 * 6))
    low_mmr = msgspec.structs.replace(CROWDED_START.re_rank, mmr_lambda=0.35, near_duplicate_threshold=0.55)
    specs = {s.name: s for s in parameter_specs(msgspec.structs.replace(CROWDED_START, re_rank=low_mmr))}
    assert step_down(specs[MMR], trust, guard) == pytest.approx(guard.min_mmr_lambda)  # guardrail, not 0.2
    assert step_down(specs[THRESHOLD], trust, guard) == pytest.approx(0.5)  # bound, not 0.4
    at_floor = msgspec.structs.replace(low_mmr, mmr_lambda=guard.min_mmr_lambda, near_duplicate_threshold=0.5)
    specs = {s.name: s for s in parameter_specs(msgspec.structs.replace(CROWDED_START, re_rank=at_floor))}
    assert step_down(specs[MMR], trust, guard) is None
    assert step_down(specs[THRESHOLD], trust, guard) is None


def test_narrow_lists_lower_max_per_category_one_count_step() -> None:
    moves = diagnostic_moves(
        CROWDED_START,
        {"near_duplicate_share": 0.01, "categories_per_list": 2.5},  # 2.5 / 12 ≈ 0.21 <= 0.25
        rules=DiagnosticRules(),
        trust=TrustRegion(),
        guardrails=Guardrails(),
    )
    assert [(m.rule, [(c.name, c.value) for c in m.changes]) for m in moves] == [("narrow", [(PER_CAT, 3)])]
    wide = diagnostic_moves(
        CROWDED_START,
        {"categories_per_list": 6.0},
        rules=DiagnosticRules(),
        trust=TrustRegion(),
        guardrails=Guardrails(),
    )
    assert wide == []


def test_rules_refuse_out_of_range_settings() -> None:
    with pytest.raises(ValueError, match="crowded_share"):
        DiagnosticRules(crowded_share=0.0)
    with pytest.raises(ValueError, match="max_candidates"):
        DiagnosticRules(max_candidates=-1)


# --------------------------------------------------------------------------- the brain


def test_crowded_lists_make_the_first_candidate_lower_the_threshold_one_step_and_it_passes_the_critic() -> None:
    brain = OfflineBrain(seed=5)
    ctx = context(metrics=readings(near_duplicate_share=0.31))
    proposals = brain.propose_sync(ctx)
    assert len(proposals) == 3
    first = proposals[0]
    assert first.title.startswith("offline diagnostic")
    moved = {c.name: c.value for c in first.changes}
    assert moved == pytest.approx({THRESHOLD: 0.85})  # one cause, one lever (crowded_lowers_mmr is off)
    specs = {s.name: s for s in parameter_specs(CROWDED_START)}
    assert trust_coordinate(specs[THRESHOLD], moved[THRESHOLD], TrustRegion()) == pytest.approx(-1.0)
    text = first.changes[0].hypothesis + " " + first.changes[0].rationale
    assert "near_duplicate_share 0.31 >= 0.1" in text and "crowded" in text
    verdicts = critique(
        proposals, CROWDED_START, CriticRules(allowed=ALLOWED), latency_model=LatencyModel(), failures=FailureMemory()
    )
    assert verdicts[0].kept, verdicts[0].reasons
    assert len(diagnostic(proposals)) == 1  # max_candidates = 1: the rest come from the sampler
    assert any("proposed" in note for note in brain.last_diagnostics)


def test_uncrowded_lists_give_no_diagnostic_candidate_and_the_sampler_is_unchanged() -> None:
    ctx = context(metrics=readings(near_duplicate_share=0.02, categories_per_list=6.0))
    with_rules = OfflineBrain(seed=5).propose_sync(ctx)
    without = OfflineBrain(seed=5, diagnostics=DiagnosticRules(max_candidates=0)).propose_sync(ctx)
    assert diagnostic(with_rules) == []
    assert [p.proposal_id for p in with_rules] == [p.proposal_id for p in without]


def test_diagnostic_candidates_are_deterministic_and_the_sampler_fills_the_rest() -> None:
    ctx = context(metrics=readings(near_duplicate_share=0.31))
    one = OfflineBrain(seed=9).propose_sync(ctx)
    two = OfflineBrain(seed=9).propose_sync(ctx)
    assert [p.proposal_id for p in one] == [p.proposal_id for p in two]
    plain = OfflineBrain(seed=9, diagnostics=DiagnosticRules(max_candidates=0)).propose_sync(ctx)
    assert [p.proposal_id for p in one[1:]] == [p.proposal_id for p in plain[:2]]


def test_a_diagnostic_move_already_tried_is_not_repeated() -> None:
    ctx = context(metrics=readings(near_duplicate_share=0.31))
    brain = OfflineBrain(seed=5)
    first = diagnostic(brain.propose_sync(ctx))
    assert len(first) == 1
    again = brain.propose_sync(ctx)  # no news: the same brain remembers its own proposal
    assert diagnostic(again) == []
    assert any("already tried" in note for note in brain.last_diagnostics)
    # A fresh brain that sees a reading for an arm which served that config does not repeat it either.
    tried = first[0]
    fresh = OfflineBrain(seed=5)
    fresh.register_arm("arm-x", tried.config)
    ctx = context(metrics=(*readings(near_duplicate_share=0.31), MetricReading(name="ctr", value=0.04, arm="arm-x")))
    assert diagnostic(fresh.propose_sync(ctx)) == []


def test_a_diagnostic_candidate_no_arm_served_comes_back_after_news_and_a_served_one_never_does() -> None:
    crowded = readings(near_duplicate_share=0.31)
    brain = OfflineBrain(seed=5)
    [cut] = diagnostic(brain.propose_sync(context(metrics=crowded)))  # e.g. the power gate cut its arm
    assert diagnostic(brain.propose_sync(context(metrics=crowded))) == []  # no news: not again
    news = (*crowded, MetricReading(name="ctr", value=0.04, arm="exp-1.t1"))  # another arm's first read
    [again] = diagnostic(brain.propose_sync(context(metrics=news)))
    assert again.config == cut.config
    brain.register_arm("exp-2.t1", again.config)  # the loop ran it this time
    more = (*news, MetricReading(name="ctr", value=0.05, arm="exp-3.t1"))
    assert diagnostic(brain.propose_sync(context(metrics=more))) == []
    assert any("already tried" in note for note in brain.last_diagnostics)


def test_parameters_outside_the_allow_list_are_not_proposed() -> None:
    crowded = readings(near_duplicate_share=0.31)
    paired = DiagnosticRules(crowded_lowers_mmr=True)
    both = OfflineBrain(seed=5, diagnostics=paired).propose_sync(context(metrics=crowded))
    [proposal] = diagnostic(both)
    assert {c.name: c.value for c in proposal.changes} == pytest.approx({THRESHOLD: 0.85, MMR: 0.85})
    only_threshold = OfflineBrain(seed=5, diagnostics=paired).propose_sync(
        context(metrics=crowded, parameters=(THRESHOLD, PER_CAT))
    )
    [proposal] = diagnostic(only_threshold)
    assert [c.name for c in proposal.changes] == [THRESHOLD]
    neither = OfflineBrain(seed=5).propose_sync(context(metrics=crowded, parameters=("re_rank.freshness_boost",)))
    assert diagnostic(neither) == []
    one_change = OfflineBrain(seed=5, diagnostics=paired).propose_sync(context(metrics=crowded, max_changes=1))
    [proposal] = diagnostic(one_change)
    assert [c.name for c in proposal.changes] == [THRESHOLD]


@pytest.mark.parametrize(
    "metrics",
    [
        readings(near_duplicate_share=math.nan),
        readings(near_duplicate_share=math.inf),
        readings(),  # missing
        readings(arm="home-round1.t1", near_duplicate_share=0.31),  # not the incumbent's
        readings(cohort="young", near_duplicate_share=0.31),  # another cohort
    ],
)
def test_nan_missing_or_foreign_readings_fire_no_rule(metrics: tuple[MetricReading, ...]) -> None:
    brain = OfflineBrain(seed=5)
    assert diagnostic(brain.propose_sync(context(metrics=metrics))) == []
    assert brain.last_diagnostics == ()
