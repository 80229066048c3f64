"""`bench/ope_screen.py`: one rate's figures on a few requests of the demo world."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import msgspec

from schemas.config import CascadeConfig
from simulator.scenario import load_scenario
from simulator.world import World

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
bench: Any = importlib.import_module("ope_screen")


def test_a_rate_reports_cost_and_a_verdict_per_candidate() -> None:
    world = World(load_scenario("apparel_core"), seed=7)
    start = msgspec.json.decode(bench.START.read_bytes(), type=CascadeConfig)
    out = bench.run_rate(world, start, 0.1, 40, seed=1)
    assert out["requests"] == 40 and out["replay_over_rank_per_candidate"] > 0.0
    assert [v["candidate"] for v in out["verdicts"]] == list(bench.candidates_for(start))
    for v in out["verdicts"]:
        assert v["ci95"][0] <= v["estimate"] <= v["ci95"][1]
        assert v["kept"] or v["reliable"], "an unreliable estimate never drops a candidate"
    assert out["reliable"] == sum(1 for v in out["verdicts"] if v["reliable"])
