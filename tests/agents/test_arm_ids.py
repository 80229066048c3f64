"""The arm-id grammar every reader of an experiment's arms shares (pure: no services)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.arm_ids import (
    ArmIdError,
    ArmName,
    control_arm_id,
    is_experiment_arm,
    is_pre_period_arm,
    parse_arm_id,
    pre_period_id,
    treatment_arm_id,
)
from agents.loop_baseline import pre_period_allocation
from agents.online import Baseline, Candidate, OnlineAgent, OnlinePolicy, TrafficEstimate

EXPERIMENTS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_:\-.]{0,30}", fullmatch=True).filter(
    lambda s: not s.endswith(".pre")
)


def test_ids_the_online_agent_writes_parse_back() -> None:
    assert control_arm_id("exp-1d42") == "exp-1d42.c"
    assert treatment_arm_id("exp-1d42", 2) == "exp-1d42.t2"
    assert parse_arm_id("exp-1d42.c") == ArmName("exp-1d42", 0)
    assert parse_arm_id("exp-1d42.t12") == ArmName("exp-1d42", 12)
    assert parse_arm_id("exp-1d42.pre.t1") == ArmName("exp-1d42", 1, pre_period=True)
    assert parse_arm_id("exp-1d42.t12").control.arm_id == "exp-1d42.c"  # type: ignore[union-attr]
    assert parse_arm_id("exp-1d42.pre.t1").control.arm_id == "exp-1d42.pre.c"  # type: ignore[union-attr]


@pytest.mark.parametrize("arm_id", ["control", "holdout", "exp.t0", "exp.t", "exp.x1", ".c", "exp.c.extra", "exp.T1"])
def test_other_ids_are_not_experiment_arms(arm_id: str) -> None:
    assert parse_arm_id(arm_id) is None
    assert not is_experiment_arm(arm_id)
    assert not is_pre_period_arm(arm_id)


def test_pre_period_ids() -> None:
    assert pre_period_id("exp-9", "exp-9.c") == "exp-9.pre.c"
    assert pre_period_id("exp-9", "exp-9.t3") == "exp-9.pre.t3"
    assert is_pre_period_arm("exp-9.pre.t3") and is_experiment_arm("exp-9.pre.t3")
    assert not is_pre_period_arm("exp-9.t3")
    for experiment, arm in (("exp-9", "exp-8.t1"), ("exp-9", "exp-9.pre.t1"), ("exp-9", "control")):
        with pytest.raises(ArmIdError, match="arm_id"):
            pre_period_id(experiment, arm)


def test_bad_inputs_name_the_field() -> None:
    with pytest.raises(ArmIdError, match="index"):
        treatment_arm_id("exp", 0)
    with pytest.raises(ArmIdError, match="experiment_id"):
        control_arm_id("")


@given(EXPERIMENTS, st.integers(min_value=0, max_value=10_000), st.booleans())
def test_round_trip(experiment: str, index: int, pre: bool) -> None:
    name = ArmName(experiment, index, pre)
    assert parse_arm_id(name.arm_id) == name
    if not pre:
        written = control_arm_id(experiment) if index == 0 else treatment_arm_id(experiment, index)
        assert written == name.arm_id
        assert parse_arm_id(pre_period_id(experiment, written)) == ArmName(experiment, index, pre_period=True)


@given(st.text(max_size=40))
def test_parse_never_raises(arm_id: str) -> None:
    name = parse_arm_id(arm_id)
    assert name is None or name.arm_id == arm_id


def test_the_planner_and_the_pre_period_write_the_grammar() -> None:
    """A real plan's arms parse as control + treatments 1..K, and the loop's A/A arms as their pre-period twins."""
    traffic = TrafficEstimate(requests_per_second=50.0)
    baseline = Baseline(value=0.5, variance_per_request=0.3)
    candidates = [Candidate(proposal_id=f"p-{i}", config_version=i + 2) for i in range(2)]
    state, _ = OnlineAgent(OnlinePolicy(surface="home", target_mde=0.5)).plan(candidates, 1, traffic, baseline, 0)
    assert state is not None
    plan = state.plan
    assert [parse_arm_id(a) for a in plan.arm_ids] == [ArmName(plan.experiment_id, i) for i in range(3)]
    twins = [parse_arm_id(a.arm_id) for a in pre_period_allocation(plan).arms]
    assert twins == [ArmName(plan.experiment_id, i, pre_period=True) for i in range(3)]
