"""The per-arm trace (`bench/arm_trace.py`): joining served arms with the loop's decision records, and true lifts."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import pytest

from rectune.simloop import ServedArm, SimStep

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
at: Any = importlib.import_module("arm_trace")

DAY_S = 86_400.0


def step(index: int, start_s: float, control: int, *arms: tuple[str, int]) -> SimStep:
    served = tuple(ServedArm(arm_id, version, 1.0 / len(arms), 100.0) for arm_id, version in arms)
    return SimStep(index, start_s, 3_600.0, control, served, "running")


def decision(kind: str, experiment: str, reason: str, *, arm: str | None = None, ends: bool = False) -> dict[str, Any]:
    payload = {"kind": kind, "experiment_id": experiment, "arm_id": arm, "reasons": [reason], "ends_experiment": ends}
    return {"kind": "decision", "payload": payload}


STEPS = [
    step(0, 0.0, 1, ("control", 1)),
    step(1, 3_600.0, 1, ("e1.c", 1), ("e1.pre.t1", 1)),  # A/A pre-period: serves the incumbent, not an arm
    step(2, 7_200.0, 1, ("e1.c", 1), ("e1.t1", 2), ("e1.t2", 3)),
    step(3, 8 * DAY_S, 2, ("e1.c", 2), ("e1.t2", 3)),  # a later step of e1.t2 does not move its start
    step(4, 9 * DAY_S, 2, ("e2.c", 2), ("e2.t1", 4)),
    step(5, 10 * DAY_S, 2, ("e3.c", 2), ("e3.t1", 5)),
]
RECORDS = [
    {"kind": "proposal", "payload": {"proposals": []}},  # no "kind" in the payload: skipped
    {
        "kind": "allocation",
        "payload": {"kind": "allocate", "experiment_id": "e1", "figures": [{"name": "mde_relative", "value": 0.08}]},
    },
    {
        "kind": "allocation",
        "payload": {"kind": "allocate", "experiment_id": "e1", "figures": [{"name": "mde_relative", "value": 0.5}]},
    },
    decision("stop_arm", "e1", "futile", arm="e1.t2"),
    decision("promote", "e1", "winner", arm="e1.t1", ends=True),
    decision("rollback", "e1", "late breach", arm="e1.t1"),  # not the arm's first ending
    decision("stop", "e2", "horizon reached", ends=True),
]


def test_first_arms_keep_each_treatment_arms_first_step_and_skip_pre_period_and_control() -> None:
    assert at.first_arms(STEPS) == {
        "e1.t1": (2, 1, 7_200.0),
        "e1.t2": (3, 1, 7_200.0),
        "e2.t1": (4, 2, 9 * DAY_S),
        "e3.t1": (5, 2, 10 * DAY_S),
    }


def test_endings_take_the_first_decision_per_arm_the_experiments_end_and_its_first_mde() -> None:
    arm_end, exp_end, mde = at.endings(RECORDS)
    assert arm_end == {"e1.t2": "stop_arm: futile", "e1.t1": "promote: winner"}
    assert exp_end == {"e1": "experiment promote: winner", "e2": "experiment stop: horizon reached"}
    assert mde == {"e1": 0.08}


def test_rows_fall_back_to_the_experiments_end_then_to_still_running() -> None:
    rows = {row.arm_id: row for row in at.arm_rows(STEPS, at.endings(RECORDS))}
    assert [rows[a].ending for a in ("e1.t1", "e1.t2", "e2.t1", "e3.t1")] == [
        "promote: winner",
        "stop_arm: futile",
        "experiment stop: horizon reached",
        "still running at the end of the budget",
    ]
    assert rows["e2.t1"].experiment_id == "e2" and rows["e2.t1"].control_version == 2


def test_true_lift_compares_arm_and_control_in_the_week_the_arm_started() -> None:
    seen: list[tuple[int, float]] = []

    def value(version: int, at_s: float) -> float:
        seen.append((version, at_s))
        return {2: 0.55, 4: 0.66}[version] if at_s == 7 * DAY_S else 0.0

    row = at.ArmRow("e2", "e2.t1", 4, 2, 9 * DAY_S, "")
    assert at.true_lift(row, value) == pytest.approx(0.2)
    assert seen == [(4, 7 * DAY_S), (2, 7 * DAY_S)]


def test_summary_counts_good_arms_by_the_kind_of_their_ending() -> None:
    lifts = [(0.03, "stop_arm: futile"), (0.02, "stop_arm: futile"), (0.05, "promote: x"), (0.005, "stop_arm: y")]
    assert at.summary(lifts) == {"stop_arm": 2, "promote": 1}


def test_one_arm_mde_is_the_median_over_experiments_with_a_single_treatment_arm() -> None:
    records = [
        *RECORDS,
        {
            "kind": "allocation",
            "payload": {
                "kind": "allocate",
                "experiment_id": "e2",
                "figures": [{"name": "mde_relative", "value": 0.02}],
            },
        },
        {
            "kind": "allocation",
            "payload": {
                "kind": "allocate",
                "experiment_id": "e3",
                "figures": [{"name": "mde_relative", "value": 0.04}],
            },
        },
    ]
    # e1 has two treatment arms (its 8% MDE is left out); e2 and e3 one each
    assert at.one_arm_mde(STEPS, records) == pytest.approx(0.03)
    assert at.one_arm_mde(STEPS[:3], records) is None


def test_a_step_needs_the_horizon_scaled_by_the_squared_ratio_of_mde_to_gain() -> None:
    resolution = at.Resolution(mde=0.02, horizon_days=1.5, budget_days=28.0)
    assert resolution.days_for(0.02) == pytest.approx(1.5)
    assert resolution.days_for(0.01) == pytest.approx(6.0)  # half the lift: four times the traffic
    assert resolution.days_for(0.0) == float("inf")
