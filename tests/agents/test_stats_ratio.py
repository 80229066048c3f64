"""Ratio metrics over user buckets: delta-method variance against brute force, invariances, comparisons."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from agents.stats.errors import StatsError
from agents.stats.ratio import compare, linearize, ratio_arrays, ratio_estimate, ratio_from_sums
from schemas.metrics import BUCKET_FIELDS, FIELD_INDEX

BUCKETS = 32


def _clustered_buckets(rng: np.random.Generator, reps: int, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """(reps, buckets) click and impression sums from heterogeneous users (Beta CTR, overdispersed activity)."""
    users = rng.poisson(20, size=(reps, buckets))
    total = int(users.sum())
    p = rng.beta(1.0, 19.0, size=total)
    imps = 12 * (1 + rng.poisson(rng.gamma(0.7, 3.0 / 0.7, size=total)))
    clicks = rng.binomial(imps, p)
    cell = np.repeat(np.arange(reps * buckets), users.ravel())
    x = np.bincount(cell, weights=clicks, minlength=reps * buckets).reshape(reps, buckets)
    y = np.bincount(cell, weights=imps, minlength=reps * buckets).reshape(reps, buckets)
    return x, y


def test_delta_method_matches_brute_force_variance() -> None:
    rng = np.random.default_rng(20240601)
    x, y = _clustered_buckets(rng, 4000, BUCKETS)
    r, var = ratio_arrays(x, y)
    empirical = float(np.var(r, ddof=1))
    # Monte Carlo error of the empirical variance with 4000 reps is ~3%; the delta method is O(1/n) biased.
    assert float(np.mean(var)) == pytest.approx(empirical, rel=0.12)
    # The fixed-sample 95% interval covers the population ratio (≈ mean of r over reps) about 95% of the time.
    truth = float(x.sum() / y.sum())
    covered = np.abs(r - truth) <= 1.959963984540054 * np.sqrt(var)
    assert 0.92 <= float(covered.mean()) <= 0.975


def test_delta_formula_by_hand() -> None:
    x = np.array([3.0, 5.0, 0.0, 8.0, 2.0])
    y = np.array([40.0, 70.0, 10.0, 90.0, 30.0])
    est = ratio_estimate(x, y)
    r = x.sum() / y.sum()
    n = x.size
    cov = np.cov(x, y, ddof=1)
    hand = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / y.mean() ** 2 / n
    assert est.value == pytest.approx(r)
    assert est.variance == pytest.approx(hand, rel=1e-12)
    assert est.buckets == n and est.numerator_total == 18.0 and est.denominator_total == 240.0
    low, high = est.interval(0.95)
    assert low < est.value < high
    assert linearize(x, y).mean() == pytest.approx(0.0, abs=1e-12)


buckets = hnp.arrays(
    np.float64,
    st.integers(min_value=2, max_value=40),
    elements=st.floats(min_value=0.0, max_value=1e4, allow_nan=False, allow_infinity=False),
)


@st.composite
def pairs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    y = draw(buckets)
    frac = draw(hnp.arrays(np.float64, y.shape, elements=st.floats(min_value=0.0, max_value=1.0)))
    y = y + 1.0  # every bucket has some traffic, so the total is positive
    return np.floor(frac * y), y


@settings(max_examples=150, deadline=None)
@given(pairs(), st.floats(min_value=1e-3, max_value=1e3))
def test_scaling_keeps_ratio_and_variance(pair: tuple[np.ndarray, np.ndarray], c: float) -> None:
    x, y = pair
    base, scaled = ratio_estimate(x, y), ratio_estimate(c * x, c * y)
    assert scaled.value == pytest.approx(base.value, rel=1e-9, abs=1e-15)
    assert scaled.variance == pytest.approx(base.variance, rel=1e-7, abs=1e-20)
    num_only = ratio_estimate(c * x, y)
    assert num_only.value == pytest.approx(c * base.value, rel=1e-9, abs=1e-15)
    assert num_only.variance == pytest.approx(c * c * base.variance, rel=1e-7, abs=1e-20)


@settings(max_examples=150, deadline=None)
@given(pairs(), st.data())
def test_permuting_buckets_keeps_everything(pair: tuple[np.ndarray, np.ndarray], data: st.DataObject) -> None:
    x, y = pair
    order = np.array(data.draw(st.permutations(range(x.size))))
    a, b = ratio_estimate(x, y), ratio_estimate(x[order], y[order])
    assert b.value == pytest.approx(a.value, rel=1e-12, abs=1e-15)
    assert b.variance == pytest.approx(a.variance, rel=1e-9, abs=1e-20)


@settings(max_examples=100, deadline=None)
@given(pairs(), pairs())
def test_comparison_is_antisymmetric(p1: tuple[np.ndarray, np.ndarray], p2: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = ratio_estimate(*p1), ratio_estimate(*p2)
    ab, ba = compare(a, b), compare(b, a)
    assert ab.difference == pytest.approx(-ba.difference, abs=1e-15)
    assert ab.difference_variance == pytest.approx(ba.difference_variance)
    if a.value > 0 and b.value > 0:
        assert ab.log_ratio == pytest.approx(-ba.log_ratio, abs=1e-12)
        assert ab.lift == pytest.approx(b.value / a.value - 1.0, rel=1e-9, abs=1e-12)
        low, high = ab.lift_interval()
        assert -1.0 < low <= ab.lift <= high
    else:
        assert math.isnan(ab.lift)


def test_compare_values() -> None:
    control = ratio_estimate([5.0, 4.0, 6.0], [100.0, 100.0, 100.0])
    treatment = ratio_estimate([6.0, 5.0, 7.0], [100.0, 100.0, 100.0])
    c = compare(control, treatment)
    assert c.difference == pytest.approx(0.01)
    assert c.difference_variance == pytest.approx(control.variance + treatment.variance)
    assert c.lift == pytest.approx(0.2)
    assert c.lift_se == pytest.approx(1.2 * math.sqrt(treatment.variance / 0.06**2 + control.variance / 0.05**2))
    low, high = c.difference_interval(0.9)
    assert low < 0.01 < high


def test_ratio_from_sums_reads_named_rows() -> None:
    sums = np.zeros((len(BUCKET_FIELDS), 4))
    sums[FIELD_INDEX["clicks"]] = [1, 2, 3, 4]
    sums[FIELD_INDEX["impressions"]] = [10, 20, 30, 40]
    est = ratio_from_sums(sums, "clicks", "impressions")
    assert est.value == pytest.approx(0.1)
    assert est.variance == pytest.approx(0.0, abs=1e-20)
    with pytest.raises(StatsError, match="numerator: 'klicks'"):
        ratio_from_sums(sums, "klicks", "impressions")
    with pytest.raises(StatsError, match="sums:"):
        ratio_from_sums(sums[:3], "clicks", "impressions")


@pytest.mark.parametrize(
    ("x", "y", "rule"),
    [
        ([1.0], [2.0], "at least 2 buckets"),
        ([1.0, 2.0], [1.0], "one shape"),
        ([1.0, float("nan")], [1.0, 1.0], "finite"),
        ([0.0, 0.0], [0.0, 0.0], "must be positive"),
    ],
)
def test_bad_buckets_are_refused(x: list[float], y: list[float], rule: str) -> None:
    with pytest.raises(StatsError, match=rule):
        ratio_estimate(x, y)


def test_interval_level_is_checked() -> None:
    with pytest.raises(StatsError, match="level:"):
        ratio_estimate([1.0, 2.0], [3.0, 4.0]).interval(1.5)
