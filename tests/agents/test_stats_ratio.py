"""Ratio metrics over user buckets: delta-method variance against brute force, invariances, comparisons."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from agents.stats.errors import StatsError
from agents.stats.ratio import (
    compare,
    compare_sums,
    linearize,
    paired_comparison,
    ratio_arrays,
    ratio_estimate,
    ratio_from_sums,
)
from schemas.metrics import BUCKET_FIELDS, DEFAULT_BUCKETS, FIELD_INDEX

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


# --- paired reads (per-request allocations) -------------------------------------------------------


def _per_request_aa(
    rng: np.random.Generator, reps: int, buckets: int, *, per_user: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(reps, buckets) click and request sums of control and treatment in an A/A test on a returning population.

    Users differ a lot in click propensity (Beta(2, 8)) and make 1 + Poisson(40) requests each.  Per request
    (the default), each request goes to either arm with probability 1/2, so every bucket's users are in both
    arms; `per_user` sends each user's requests to one arm.
    """
    users = 20 * reps * buckets
    p = rng.beta(2.0, 8.0, size=users)
    requests = 1 + rng.poisson(40.0, size=users)
    treated = np.where(rng.random(users) < 0.5, requests, 0) if per_user else rng.binomial(requests, 0.5)
    control = requests - treated
    cell = np.repeat(np.arange(reps * buckets), 20)
    out = []
    for n in (control, treated):
        clicks = rng.binomial(n, p)
        out.append(np.bincount(cell, weights=clicks, minlength=reps * buckets).reshape(reps, buckets))
        out.append(np.bincount(cell, weights=n, minlength=reps * buckets).reshape(reps, buckets))
    cx, cy, tx, ty = out
    return cx, cy, tx, ty


def test_a_paired_read_has_the_variance_of_the_difference_and_a_valid_aa_false_positive_rate() -> None:
    rng = np.random.default_rng(7)
    reps = 2000
    # the metric windows' 64 buckets: the variance estimate's 63 dof keep a z-test's level near 5% (t: 5.4%)
    cx, cy, tx, ty = _per_request_aa(rng, reps, DEFAULT_BUCKETS)
    paired = [paired_comparison((cx[i], cy[i]), (tx[i], ty[i])) for i in range(reps)]
    independent = [compare(ratio_estimate(cx[i], cy[i]), ratio_estimate(tx[i], ty[i])) for i in range(reps)]
    d = np.array([c.difference for c in paired])
    empirical = float(np.var(d, ddof=1))
    paired_var = float(np.mean([c.difference_variance for c in paired]))
    # Monte Carlo error of the empirical variance with 2000 reps is ~3%.
    assert paired_var == pytest.approx(empirical, rel=0.12)
    # The independent formula keeps the users' propensity, which cancels in the difference: far too wide.
    assert float(np.mean([c.difference_variance for c in independent])) > 2.0 * empirical
    z = d / np.sqrt([c.difference_variance for c in paired])
    false_positives = int((np.abs(z) > 1.959964).sum())
    assert false_positives <= 0.05 * reps + 3 * math.sqrt(0.05 * 0.95 * reps), false_positives
    log_z = np.array([c.log_ratio / math.sqrt(c.log_ratio_variance) for c in paired])
    assert int((np.abs(log_z) > 1.959964).sum()) <= 0.05 * reps + 3 * math.sqrt(0.05 * 0.95 * reps)
    assert float(np.var(log_z)) == pytest.approx(1.0, rel=0.12)


def test_a_paired_read_of_disjoint_users_agrees_with_the_independent_one() -> None:
    """Per-user allocations: bucket b holds different users in each arm, the covariance is 0 in expectation."""
    rng = np.random.default_rng(11)
    reps = 1000
    cx, cy, tx, ty = _per_request_aa(rng, reps, BUCKETS, per_user=True)
    paired = np.mean([paired_comparison((cx[i], cy[i]), (tx[i], ty[i])).difference_variance for i in range(reps)])
    independent = np.mean(
        [compare(ratio_estimate(cx[i], cy[i]), ratio_estimate(tx[i], ty[i])).difference_variance for i in range(reps)]
    )
    assert paired == pytest.approx(independent, rel=0.05)


def test_compare_sums_reads_named_rows_paired_or_not() -> None:
    rng = np.random.default_rng(3)
    control, treatment = rng.random((2, len(BUCKET_FIELDS), BUCKETS)) + 1.0
    rows = (FIELD_INDEX["clicks"], FIELD_INDEX["requests"])
    got = compare_sums(control, treatment, "clicks", "requests", paired=True)
    want = paired_comparison((control[rows[0]], control[rows[1]]), (treatment[rows[0]], treatment[rows[1]]))
    assert got == want
    assert compare_sums(control, treatment, "clicks", "requests") == compare(
        ratio_from_sums(control, "clicks", "requests"), ratio_from_sums(treatment, "clicks", "requests")
    )
    with pytest.raises(StatsError, match="same buckets"):
        paired_comparison((control[0], control[1]), (treatment[0, :-1], treatment[1, :-1]))


# --------------------------------------------------------------------------- reads stratified by allocation period


def _period_tables(rng: np.random.Generator, requests: np.ndarray, rate: float, users: np.ndarray) -> np.ndarray:
    """(fields × buckets) sums of one arm in one period: `requests` per bucket, clicks ~ Poisson(rate · propensity)."""
    table = np.zeros((len(BUCKET_FIELDS), requests.size))
    table[FIELD_INDEX["requests"]] = requests
    table[FIELD_INDEX["clicks"]] = rng.poisson(rate * users * requests)
    return table


@pytest.mark.parametrize("paired", [False, True])
def test_a_ramp_across_a_drop_in_the_base_rate_reads_zero_when_stratified_by_period(paired: bool) -> None:
    # No treatment effect.  Period 1: treatment gets 10% of the traffic and the click rate is 0.75; period 2 (after
    # the ramp): 50%, and the weekly turnover has dropped the rate to 0.70.  Pooled, the treatment's traffic is
    # mostly from the worse period, so it reads several percent worse; stratified, it reads zero.
    rng = np.random.default_rng(5)
    buckets, reps = 64, 200
    pooled, stratified, ses = [], [], []
    for _ in range(reps):
        # each bucket's users keep their propensity in both periods; per user, the arms hold different users
        users = rng.gamma(4.0, 0.25, buckets)
        treated_users = users if paired else rng.gamma(4.0, 0.25, buckets)
        per_bucket = rng.poisson(600.0, buckets).astype(float)
        periods = []
        for share, rate in ((0.1, 0.75), (0.5, 0.70)):
            treated = rng.binomial(per_bucket.astype(int), share).astype(float)
            control = per_bucket - treated
            periods.append(
                (_period_tables(rng, control, rate, users), _period_tables(rng, treated, rate, treated_users))
            )
        control_periods = np.stack([c for c, _ in periods])
        treatment_periods = np.stack([t for _, t in periods])
        flat = compare_sums(
            control_periods.sum(axis=0), treatment_periods.sum(axis=0), "clicks", "requests", paired=paired
        )
        split = compare_sums(control_periods, treatment_periods, "clicks", "requests", paired=paired)
        pooled.append(flat.lift)
        stratified.append(split.difference)
        ses.append(split.difference_se)
    assert np.mean(pooled) < -0.02  # the bias the stratified read removes (about -2.7%)
    assert abs(np.mean(stratified)) < 3 * np.std(stratified) / math.sqrt(reps)
    assert np.mean(ses) == pytest.approx(np.std(stratified), rel=0.15)  # and its standard error is honest


def test_one_period_is_the_plain_read() -> None:
    rng = np.random.default_rng(9)
    control = rng.poisson(50.0, (len(BUCKET_FIELDS), 16)).astype(float) + 1.0
    treatment = rng.poisson(52.0, (len(BUCKET_FIELDS), 16)).astype(float) + 1.0
    for paired in (False, True):
        flat = compare_sums(control, treatment, "clicks", "requests", paired=paired)
        single = compare_sums(control[None], treatment[None], "clicks", "requests", paired=paired)
        assert single.difference == pytest.approx(flat.difference, rel=1e-12)
        assert single.difference_variance == pytest.approx(flat.difference_variance, rel=1e-12)
        assert single.log_ratio_variance == pytest.approx(flat.log_ratio_variance, rel=1e-12)
    plain = compare(ratio_from_sums(control, "clicks", "requests"), ratio_from_sums(treatment, "clicks", "requests"))
    assert compare_sums(control, treatment, "clicks", "requests").difference_variance == pytest.approx(
        plain.difference_variance, rel=1e-12
    )
    # a period in which an arm had no traffic is left out rather than refused
    empty = np.zeros_like(control)
    both = compare_sums(np.stack([control, control]), np.stack([treatment, empty]), "clicks", "requests")
    assert both.difference == pytest.approx(compare_sums(control, treatment, "clicks", "requests").difference)
    with pytest.raises(StatsError, match="denominator"):
        compare_sums(control[None], empty[None], "clicks", "requests")
