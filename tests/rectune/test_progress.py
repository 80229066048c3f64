"""The demo's pure helpers: delta-method intervals (against brute force), window bookkeeping, rows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rectune.progress import (
    Estimate,
    WindowBook,
    format_duration,
    pct,
    plural,
    ratio_interval,
    relative_lift,
)
from schemas.metrics import (
    BUCKET_FIELDS,
    FIELD_INDEX,
    N_FIELDS,
    N_LATENCY_BINS,
    MetricWindow,
    latency_bins,
    merge_by_arm,
    sparse_window_arrays,
)

BUCKETS = 64


# -- delta method ---------------------------------------------------------------------


def delta_variance_by_gradient(num: np.ndarray, den: np.ndarray) -> float:
    """Textbook delta method for mean(num)/mean(den): gradient' * Cov * gradient / n."""
    n = num.size
    mu_n, mu_d = num.mean(), den.mean()
    cov = np.cov(np.vstack([num, den]), ddof=1)
    grad = np.array([1.0 / mu_d, -mu_n / mu_d**2])
    return float(grad @ cov @ grad) / n


def simulate_buckets(
    rng: np.random.Generator, users: int, ctr: float, buckets: int = BUCKETS
) -> tuple[np.ndarray, np.ndarray]:
    """Users with heterogeneous click propensity and request counts, hashed into buckets."""
    impressions = 12 * rng.poisson(2.0, users)
    taste = rng.lognormal(0.0, 0.6, users)
    p = np.minimum(1.0, ctr * taste / np.exp(0.18))
    clicks = rng.binomial(impressions, p)
    bucket = rng.integers(0, buckets, users)
    return (
        np.bincount(bucket, weights=clicks, minlength=buckets),
        np.bincount(bucket, weights=impressions, minlength=buckets),
    )


def test_ratio_interval_matches_the_gradient_form_of_the_delta_method() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        clicks, impressions = simulate_buckets(rng, int(rng.integers(200, 5000)), 0.05)
        est = ratio_interval(clicks, impressions)
        assert est.value == pytest.approx(clicks.sum() / impressions.sum(), rel=1e-12)
        assert est.se**2 == pytest.approx(delta_variance_by_gradient(clicks, impressions), rel=1e-9)
        assert est.low == pytest.approx(est.value - 1.959963984540054 * est.se)
        assert est.high == pytest.approx(est.value + 1.959963984540054 * est.se)


def test_ratio_interval_matches_the_spread_of_repeated_experiments() -> None:
    """Brute force: rerun the experiment many times; the SE must match the empirical SD and cover 95%."""
    rng = np.random.default_rng(2)
    true_ctr = 0.05
    estimates = [ratio_interval(*simulate_buckets(rng, 3000, true_ctr)) for _ in range(1500)]
    values = np.array([e.value for e in estimates])
    ses = np.array([e.se for e in estimates])
    assert np.mean(ses) == pytest.approx(np.std(values, ddof=1), rel=0.08)
    truth = values.mean()  # the ratio estimator's own target, bias included
    coverage = np.mean([e.low <= truth <= e.high for e in estimates])
    assert 0.92 <= coverage <= 0.975


def test_ratio_interval_edge_cases() -> None:
    empty = ratio_interval(np.zeros(4), np.zeros(4))
    assert math.isnan(empty.value) and math.isnan(empty.se)
    single = ratio_interval([3.0], [10.0])
    assert single.value == pytest.approx(0.3)
    assert math.isnan(single.se) and math.isnan(single.low)
    # Empty buckets are observations of zero: they only change n/(n-1).
    with_empty = ratio_interval([1.0, 2.0, 0.0, 0.0], [10.0, 10.0, 0.0, 0.0])
    without = ratio_interval([1.0, 2.0], [10.0, 10.0])
    assert with_empty.value == without.value
    assert with_empty.se**2 == pytest.approx(without.se**2 * (4 / 3) / (2 / 1))
    with pytest.raises(ValueError, match="same length"):
        ratio_interval([1.0, 2.0], [1.0])


def test_relative_lift_matches_the_spread_of_repeated_experiments() -> None:
    rng = np.random.default_rng(3)
    lifts = []
    for _ in range(1200):
        control = ratio_interval(*simulate_buckets(rng, 3000, 0.05))
        treatment = ratio_interval(*simulate_buckets(rng, 3000, 0.05 * 1.15))
        lifts.append(relative_lift(treatment, control))
    values = np.array([lift.value for lift in lifts])
    assert np.mean(values) == pytest.approx(0.15, abs=0.01)
    assert np.mean([lift.se for lift in lifts]) == pytest.approx(np.std(values, ddof=1), rel=0.1)
    coverage = np.mean([lift.low <= 0.15 <= lift.high for lift in lifts])
    assert 0.92 <= coverage <= 0.975


def test_relative_lift_without_data() -> None:
    nan = Estimate(math.nan, math.nan, math.nan, math.nan)
    assert math.isnan(relative_lift(nan, Estimate(0.05, 0.01, 0.03, 0.07)).value)
    assert math.isnan(relative_lift(Estimate(0.05, 0.01, 0.03, 0.07), Estimate(0.0, 0.0, 0.0, 0.0)).value)
    no_se = relative_lift(Estimate(0.06, math.nan, math.nan, math.nan), Estimate(0.05, 0.01, 0.03, 0.07))
    assert no_se.value == pytest.approx(0.2) and math.isnan(no_se.se)


# -- window bookkeeping ------------------------------------------------------------------


def partial(
    *,
    partition: int,
    start_ms: int,
    arm: str,
    cohort: str = "new",
    clicks: float = 5.0,
    impressions: float = 120.0,
    late: bool = False,
    seq: int = 0,
) -> MetricWindow:
    sums = np.zeros((N_FIELDS, BUCKETS))
    sums[FIELD_INDEX["requests"], partition] = impressions / 12
    sums[FIELD_INDEX["impressions"], partition] = impressions
    sums[FIELD_INDEX["clicks"], partition] = clicks
    sums[FIELD_INDEX["clicks"], partition + 10] = clicks
    sums[FIELD_INDEX["impressions"], partition + 10] = impressions
    sums[FIELD_INDEX["distinct_categories"], partition] = 7 * impressions / 12
    hist = np.zeros(N_LATENCY_BINS, dtype=np.int64)
    hist[int(latency_bins([18.0])[0])] = int(impressions / 12)
    ids, rows, bins, counts = sparse_window_arrays(sums, hist)
    kind = f"L{seq}" if late else "F"
    return MetricWindow(
        schema_version=1,
        partial_id=f"rectune.events/{partition}/{start_ms}/{kind}/{arm}-{cohort}",
        source_topic="rectune.events",
        source_partition=partition,
        window_start_ms=start_ms,
        window_end_ms=start_ms + 5000,
        surface="home",
        arm_id=arm,
        cohort=cohort,
        config_versions=(1,),
        buckets=BUCKETS,
        fields=BUCKET_FIELDS,
        bucket_ids=ids,
        sums=rows,
        latency_bins=bins,
        latency_counts=counts,
        item_events=int(2 * impressions + 2 * clicks),
        late=late,
    )


def test_window_is_due_when_every_partition_reported_and_settled() -> None:
    book = WindowBook(2, settle_s=0.3, grace_s=3.0)
    assert book.add(partial(partition=0, start_ms=5000, arm="control"), now_s=10.0)
    assert book.add(partial(partition=0, start_ms=5000, arm="treatment"), now_s=10.0)
    assert book.due(10.5) == []  # partition 1 has not reported
    assert book.add(partial(partition=1, start_ms=5000, arm="control"), now_s=10.6)
    assert book.add(partial(partition=1, start_ms=5000, arm="treatment"), now_s=10.6)
    assert book.due(10.7) == []  # not settled yet
    [window] = book.due(11.0)
    assert window.complete and window.partitions == {0, 1}
    assert set(window.arms) == {"control", "treatment"}
    control = window.arms["control"]
    assert control.impressions == 480 and control.clicks == 20 and control.requests == 20
    assert control.ctr.value == pytest.approx(20 / 480)
    assert control.categories_per_list == pytest.approx(7.0)
    assert book.due(20.0) == [] and book.windows_closed == 1


def test_duplicates_are_ignored_and_quiet_partitions_wait_only_for_the_grace() -> None:
    book = WindowBook(4, settle_s=0.3, grace_s=3.0)
    first = partial(partition=2, start_ms=0, arm="control")
    assert book.add(first, now_s=1.0)
    assert not book.add(first, now_s=1.5)
    assert book.duplicates == 1
    assert book.due(3.9) == []
    [window] = book.due(4.0)
    assert not window.complete and window.arms["control"].clicks == 10
    assert window.partitions == frozenset({2})


def test_late_partials_count_in_the_totals_only() -> None:
    book = WindowBook(1, settle_s=0.0, grace_s=1.0)
    book.add(partial(partition=0, start_ms=0, arm="control"), now_s=0.0)
    assert len(book.due(0.1)) == 1
    book.add(partial(partition=0, start_ms=0, arm="control", late=True, seq=1, clicks=1.0), now_s=0.2)
    assert book.late_partials == 1
    assert book.due(5.0) == [] and book.flush() == []
    assert book.totals()["control"].clicks == 12


def test_totals_equal_merge_by_arm() -> None:
    book = WindowBook(3)
    partials = {}
    for start in (0, 5000, 10_000):
        for p in range(3):
            for arm in ("control", "treatment"):
                for cohort in ("new", "returning"):
                    w = partial(partition=p, start_ms=start, arm=arm, cohort=cohort, clicks=float(p + 1))
                    partials[w.partial_id] = w
                    book.add(w, now_s=0.0)
    assert len(book.flush()) == 3
    merged = merge_by_arm(partials)
    totals = book.totals()
    for (_, arm), t in merged.items():
        assert totals[arm].clicks == t.total("clicks")
        assert totals[arm].impressions == t.total("impressions")
        assert totals[arm].item_events == t.item_events
        assert totals[arm].windows == t.windows == 3
        expected = ratio_interval(t.sums[FIELD_INDEX["clicks"]], t.sums[FIELD_INDEX["impressions"]])
        assert totals[arm].ctr == expected
    assert book.item_events == sum(w.item_events for w in partials.values())
    assert (book.first_start_ms, book.last_end_ms) == (0, 15_000)


# -- formatting -------------------------------------------------------------------------


def test_formatting() -> None:
    assert plural(1, "window") == "1 window" and plural(3, "window") == "3 windows"
    assert pct(0.0413) == "4.13%" and pct(math.nan) == "-"
    assert format_duration(75.9) == "1:15" and format_duration(-3.0) == "0:00"
