"""The loop's observed latency (`agents.loop_latency`) and the Critic judging on it instead of the prior."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from agents.critic import LatencyModel
from agents.experiment import ArmSpec
from agents.loop_baseline import pre_period_arm
from agents.loop_latency import incumbent_p99, latency_model, observe_latency
from agents.stats.proofs import simulated_totals
from agents.stats.simulate import TrafficModel, simulate_experiment
from schemas.config import default_config
from schemas.metrics import latency_quantile

MODEL = TrafficModel()


def _plan(control: int = 1, treatments: tuple[int, ...] = (2, 3)) -> object:
    from types import SimpleNamespace

    return SimpleNamespace(
        experiment_id="e",
        control=ArmSpec(arm_id="e.c", config_version=control),
        treatments=tuple(ArmSpec(arm_id=f"e.t{i}", config_version=v) for i, v in enumerate(treatments, start=1)),
    )


def _totals(latency: dict[str, float]) -> dict[str, object]:
    n = len(latency)
    model = dataclasses.replace(MODEL, shares=(1.0 / n,) * n)
    exp = simulate_experiment(model, [0.0] * n, np.random.default_rng(5))
    return simulated_totals(exp, -1, list(latency), latency_ms=latency)  # type: ignore[return-value]


def test_observe_latency_keeps_each_served_version_and_the_latest_reading() -> None:
    plan = _plan()
    totals = _totals({"e.c": 20.0, "e.t1": 30.0, "e.t2": 45.0})
    seen = observe_latency((), plan, totals, 1_000.0)  # type: ignore[arg-type]
    assert [v for v, _ in seen] == [1, 2, 3]
    by_version = dict(seen)
    for arm, version in (("e.c", 1), ("e.t1", 2), ("e.t2", 3)):
        assert by_version[version] == latency_quantile(totals[arm].latency_hist, 0.99)  # type: ignore[attr-defined]
    assert by_version[1] < by_version[2] < by_version[3]
    later = observe_latency(seen, plan, _totals({"e.c": 20.0, "e.t1": 60.0, "e.t2": 45.0}), 1_000.0)  # type: ignore[arg-type]
    assert dict(later)[2] > by_version[2] and [v for v, _ in later][-1] == 3
    # too few requests: nothing is read
    assert observe_latency((), plan, totals, 1e12) == ()  # type: ignore[arg-type]


def test_pre_period_arms_give_the_incumbents_latency_until_its_own_arm_has_one() -> None:
    plan = _plan()
    pre = {pre_period_arm(plan, a): 25.0 for a in ("e.c", "e.t1", "e.t2")}  # type: ignore[arg-type]
    seen = observe_latency((), plan, _totals(pre), 1_000.0)  # type: ignore[arg-type]
    assert [v for v, _ in seen] == [1]


def test_latency_model_falls_back_to_the_prior_and_scales_it_to_what_was_seen() -> None:
    prior = LatencyModel()
    start = default_config()
    assert latency_model(prior, (), {}, incumbent=start, baseline=[], min_requests=1.0, surface="home") is prior
    base = [_totals({"control": 18.0, "other": 18.0})["control"]]
    model = latency_model(prior, (), {}, incumbent=start, baseline=base, min_requests=1.0, surface="home")  # type: ignore[arg-type]
    observed = latency_quantile(base[0].latency_hist, 0.99)  # type: ignore[attr-defined]
    assert model.source == "scaled_prior" and model.predict(start, "home") == pytest.approx(observed)
    assert prior.predict(start, "home") == pytest.approx(72.0)


def test_the_incumbents_measured_p99_comes_from_its_baseline_traffic_else_its_last_reading() -> None:
    base = [_totals({"control": 18.0, "other": 18.0})["control"]]
    measured = latency_quantile(base[0].latency_hist, 0.99)  # type: ignore[attr-defined]
    seen = ((1, 40.0), (2, 55.0))
    assert incumbent_p99(seen, 2, base, 1.0) == pytest.approx(measured)  # type: ignore[arg-type]
    assert incumbent_p99(seen, 2, base, 1e12) == 55.0  # type: ignore[arg-type]  # too little baseline traffic
    assert incumbent_p99(seen, 2, [], 1.0) == 55.0
    assert incumbent_p99(seen, 3, [], 1.0) is None
