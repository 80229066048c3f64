"""Sample-ratio mismatch: chi-square on unit counts and the cluster-robust test over user buckets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agents.stats.distributions import chi2_sf
from agents.stats.errors import StatsError
from agents.stats.simulate import TrafficModel, simulate_experiment
from agents.stats.srm import HALT_P, srm_buckets, srm_counts


def test_pearson_by_hand() -> None:
    result = srm_counts([60, 40], [0.5, 0.5])
    assert result.statistic == pytest.approx(4.0)
    assert result.p_value == pytest.approx(chi2_sf(4.0, 1)) and result.p_value == pytest.approx(0.0455, abs=1e-4)
    assert not result.halt
    assert srm_counts([50, 50], [1, 1]).p_value == pytest.approx(1.0)
    three = srm_counts([100, 200, 300], [1, 2, 3])
    assert three.df == 2 and three.statistic == pytest.approx(0.0)


def test_pearson_flags_52_48_at_large_n_but_not_a_true_50_50() -> None:
    rng = np.random.default_rng(4)
    n = 200_000
    skewed = srm_counts([0.52 * n, 0.48 * n], [0.5, 0.5])
    assert skewed.halt and skewed.p_value == pytest.approx(math.erfc(math.sqrt(160.0)), rel=1e-9)
    assert "halt" in skewed.reason and "52.00/48.00" in skewed.reason
    fair = rng.binomial(n, 0.5)
    assert not srm_counts([fair, n - fair], [0.5, 0.5]).halt


def test_bucket_test_flags_52_48_users_and_not_a_true_50_50() -> None:
    rng = np.random.default_rng(5)
    model = TrafficModel(users=60_000, looks=1, shares=(0.52, 0.48))
    skewed = simulate_experiment(model, [0.0, 0.0], rng)
    result = srm_buckets(skewed.requests[:, -1], [0.5, 0.5])
    assert result.halt, result.reason
    fair = simulate_experiment(TrafficModel(users=60_000, looks=1), [0.0, 0.0], rng)
    assert not srm_buckets(fair.requests[:, -1], [0.5, 0.5]).halt


def test_request_counts_false_alarm_where_the_bucket_test_does_not() -> None:
    # Requests cluster within users (heavy users), so Pearson on requests over-flags a true 50/50 split;
    # the bucket test treats users (in buckets) as the unit and keeps its false-halt rate near 1e-3.
    rng = np.random.default_rng(6)
    model = TrafficModel(users=15_000, looks=1)
    pearson = buckets = 0
    bucket_p = []
    runs = 100
    for _ in range(runs):
        counts = simulate_experiment(model, [0.0, 0.0], rng).requests[:, -1]
        pearson += srm_counts(counts.sum(axis=1).tolist(), [0.5, 0.5]).halt
        result = srm_buckets(counts, [0.5, 0.5])
        buckets += result.halt
        bucket_p.append(result.p_value)
    assert pearson / runs > 0.05, pearson
    assert buckets <= 1  # expected 0.1 at p < 0.001
    # Bucket p-values are roughly uniform under no mismatch.
    assert 0.02 <= float(np.mean(np.array(bucket_p) < 0.1)) <= 0.2


def test_bucket_test_three_arms_and_dead_arm() -> None:
    rng = np.random.default_rng(7)
    fair = simulate_experiment(TrafficModel(users=30_000, looks=1, shares=(0.5, 0.25, 0.25)), [0.0] * 3, rng)
    result = srm_buckets(fair.requests[:, -1], [2, 1, 1])
    assert not result.halt and result.df == 2
    assert result.expected_shares == pytest.approx((0.5, 0.25, 0.25))
    dead = fair.requests[:, -1].copy()
    dead[1] = 0.0
    broken = srm_buckets(dead, [2, 1, 1])
    assert broken.halt and broken.p_value == 0.0 and math.isinf(broken.statistic)


@pytest.mark.parametrize(
    ("call", "rule"),
    [
        (lambda: srm_counts([10], [1.0]), "counts:"),
        (lambda: srm_counts([10, -1], [0.5, 0.5]), "counts:"),
        (lambda: srm_counts([0, 0], [0.5, 0.5]), "total must be positive"),
        (lambda: srm_counts([10, 10], [0.5]), "shares:"),
        (lambda: srm_buckets(np.ones((2, 2)), [0.5, 0.5]), "more buckets than arms"),
        (lambda: srm_buckets(np.ones((2, 8)), [0.5, 0.5], threshold=0.0), "threshold:"),
    ],
)
def test_bad_inputs_are_refused(call: object, rule: str) -> None:
    with pytest.raises(StatsError, match=rule):
        call()  # type: ignore[operator]


def test_threshold_default() -> None:
    assert HALT_P == 1e-3


# Requests per metric bucket of a control and its live treatment (5/6 : 1/6) while two stopped arms keep their place.
_LIVE_C = [168, 182, 175, 141, 135, 145, 170, 137, 146, 162, 178, 127, 150, 154, 196, 150, 181, 160, 194, 159, 154, 237]
_LIVE_C += [131, 171, 170, 190, 187, 152, 175, 140, 151, 215, 175, 171, 177, 174, 134, 180, 175, 159, 149, 171, 188]
_LIVE_C += [170, 187, 167, 147, 192, 140, 179, 177, 173, 180, 155, 178, 124, 148, 144, 175, 180, 170, 149, 152, 214]
_LIVE_T = [25, 39, 23, 42, 51, 35, 61, 48, 35, 44, 22, 33, 38, 32, 25, 55, 23, 60, 31, 30, 26, 31, 28, 58, 27, 30, 19]
_LIVE_T += [37, 28, 26, 64, 32, 18, 43, 28, 36, 37, 38, 38, 29, 29, 36, 63, 26, 41, 49, 50, 26, 38, 42, 23, 35, 38, 42]
_LIVE_T += [30, 26, 39, 37, 30, 59, 42, 51, 39, 40]


def test_bucket_test_ignores_stopped_arms_that_keep_their_place() -> None:
    """Two of three treatment arms stopped (share 0, no traffic): the live control and t1 are still tested.

    Regression: with the stopped arms in the table the live rows summed to the bucket totals and the
    covariance was singular (`numpy.linalg.LinAlgError` on these counts, seen in the simulated loop).
    """
    table = np.array([_LIVE_C, _LIVE_T, [0] * 64, [0] * 64], dtype=np.float64)
    shares = (0.8333, 0.1667, 0.0, 0.0)
    fair = srm_buckets(table, shares)
    assert not fair.halt and fair.p_value > HALT_P and fair.df == 1
    skewed = table.copy()
    skewed[1] *= 0.6
    assert srm_buckets(skewed, shares).halt
    assert srm_buckets(table, (1.0, 0.0, 0.0, 0.0)).halt  # traffic where no share is: infinite statistic
