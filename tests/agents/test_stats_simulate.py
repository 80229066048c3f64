"""The synthetic traffic generator: layout, cumulative looks, lifts, heterogeneity, and the naive z path."""

from __future__ import annotations

import numpy as np
import pytest

from agents.stats.errors import StatsError
from agents.stats.ratio import ratio_estimate
from agents.stats.simulate import TrafficModel, naive_z_path, simulate_experiment


def test_layout_and_cumulative_looks() -> None:
    model = TrafficModel(users=5_000, looks=10, buckets=16)
    exp = simulate_experiment(model, [0.0, 0.0], np.random.default_rng(1))
    assert exp.clicks.shape == exp.impressions.shape == exp.requests.shape == (2, 10, 16)
    assert exp.pre_clicks.shape == exp.pre_impressions.shape == (2, 16)
    assert (np.diff(exp.requests, axis=1) >= 0).all() and (np.diff(exp.clicks, axis=1) >= 0).all()
    assert np.array_equal(exp.impressions, 12 * exp.requests)
    assert (exp.clicks <= exp.impressions).all()
    assert exp.look_seconds[-1] == pytest.approx(model.horizon_seconds)
    assert sum(exp.users_per_arm) == 5_000
    # Users make several requests each (some past the horizon are cut).
    assert 2.5 < exp.requests[:, -1].sum() / 5_000 < model.requests_per_user


def test_lift_moves_the_ratio_and_users_are_heterogeneous() -> None:
    rng = np.random.default_rng(2)
    model = TrafficModel(users=20_000, looks=1)
    diffs, design = [], []
    for _ in range(10):
        exp = simulate_experiment(model, [0.0, 0.2], rng)
        c = ratio_estimate(exp.clicks[0, -1], exp.impressions[0, -1])
        t = ratio_estimate(exp.clicks[1, -1], exp.impressions[1, -1])
        diffs.append(t.value / c.value - 1.0)
        # Delta-method variance vs the i.i.d.-impression binomial variance: > 1 means clustering by user.
        n = exp.impressions[0, -1].sum()
        design.append(c.variance / (c.value * (1 - c.value) / n))
    assert np.mean(diffs) == pytest.approx(0.2, abs=0.03)
    assert np.mean(design) > 2.0


def test_naive_z_path() -> None:
    exp = simulate_experiment(TrafficModel(users=3_000, looks=4), [0.0, 0.5], np.random.default_rng(3))
    z = naive_z_path(exp)
    assert z.shape == (4,) and np.isfinite(z).all() and z[-1] > 3


@pytest.mark.parametrize(
    ("kwargs", "rule"),
    [
        ({"users": 0}, "users=0"),
        ({"buckets": 1}, "buckets=1"),
        ({"mean_ctr": 1.0}, "mean_ctr"),
        ({"shares": (0.7, 0.7)}, "shares"),
        ({"session_fraction": 0.0}, "session_fraction"),
    ],
)
def test_model_validation(kwargs: dict[str, object], rule: str) -> None:
    with pytest.raises(StatsError, match=rule):
        TrafficModel(**kwargs)  # type: ignore[arg-type]


def test_lifts_validation() -> None:
    with pytest.raises(StatsError, match="lifts:"):
        simulate_experiment(TrafficModel(users=10, looks=1), [0.0], np.random.default_rng(0))
