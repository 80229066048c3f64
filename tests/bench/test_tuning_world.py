"""The tuning bench's shared world (`bench/_tuning_world.py`): what every bench tool builds, runs and scores."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from schemas.config import default_config

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
tw: Any = importlib.import_module("_tuning_world")


def test_a_bench_world_starts_from_the_default_config_with_the_scenarios_preset() -> None:
    bw = tw.bench_world("apparel_thin", 4, 2.0, "user")
    assert bw.scenario.name == "apparel_thin"
    assert bw.seed == 4
    assert bw.budget_s == 2.0 * 86_400.0
    assert bw.start == default_config()
    assert bw.preset.policy.randomization_unit == "user"
    assert tw.bench_world("apparel_thin", 4, 2.0).preset.policy.randomization_unit == "request"
    changed = bw.with_preset(tw.bench_world("apparel_thin", 4, 1.0).preset)
    assert changed.world is bw.world
    assert changed.budget_s == bw.budget_s
    assert changed.preset.policy.horizon_s < bw.preset.policy.horizon_s


def test_the_truth_cache_reads_the_world_once_per_config_and_week() -> None:
    bw = tw.bench_world("apparel_thin", 0, 1.0)
    calls: list[float] = []
    real = bw.world.expected

    class Counting:
        scenario = bw.world.scenario

        def expected(self, config: Any, at_s: float) -> Any:
            calls.append(at_s)
            return real(config, at_s=at_s)

    truth = tw.TruthCache(Counting())
    day = 86_400.0
    first = truth(bw.start, 1.0 * day)
    assert truth(bw.start, 6.0 * day) is first, "the same week: read from the cache"
    assert calls == [0.0], "read at the week's start"
    truth(bw.start, 8.0 * day)
    assert calls == [0.0, tw.WEEK_S]
    re_rank = msgspec.structs.replace(bw.start.re_rank, list_size=bw.start.re_rank.list_size - 2)
    other = msgspec.structs.replace(bw.start, re_rank=re_rank)
    assert truth(other, 2.0 * day).value != first.value
    assert first.value == pytest.approx(float(real(bw.start, at_s=0.0).north_star))
