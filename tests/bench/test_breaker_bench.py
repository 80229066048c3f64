"""`bench/breaker.py`: the same windows judged by the breaker's test and by the p99 read, summarised as JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import breaker as bb


def test_a_slow_arm_trips_both_rules_and_a_fast_one_neither() -> None:
    rng = np.random.default_rng(1)
    demo = bb.PRESETS[1]
    assert all(t < 60 and r < 60 for t, r in (bb.first_trips(demo, 80.0, 2.0, rng) for _ in range(3)))
    assert all(t == r == float("inf") for t, r in (bb.first_trips(demo, 40.0, 2.0, rng) for _ in range(3)))


def test_an_arm_just_under_the_slo_trips_the_read_but_not_the_test() -> None:
    rng = np.random.default_rng(2)
    trips = [bb.first_trips(bb.PRESETS[1], 49.0, 5.0, rng) for _ in range(5)]
    assert sum(r < float("inf") for _, r in trips) >= 3, "the p99 read of a 49 ms arm goes over 50 ms within minutes"
    assert all(t == float("inf") for t, _ in trips)


def test_the_last_line_is_one_json_object_with_a_cell_per_preset_and_p99(capsys: pytest.CaptureFixture[str]) -> None:
    assert bb.main(["--runs", "1", "--minutes", "0.5"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["runs"] == 1 and len(summary["breaker"]) == len(bb.PRESETS)
    for cells in summary["breaker"].values():
        assert set(cells) == {"45", "48", "50", "53", "56", "60", "80"}
