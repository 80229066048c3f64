"""The lift model behind the offline brain's ascent candidates (pure: no services)."""

from __future__ import annotations

import dataclasses
import math
import re

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.ascent import (
    ArmEffect,
    AscentError,
    AscentSettings,
    arm_effects,
    ascent_moves,
    coordinates,
    fit_effects,
)
from agents.ascent_candidates import AscentInputs, ascent_candidates, skill_prior
from agents.brain import MetricReading, Proposal, ProposalContext
from agents.critic import CriticRules, TrustRegion, diversity_problems
from agents.offline_brain import Objective, OfflineBrain
from schemas.config import CascadeConfig, default_config

TRUST = TrustRegion()
NAMES = ("re_rank.near_duplicate_threshold", "re_rank.max_per_category", "re_rank.mmr_lambda")


def with_re_rank(config: CascadeConfig, **fields: object) -> CascadeConfig:
    return msgspec.structs.replace(config, re_rank=msgspec.structs.replace(config.re_rank, **fields))


def reading(arm: str, value: float, half_width: float, name: str = "clicks_per_request") -> MetricReading:
    return MetricReading(name=name, value=value, lower=value - half_width, upper=value + half_width, arm=arm)


def inputs_for(configs: dict[str, CascadeConfig]) -> AscentInputs:
    """The brain's inputs for `ascent_candidates`: these arm configs, no prior, no repeat check."""

    def never(config: CascadeConfig, earlier: object) -> str:
        return ""

    return AscentInputs(
        metric="clicks_per_request",
        config_of=configs.get,
        prior_mean={},
        rng=np.random.default_rng(0),
        repeat_reason=never,
    )


def test_coordinates_are_trust_steps_and_choices_are_signed() -> None:
    base = default_config()
    moved = with_re_rank(base, near_duplicate_threshold=0.8, max_per_category=6)
    moved = msgspec.structs.replace(moved, rank=msgspec.structs.replace(moved.rank, combination="weighted_product"))
    got = coordinates(base, moved, TRUST)
    assert got["re_rank.near_duplicate_threshold"] == pytest.approx(-1.0)  # 0.15 = one unit step
    assert got["re_rank.max_per_category"] == pytest.approx(1.0)  # max(2, floor(0.5 * 4)) = one count step
    # weighted_sum -> weighted_product: +1 or -1 by the value's index among the two choices, never 0
    assert abs(got["rank.combination"]) == 1.0
    assert coordinates(moved, base, TRUST)["rank.combination"] == -got["rank.combination"]
    assert coordinates(base, base, TRUST) == {}


def test_arm_effects_pair_each_treatment_with_its_own_control() -> None:
    base = default_config()
    arm = with_re_rank(base, near_duplicate_threshold=0.8)
    configs = {"e1.c": base, "e1.t1": arm, "e2.c": arm, "e2.t1": base}
    readings = [
        reading("e1.c", 0.70, 0.014),
        reading("e1.t1", 0.77, 0.014),
        reading("e2.c", 0.77, 0.014),
        reading("e2.t1", 0.70, 0.014),
        reading("e3.t1", 0.9, 0.01),  # no control read: skipped
        reading("e1.t1", 0.1, 0.01, name="ctr"),  # another metric: ignored
    ]
    effects = arm_effects(readings, metric="clicks_per_request", config_of=configs.get, trust=TRUST)
    assert [e.arm for e in effects] == ["e1.t1", "e2.t1"]
    first, second = effects
    assert [name for name, _ in first.moves] == ["re_rank.near_duplicate_threshold"]
    assert first.moves[0][1] == pytest.approx(-1.0)
    assert first.lift == pytest.approx(0.1)
    # delta method: ratio * sqrt((se_t/t)^2 + (se_c/c)^2), se = half width / 1.96
    se_t, se_c = 0.014 / 1.959963984540054, 0.014 / 1.959963984540054
    assert first.se == pytest.approx(1.1 * math.sqrt((se_t / 0.77) ** 2 + (se_c / 0.70) ** 2))
    assert second.moves[0][1] == pytest.approx(1.0) and second.lift == pytest.approx(0.70 / 0.77 - 1.0)


def test_readings_without_an_interval_carry_no_evidence() -> None:
    base = default_config()
    configs = {"e1.c": base, "e1.t1": with_re_rank(base, mmr_lambda=0.7)}
    readings = [MetricReading(name="m", value=0.7, arm="e1.c"), MetricReading(name="m", value=0.8, arm="e1.t1")]
    assert arm_effects(readings, metric="m", config_of=configs.get, trust=TRUST) == []


def test_each_effect_carries_its_controls_distance_from_the_origin() -> None:
    base = default_config()
    old = with_re_rank(base, near_duplicate_threshold=0.7, max_per_category=6)  # two parameters moved
    configs = {
        "e1.c": old,
        "e1.t1": with_re_rank(old, mmr_lambda=0.7),
        "e2.c": base,
        "e2.t1": with_re_rank(base, mmr_lambda=0.7),
    }
    readings = [reading("e1.c", 0.70, 0.014), reading("e1.t1", 0.72, 0.014)]
    readings += [reading("e2.c", 0.70, 0.014), reading("e2.t1", 0.69, 0.014)]
    far, near = arm_effects(readings, metric="clicks_per_request", config_of=configs.get, trust=TRUST, origin=base)
    assert (far.arm, near.arm) == ("e1.t1", "e2.t1")
    moves = coordinates(base, old, TRUST)
    assert far.distance == pytest.approx(math.sqrt(sum(v * v for v in moves.values())))
    assert far.distance > 1.0 and near.distance == 0.0
    unplaced = arm_effects(readings, metric="clicks_per_request", config_of=configs.get, trust=TRUST)
    assert [e.distance for e in unplaced] == [0.0, 0.0]  # no origin: every control counts as here


def test_evidence_from_a_distant_incumbent_counts_less() -> None:
    """Here a step of mmr_lambda read +1%; three steps away it read −5%.  The local read should lead."""
    here = ArmEffect("e2.t1", ((NAMES[2], 1.0),), 0.01, 0.005, distance=0.0)
    there = ArmEffect("e1.t1", ((NAMES[2], 1.0),), -0.05, 0.005, distance=3.0)
    flat = fit_effects([here, there], NAMES, prior_sd=0.03)
    local = fit_effects([here, there], NAMES, prior_sd=0.03, drift_sd=0.01)
    assert flat.effect(NAMES[2]) == pytest.approx(-0.02, abs=1e-3)  # equal weights: the average
    # extra variance (0.01 * 3 * 1)^2 = 36 se^2, so the far read weighs 1/37 of the near one
    w_here, w_there, w_prior = 1 / 0.005**2, 1 / (37 * 0.005**2), 1 / 0.03**2
    expected = (0.01 * w_here - 0.05 * w_there) / (w_here + w_there + w_prior)
    assert local.effect(NAMES[2]) == pytest.approx(expected, rel=1e-9)
    assert local.effect(NAMES[2]) > 0.0
    # with no drift a distance changes nothing
    moved = fit_effects([here, dataclasses.replace(there, distance=0.0)], NAMES, prior_sd=0.03)
    assert np.allclose(moved.mean, flat.mean)
    with pytest.raises(AscentError, match="drift_sd"):
        fit_effects([here], NAMES, prior_sd=0.03, drift_sd=-0.01)
    with pytest.raises(AscentError, match=r"AscentSettings\.drift_sd"):
        AscentSettings(drift_sd=math.inf)


def test_the_model_recovers_the_sign_and_size_of_effects() -> None:
    rng = np.random.default_rng(3)
    truth = np.array([0.05, -0.03, 0.0])
    effects = []
    for i in range(40):
        x = rng.choice([-1.0, 0.0, 1.0], size=3)
        if not x.any():
            continue
        y = float(x @ truth + rng.normal(0.0, 0.01))
        effects.append(ArmEffect(f"e{i}.t1", tuple((n, float(v)) for n, v in zip(NAMES, x, strict=True) if v), y, 0.01))
    model = fit_effects(effects, NAMES, prior_sd=0.03)
    assert model.arms == len(effects)
    for name, true in zip(NAMES, truth, strict=True):
        assert abs(model.effect(name) - true) < 3 * model.sd(name) + 1e-3
        assert model.sd(name) < 0.01  # much tighter than the prior
    greedy = ascent_moves(model, dict.fromkeys(NAMES, frozenset({-1, 1})), max_changes=3, z_min=3.0)
    assert [(d.name, d.sign) for d in greedy] == [(NAMES[0], 1), (NAMES[1], -1)]  # the null effect is left out


def test_without_evidence_the_posterior_is_the_prior_and_greedy_moves_nothing() -> None:
    model = fit_effects([], NAMES, prior_sd=0.03, prior_mean={NAMES[1]: 0.02, "unknown.path": 1.0})
    assert model.arms == 0
    assert model.effect(NAMES[1]) == pytest.approx(0.02) and model.sd(NAMES[0]) == pytest.approx(0.03)
    assert ascent_moves(model, dict.fromkeys(NAMES, frozenset({-1, 1})), max_changes=2, z_min=1.0) == []
    draws = {
        tuple(
            (d.name, d.sign) for d in ascent_moves(model, {n: frozenset({-1, 1}) for n in NAMES}, max_changes=1, rng=r)
        )
        for r in (np.random.default_rng(seed) for seed in range(40))
    }
    assert len(draws) > 2  # Thompson draws from the prior explore several directions


def test_moves_respect_the_signs_a_parameter_can_take() -> None:
    model = fit_effects([ArmEffect("e.t1", ((NAMES[0], 1.0),), 0.08, 0.005)], NAMES, prior_sd=0.03)
    assert ascent_moves(model, {NAMES[0]: frozenset({-1})}, max_changes=3) == []
    assert [d.sign for d in ascent_moves(model, {NAMES[0]: frozenset({1})}, max_changes=3)] == [1]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.sampled_from([-1.0, -0.5, 0.5, 1.0]), min_size=3, max_size=3),
            st.floats(-0.3, 0.3),
            st.floats(1e-4, 0.2),
        ),
        max_size=25,
    ),
    st.floats(1e-3, 1.0),
)
def test_posterior_is_finite_and_never_wider_than_the_prior(
    rows: list[tuple[list[float], float, float]], prior_sd: float
) -> None:
    effects = [
        ArmEffect(f"e{i}.t1", tuple(zip(NAMES, x, strict=True)), lift, se) for i, (x, lift, se) in enumerate(rows)
    ]
    model = fit_effects(effects, NAMES, prior_sd=prior_sd)
    assert np.all(np.isfinite(model.mean)) and np.all(np.isfinite(model.cov))
    for name in NAMES:
        assert model.sd(name) <= prior_sd * (1 + 1e-9)
    assert np.allclose(model.cov, model.cov.T)


def test_settings_and_prior_are_validated() -> None:
    with pytest.raises(AscentError, match="prior_sd"):
        fit_effects([], NAMES, prior_sd=0.0)
    with pytest.raises(AscentError, match=r"AscentSettings\.draws"):
        AscentSettings(draws=0)
    with pytest.raises(AscentError, match="max_changes"):
        ascent_moves(fit_effects([], NAMES, prior_sd=0.03), {}, max_changes=0)
    assert skill_prior({NAMES[0]: [(1, 0.5), (-1, 0.25)]}, 0.04) == {NAMES[0]: pytest.approx(0.01)}


def test_candidates_restore_the_diversity_floor_with_a_longer_list() -> None:
    """The model wants max_per_category up; 12 / 6 breaks the floor, so the list grows with it."""
    base = with_re_rank(default_config(), max_per_category=5)
    rules = CriticRules()
    up = msgspec.structs.replace(base, re_rank=msgspec.structs.replace(base.re_rank, max_per_category=4))
    configs = {"e1.c": up, "e1.t1": base}
    readings = (reading("e1.c", 0.70, 0.004), reading("e1.t1", 0.77, 0.004))
    context = ProposalContext(surface="home", incumbent=base, k=2, metrics=readings, max_changes=3)

    inputs = inputs_for(configs)
    proposals, notes = ascent_candidates(context, rules, AscentSettings(candidates=1), inputs)
    assert len(proposals) == 1, notes
    config = proposals[0].config
    assert config.re_rank.max_per_category == 6
    assert config.re_rank.list_size >= 13  # ceil(13 / 6) = 3 categories: the floor holds
    assert diversity_problems(config, base, rules.diversity, "home") == []
    assert "steepest ascent" in proposals[0].changes[0].rationale


async def test_offline_brain_puts_ascent_candidates_after_diagnostics_and_registers_arms() -> None:
    base = default_config()
    arm = with_re_rank(base, near_duplicate_threshold=0.8)
    # two ascent candidates: the sampler fills the third slot
    brain = OfflineBrain(seed=1, objectives=(Objective("clicks_per_request"),), ascent=AscentSettings(candidates=2))
    brain.register_arm("e1.c", base)
    brain.register_arm("e1.t1", arm)
    readings = (reading("e1.c", 0.70, 0.004), reading("e1.t1", 0.77, 0.004))
    proposals: list[Proposal] = await brain.propose(
        ProposalContext(surface="home", incumbent=base, k=3, metrics=readings, max_changes=3)
    )
    assert len(proposals) == 3
    assert proposals[0].title.startswith("offline ascent")
    # the winning move continues: the threshold goes down again from the incumbent
    first = {c.name: c.value for c in proposals[0].changes}
    threshold = first["re_rank.near_duplicate_threshold"]
    assert isinstance(threshold, float) and threshold < base.re_rank.near_duplicate_threshold
    assert any("1 past arm" in note for note in brain.last_ascent)
    assert proposals[-1].title.startswith("offline tpe")
    # by default every slot of k = 3 is an ascent candidate (the sampler fills only what the model cannot)
    default = OfflineBrain(seed=1, objectives=(Objective("clicks_per_request"),))
    default.register_arm("e1.c", base)
    default.register_arm("e1.t1", arm)
    context = ProposalContext(surface="home", incumbent=base, k=3, metrics=readings, max_changes=3)
    assert [p.title.split(" ")[1] for p in await default.propose(context)] == ["ascent"] * 3


async def test_the_offline_brain_remembers_reads_the_loop_no_longer_sends() -> None:
    base = default_config()
    brain = OfflineBrain(seed=2, objectives=(Objective("clicks_per_request"),))
    brain.register_arm("e1.c", base)
    brain.register_arm("e1.t1", with_re_rank(base, near_duplicate_threshold=0.8))
    first = (reading("e1.c", 0.70, 0.004), reading("e1.t1", 0.77, 0.004))
    await brain.propose(ProposalContext(surface="home", incumbent=base, k=2, metrics=first, max_changes=3))
    assert any("1 past arm" in note for note in brain.last_ascent)
    # the loop's 64-reading window has moved on: e1's reads are no longer sent, the model still has them
    await brain.propose(ProposalContext(surface="home", incumbent=base, k=2, metrics=(), max_changes=3))
    assert any("1 past arm" in note for note in brain.last_ascent)


def test_steps_known_to_cost_the_guardrail_metric_are_not_proposed() -> None:
    """Lowering the threshold won the objective but cost conversions: the ascent keeps the win, not that step."""
    from agents.ascent import harmful_directions

    threshold = "re_rank.near_duplicate_threshold"
    guard = fit_effects([ArmEffect("e1.t1", ((threshold, -1.0),), -0.06, 0.005)], NAMES, prior_sd=0.03)
    assert harmful_directions(guard, 0.02) == frozenset({(threshold, -1)})
    flat = fit_effects([ArmEffect("e1.t1", ((threshold, -1.0),), -0.001, 0.005)], NAMES, prior_sd=0.03)
    assert harmful_directions(flat, 0.02) == frozenset()

    base = default_config()
    arm = with_re_rank(base, near_duplicate_threshold=0.8)
    configs = {"e1.c": base, "e1.t1": arm}
    readings = (
        reading("e1.c", 0.70, 0.004),
        reading("e1.t1", 0.77, 0.004),  # the objective liked the lower threshold...
        reading("e1.c", 0.050, 0.0002, name="conversion_rate"),
        reading("e1.t1", 0.046, 0.0002, name="conversion_rate"),  # ...conversions fell 8%
    )
    context = ProposalContext(surface="home", incumbent=base, k=2, metrics=readings, max_changes=3)

    inputs = inputs_for(configs)
    proposals, notes = ascent_candidates(context, CriticRules(), AscentSettings(candidates=2), inputs)
    assert any("known to cost conversion_rate" in note and threshold in note for note in notes)
    for proposal in proposals:
        assert proposal.config.re_rank.near_duplicate_threshold >= base.re_rank.near_duplicate_threshold
    off = AscentSettings(candidates=1, guard_metric=None)
    greedy, _ = ascent_candidates(context, CriticRules(), off, inputs)
    assert greedy[0].config.re_rank.near_duplicate_threshold < base.re_rank.near_duplicate_threshold


def test_a_draw_from_the_prior_is_not_sold_as_an_expected_gain() -> None:
    """With no evidence the posterior mean is 0: the text says so, and names the draw's figure as a draw."""
    brain = OfflineBrain(seed=3, objectives=(Objective("clicks_per_request"),))
    proposals = brain.propose_sync(ProposalContext(surface="home", incumbent=default_config(), k=3, max_changes=3))
    drawn = [p for p in proposals if p.title.startswith("offline ascent")]
    assert drawn
    for proposal in drawn:
        # the prior's sd of a move of 1, 2 or 3 parameters at one trust step each: 3% * sqrt(k)
        assert re.match(r"offline ascent \(\+0% ± (3|4\.2|5\.2)% expected\)", proposal.title), proposal.title
        for change in (c for c in proposal.changes if "lift model" in c.hypothesis):  # not a floor companion
            assert "expects +0% on the objective" in change.hypothesis, change.hypothesis
            assert "(the posterior draw: " in change.hypothesis


def test_a_move_has_the_posterior_mean_and_sd_of_its_summed_effects() -> None:
    prior = fit_effects([], NAMES, prior_sd=0.03)
    assert prior.move([(NAMES[0], 1.0), (NAMES[1], -1.0)]) == pytest.approx((0.0, 0.03 * math.sqrt(2)))
    effects = [ArmEffect("e1.t1", ((NAMES[0], 1.0), (NAMES[1], 1.0)), 0.04, 0.005)]
    model = fit_effects(effects, NAMES, prior_sd=0.03)
    mean, sd = model.move([(NAMES[0], 1.0), (NAMES[1], 1.0)])
    assert mean == pytest.approx(float(model.mean[0] + model.mean[1]))
    assert sd == pytest.approx(math.sqrt(float(model.cov[0, 0] + model.cov[1, 1] + 2 * model.cov[0, 1])))
    assert sd < model.sd(NAMES[0])  # the read pins the sum down better than either part
    assert model.move([(NAMES[0], 1.0), (NAMES[1], -1.0)])[1] > 0.03  # the difference stays unknown
