"""The tuning benchmark's baseline methods (`bench/_tuning_methods.py`) on a tiny deterministic fake world."""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from agents.experiment import MetricSpec
from schemas.config import Allocation, CascadeConfig, default_config
from schemas.guardrails import Guardrails
from schemas.metrics import FIELD_INDEX, N_FIELDS, N_LATENCY_BINS, ArmTotals
from serving_sidecar.assignment import ArmTable

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
tm: Any = importlib.import_module("_tuning_methods")

METRIC = MetricSpec(name="cpr", numerator="clicks", denominator="requests")
DAY_S = 86_400.0


class FakeWorld:
    """Clicks per request = 1 + 0.3·max(0, list_size − 12) (each longer list a clear winner), Poisson noise."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, float]] = []

    @staticmethod
    def value(config: CascadeConfig) -> float:
        return 1.0 + 0.3 * max(0, config.re_rank.list_size - 12)

    def simulate(
        self,
        allocation: Allocation,
        configs: Mapping[int, CascadeConfig],
        *,
        start_s: float,
        duration_s: float,
        rng: np.random.Generator,
        surface: str = "home",
        buckets: int = 64,
        window_s: float = 60.0,
    ) -> dict[str, ArmTotals]:
        self.calls.append((allocation.experiment_id, start_s, duration_s))
        table = ArmTable.from_allocation(allocation)
        out = {}
        for i, arm in enumerate(allocation.arms):
            requests = rng.poisson(2.0 * duration_s * table.share_of(i) / buckets, size=buckets).astype(float)
            sums = np.zeros((N_FIELDS, buckets))
            sums[FIELD_INDEX["requests"]] = requests
            sums[FIELD_INDEX["clicks"]] = rng.poisson(requests * self.value(configs[arm.config_version]))
            hist = np.zeros(N_LATENCY_BINS, np.int64)
            out[arm.arm_id] = ArmTotals(surface, arm.arm_id, sums, hist, int(requests.sum()), 0, 1)
        return out


def test_space_box_respects_schema_bounds_and_guardrails() -> None:
    rails = Guardrails()
    box = {d.name: d for d in tm.space_box(default_config(), rails)}
    assert box["pre_rank.candidate_cut"].high == rails.max_candidate_cut and box["pre_rank.candidate_cut"].log
    assert box["rank.cut"].high == rails.max_rank_cut
    assert box["re_rank.max_per_category"].high == rails.max_per_category_ceiling
    assert box["re_rank.mmr_lambda"].low == rails.min_mmr_lambda
    assert box["re_rank.exploration_rate"].high == rails.max_exploration_rate
    assert box["rank.combination"].choices == ("weighted_product", "weighted_sum")


def test_random_and_tpe_draw_valid_configs_in_the_box() -> None:
    rails = Guardrails()
    random_search = tm.RandomSearch(default_config(), rails, np.random.default_rng(3))
    tpe = tm.TpeSearch(default_config(), rails, seed=3)
    for proposer in (random_search, tpe):
        for _ in range(15):
            config = proposer.propose(default_config())
            rails.check(config)
            assert config.rank.cut <= config.pre_rank.candidate_cut
            assert config.re_rank.list_size <= config.rank.cut
            assert config.re_rank.sponsored_quota <= len(config.re_rank.sponsored_positions)
            proposer.tell(1.0)
    assert len(tpe.study.trials) >= 15


class AlwaysLonger:
    """A proposer whose every challenger is the clear winner (a longer list)."""

    def __init__(self) -> None:
        self.told: list[float | None] = []

    def propose(self, incumbent: CascadeConfig) -> CascadeConfig:
        size = incumbent.re_rank.list_size + 1
        return msgspec.structs.replace(incumbent, re_rank=msgspec.structs.replace(incumbent.re_rank, list_size=size))

    def tell(self, measured: float | None) -> None:
        self.told.append(measured)


def test_ab_search_promotes_a_clear_winner_and_keeps_time_consistent() -> None:
    world, proposer = FakeWorld(), AlwaysLonger()
    trace = tm.run_ab_search(
        world,
        proposer,
        method="fixed",
        start=default_config(),
        metric=METRIC,
        budget_s=2.5 * DAY_S,
        horizon_s=DAY_S,
        step_s=6 * 3600.0,
        seed=1,
    )
    assert trace.experiments == 3  # two full tests and one cut short by the budget
    assert len(trace.promotions) == 2 and trace.final.re_rank.list_size == 14
    assert proposer.told[:2] == [pytest.approx(1.3, rel=0.02), pytest.approx(1.6, rel=0.02)]
    assert proposer.told[2] is None  # the unfinished test is never judged
    assert sum(s.duration_s for s in trace.steps) == pytest.approx(2.5 * DAY_S)
    assert all(math.isclose(sum(a.share for a in s.served), 1.0) for s in trace.steps)
    assert [p.at_s for p in trace.promotions] == [DAY_S, 2 * DAY_S]


def test_no_promotion_without_a_significant_difference() -> None:
    class Same(AlwaysLonger):
        def propose(self, incumbent: CascadeConfig) -> CascadeConfig:
            return msgspec.structs.replace(incumbent, re_rank=msgspec.structs.replace(incumbent.re_rank, list_size=11))

    trace = tm.run_ab_search(
        FakeWorld(),
        Same(),
        method="same",
        start=default_config(),
        metric=METRIC,
        budget_s=2 * DAY_S,
        horizon_s=DAY_S,
        step_s=DAY_S / 4,
        seed=2,
    )
    assert trace.experiments == 2 and trace.promotions == ()  # value 1.0 vs 1.0 (both lists <= 12)


def test_static_serves_the_start_config_over_the_budget() -> None:
    world = FakeWorld()
    trace = tm.run_static(world, start=default_config(), budget_s=DAY_S, step_s=DAY_S / 3, seed=0)
    assert len(trace.steps) == 3 and trace.final == trace.start == default_config()
    assert all(s.served[0].share == 1.0 and s.requests > 0 for s in trace.steps)
    assert [c[0] for c in world.calls] == ["control"] * 3
