"""The real agents loop on the simulated world (`rectune.simloop`): end to end on a shipped scenario, in process."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import Counter

import pytest

from rectune.simloop import (
    CONTROL_ARM,
    SimTrace,
    north_star_metric,
    preset_for,
    run_simloop,
    serving_mix,
)
from schemas.config import default_config
from schemas.config_log import ServingState
from simulator.scenario import load_scenario, shipped_scenarios
from simulator.world import World

DAY_S = 86_400.0
SCENARIO = "apparel_core" if "apparel_core" in shipped_scenarios() else shipped_scenarios()[0]


@pytest.fixture(scope="module")
async def trace() -> SimTrace:
    """Six simulated days; the gate's target is loose so experiments launch at this traffic (plumbing, not power)."""
    world = World(load_scenario(SCENARIO), seed=0)
    preset = preset_for(world.scenario, 6 * DAY_S, target_mde=0.5)
    return await run_simloop(world, budget_s=6 * DAY_S, seed=0, preset=preset, target_from_pilot=False)


def test_preset_is_derived_from_the_scenario_and_the_budget() -> None:
    scenario = load_scenario(SCENARIO)
    short, long = preset_for(scenario, 7 * DAY_S), preset_for(scenario, 70 * DAY_S)
    assert short.policy.primary == north_star_metric(scenario)
    assert (short.policy.primary.numerator, short.policy.primary.denominator) == scenario.north_star
    assert short.policy.guardrails.latency_p99_slo_ms == scenario.latency_slo_ms
    assert short.settings.rules.latency_budget_ms == scenario.latency_slo_ms
    assert long.policy.horizon_s == pytest.approx(10 * short.policy.horizon_s)
    assert long.step_s >= short.step_s
    assert short.policy.min_stage_requests == pytest.approx(
        0.5 * scenario.requests_per_s * short.policy.min_dwell_s[0] * short.policy.stages[0]  # type: ignore[index]
    )
    with pytest.raises(ValueError, match="budget_s"):
        preset_for(scenario, 0.0)


async def test_the_loop_runs_proposal_critique_ramp_and_decision(trace: SimTrace) -> None:
    kinds = Counter(r["kind"] for r in trace.records)
    assert kinds["proposal"] >= 1 and kinds["critique"] >= 1 and kinds["interim_read"] >= 1
    decisions = trace.decision_kinds()
    assert "allocate" in decisions and "ramp" in decisions, decisions
    assert {"promote", "stop", "stop_arm", "rollback"} & set(decisions), decisions
    assert trace.experiments() == decisions.count("allocate") >= 1
    assert trace.history, "a finished experiment is in the loop's history"


async def test_served_mix_follows_the_config_log(trace: SimTrace) -> None:
    assert trace.steps[0].served[0].arm_id == CONTROL_ARM and trace.steps[0].control_version == 1
    assert trace.start == default_config()
    total = sum(s.duration_s for s in trace.steps)
    assert total == pytest.approx(trace.budget_s)
    for before, after in itertools.pairwise(trace.steps):
        assert after.start_s == pytest.approx(before.start_s + before.duration_s)
    experiment_steps = 0
    for step in trace.steps:
        assert math.isclose(sum(a.share for a in step.served), 1.0, abs_tol=1e-9)
        assert step.requests > 0 and all(a.config_version in trace.configs for a in step.served)
        assert step.served[0].config_version == step.control_version  # control first, serving the incumbent
        if len(step.served) > 1:
            experiment_steps += 1
            prefix = step.served[0].arm_id.removesuffix(".c")
            assert all(a.arm_id.startswith(prefix) for a in step.served)
            assert all(a.requests > 0 for a in step.served if a.share >= 0.05)
        else:
            assert step.served[0].arm_id == CONTROL_ARM
    assert experiment_steps >= 1
    # the ramp is visible in the served shares: a first stage at 10% treatment, then 50%
    treatment = {round(sum(a.share for a in s.served[1:]), 2) for s in trace.steps if len(s.served) > 1}
    assert {0.1, 0.5} <= treatment


async def test_promotions_and_control_versions_are_consistent(trace: SimTrace) -> None:
    versions = [s.control_version for s in trace.steps]
    changes = [(i, a, b) for i, (a, b) in enumerate(itertools.pairwise(versions)) if a != b]
    by_step = {p.step: p for p in trace.promotions}
    for i, old, new in changes:
        assert i in by_step, f"control changed at step {i} without a promotion (a rollback restores, never promotes)"
        assert (by_step[i].old_version, by_step[i].new_version) == (old, new)
        assert "promote" in trace.steps[i].decisions
    final = trace.promotions[-1].new_version if trace.promotions else 1
    assert trace.final_version == final and trace.final == trace.configs[final]


def test_serving_mix_without_an_experiment_is_one_control_arm() -> None:
    with pytest.raises(ValueError, match="no control"):
        serving_mix(ServingState())
    config = default_config()
    state = dataclasses.replace(ServingState(), version=1, control_version=1, configs={1: config})
    allocation, configs = serving_mix(state)
    assert [(a.arm_id, a.config_version, a.share) for a in allocation.arms] == [(CONTROL_ARM, 1, 1.0)]
    assert configs == {1: config}


def test_the_simulated_operator_counts_consecutive_power_gate_refusals() -> None:
    from rectune.simloop import _gate_refusals

    def record(kind: str, payload_kind: str, mde: float | None = None) -> dict[str, object]:
        figures = [] if mde is None else [{"name": "mde_relative", "value": mde}]
        return {"kind": kind, "payload": {"kind": payload_kind, "figures": figures}}

    refusals, resolvable = _gate_refusals([record("decision", "refuse", 0.08)], 0)
    assert (refusals, resolvable) == (1, 0.08)
    refusals, resolvable = _gate_refusals([record("decision", "refuse", 0.07), record("decision", "refuse", 0.06)], 1)
    assert (refusals, resolvable) == (3, 0.06)  # the last refusal's MDE is what the operator would read
    assert _gate_refusals([record("decision", "refuse")], 2)[0] == 2  # no candidate to gate: not a gate refusal
    assert _gate_refusals([record("decision", "refuse", math.inf)], 2)[0] == 2  # nothing resolvable: no figure
    assert _gate_refusals([record("allocation", "allocate")], 2)[0] == 0  # a launch resets the count
    assert _gate_refusals([record("decision", "hold_for_approval")], 2)[0] == 0
