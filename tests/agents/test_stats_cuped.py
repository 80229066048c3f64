"""CUPED for ratio metrics: reduces variance when the pre-period correlates, stays unbiased, refuses bad covariates."""

from __future__ import annotations

import numpy as np
import pytest

from agents.stats.cuped import cuped_arrays, cuped_from_sums, cuped_ratio
from agents.stats.errors import StatsError
from agents.stats.ratio import ratio_estimate
from agents.stats.simulate import SimulatedExperiment, TrafficModel, simulate_experiment
from schemas.metrics import FIELD_INDEX, N_FIELDS

MODEL = TrafficModel(users=8_000, looks=1)


def _pairs(exp: SimulatedExperiment) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[tuple[np.ndarray, np.ndarray]]]:
    current = [(exp.clicks[a, -1], exp.impressions[a, -1]) for a in range(exp.clicks.shape[0])]
    pre = [(exp.pre_clicks[a], exp.pre_impressions[a]) for a in range(exp.clicks.shape[0])]
    return current, pre


def test_cuped_reduces_variance_and_is_unbiased() -> None:
    rng = np.random.default_rng(7)
    lift = 0.05
    adjusted, raw, adjusted_var, reduction = [], [], [], []
    for _ in range(300):
        fit = cuped_ratio(*_pairs(simulate_experiment(MODEL, [0.0, lift], rng)))
        c = fit.compare(1)
        adjusted.append(c.difference)
        raw.append(fit.arms[1].raw_value - fit.arms[0].raw_value)
        adjusted_var.append(c.difference_variance)
        reduction.append(fit.variance_reduction(1))
    adj, raw_d = np.array(adjusted), np.array(raw)
    # Pre-period propensities are the users' own, so CUPED removes a large share of the variance.
    assert np.mean(reduction) < 0.8
    assert np.var(adj, ddof=1) < 0.8 * np.var(raw_d, ddof=1)
    # Unbiased: the adjusted mean difference matches the true one (lift × 5% CTR) within Monte Carlo error.
    se = np.std(adj, ddof=1) / np.sqrt(adj.size)
    assert abs(adj.mean() - lift * MODEL.mean_ctr) < 4 * se
    # The adjusted delta-method variance is right: empirical variance over runs ≈ mean estimate (±20%).
    assert np.mean(adjusted_var) == pytest.approx(np.var(adj, ddof=1), rel=0.2)


def test_uncorrelated_covariate_changes_little() -> None:
    rng = np.random.default_rng(8)
    ratios = []
    for _ in range(40):
        exp = simulate_experiment(MODEL, [0.0, 0.0], rng)
        current, _ = _pairs(exp)
        noise = [(rng.poisson(30, 64).astype(float), np.full(64, 600.0)) for _ in range(2)]
        ratios.append(cuped_ratio(current, noise).variance_reduction(1))
    assert 0.9 < float(np.mean(ratios)) <= 1.0


def test_perfect_covariate_removes_all_variance() -> None:
    rng = np.random.default_rng(9)
    current, _ = _pairs(simulate_experiment(MODEL, [0.0, 0.1], rng))
    fit = cuped_ratio(current, current)
    assert fit.theta == pytest.approx(1.0)
    pooled = sum(x.sum() for x, _ in current) / sum(y.sum() for _, y in current)
    for arm in fit.arms:
        assert arm.value == pytest.approx(pooled, rel=1e-12)
        assert arm.variance == pytest.approx(0.0, abs=1e-18)
    assert fit.compare(1).difference == pytest.approx(0.0, abs=1e-15)


def test_arrays_and_dataclass_agree_and_raw_matches_delta_method() -> None:
    rng = np.random.default_rng(10)
    exp = simulate_experiment(TrafficModel(users=4_000, looks=5), [0.0, 0.02], rng)
    paths = cuped_arrays(exp.clicks, exp.impressions, exp.pre_clicks, exp.pre_impressions)
    assert paths.adjusted.shape == (2, 5) and paths.theta.shape == (5,)
    fit = cuped_ratio(*_pairs(exp))
    assert fit.arms[1].value == pytest.approx(paths.adjusted[1, -1], rel=1e-12)
    assert fit.theta == pytest.approx(paths.theta[-1], rel=1e-12)
    plain = ratio_estimate(exp.clicks[0, -1], exp.impressions[0, -1])
    assert fit.arms[0].raw_value == pytest.approx(plain.value)
    assert fit.arms[0].raw_variance == pytest.approx(plain.variance)
    assert 0.0 < fit.arms[0].variance_reduction < 1.0


def test_shared_pre_period_is_refused() -> None:
    x = np.arange(1.0, 9.0)
    y = np.full(8, 100.0)
    with pytest.raises(StatsError, match="identical pre-period"):
        cuped_ratio([(x, y), (x + 1, y)], [(x, y), (x, y)])


def test_shapes_and_indices_are_checked() -> None:
    x = np.arange(1.0, 9.0)
    y = np.full(8, 100.0)
    with pytest.raises(StatsError, match=">= 2 arms"):
        cuped_ratio([(x, y)], [(x, y)])
    with pytest.raises(StatsError, match="same number of buckets"):
        cuped_ratio([(x, y), (x[:4], y[:4])], [(x, y), (x + 1, y)])
    fit = cuped_ratio([(x, y), (x + 1, y)], [(x, y), (x + 2, y)])
    with pytest.raises(StatsError, match="treatment: arm index"):
        fit.compare(2)


def test_cuped_from_sums_reads_the_named_rows_of_each_arms_sums() -> None:
    rng = np.random.default_rng(5)
    tables = [rng.uniform(1.0, 2.0, (N_FIELDS, 16)) for _ in range(4)]
    fit = cuped_from_sums(tables[:2], tables[2:], "clicks", "impressions")
    rows = [(t[FIELD_INDEX["clicks"]], t[FIELD_INDEX["impressions"]]) for t in tables]
    expected = cuped_ratio(rows[:2], rows[2:])
    assert fit.theta == pytest.approx(expected.theta)
    assert [a.value for a in fit.arms] == pytest.approx([a.value for a in expected.arms])
    with pytest.raises(StatsError, match="numerator"):
        cuped_from_sums(tables[:2], tables[2:], "bogus", "impressions")
    with pytest.raises(StatsError, match="fields"):
        cuped_from_sums([np.ones((3, 16))] * 2, tables[2:], "clicks", "impressions")
