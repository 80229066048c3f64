"""Metric-window maths: latency histogram layout and quantiles, sparse wire form, merging.

Pure unit tests of `schemas.metrics`: partials must be additive and their
layout checked, because consumers add them bucket by bucket.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from schemas.metrics import (
    BUCKET_FIELDS,
    FIELD_INDEX,
    LATENCY_BINS_PER_DECADE,
    LATENCY_EDGES_MS,
    LATENCY_MIN_MS,
    N_FIELDS,
    N_LATENCY_BINS,
    MetricWindow,
    latency_at_or_above,
    latency_bins,
    latency_quantile,
    merge_by_arm,
    merge_by_arm_cohort,
    sparse_window_arrays,
    user_bucket,
    window_arrays,
)

ONE_BIN = 10.0 ** (1.0 / LATENCY_BINS_PER_DECADE)  # ratio of a bin's upper to lower edge (~1.122)


def _window(
    sums: np.ndarray,
    hist: np.ndarray,
    *,
    partial_id: str = "p",
    surface: str = "home",
    arm_id: str = "control",
    start: int = 0,
    late: bool = False,
    item_events: int = 0,
    **overrides: Any,
) -> MetricWindow:
    ids, packed, bins, counts = sparse_window_arrays(sums, hist)
    fields: dict[str, Any] = {
        "schema_version": 1,
        "partial_id": partial_id,
        "source_topic": "rectune.events",
        "source_partition": 0,
        "window_start_ms": start,
        "window_end_ms": start + 60_000,
        "surface": surface,
        "arm_id": arm_id,
        "cohort": "new",
        "config_versions": (1,),
        "buckets": sums.shape[1],
        "fields": BUCKET_FIELDS,
        "bucket_ids": ids,
        "sums": packed,
        "latency_bins": bins,
        "latency_counts": counts,
        "item_events": item_events,
        "late": late,
    }
    fields.update(overrides)
    return MetricWindow(**fields)


# -- latency histogram ------------------------------------------------------------


def test_latency_layout_is_20_bins_per_decade_from_0_1_ms_to_100_s() -> None:
    assert LATENCY_EDGES_MS[0] == pytest.approx(LATENCY_MIN_MS)
    assert LATENCY_EDGES_MS[-1] == pytest.approx(100_000.0)
    assert N_LATENCY_BINS == 6 * LATENCY_BINS_PER_DECADE + 2
    assert np.allclose(LATENCY_EDGES_MS[1:] / LATENCY_EDGES_MS[:-1], ONE_BIN)


def test_latencies_below_0_1_ms_and_above_100_s_land_in_under_and_overflow() -> None:
    under = latency_bins([0.0, 1e-9, 0.05, 0.0999])
    assert under.tolist() == [0, 0, 0, 0]
    over = latency_bins([100_000.0, 100_001.0, 1e7, 1e300, math.inf])
    assert over.tolist() == [N_LATENCY_BINS - 1] * 5
    # the regular bins are 1 .. N-2, left-closed: [edge[i-1], edge[i])
    assert latency_bins([0.1]).tolist() == [1]
    assert latency_bins([99_999.0]).tolist() == [N_LATENCY_BINS - 2]
    assert latency_bins([1.0, 10.0, 100.0]).tolist() == [21, 41, 61]
    assert latency_bins(np.array([18.0])).dtype == np.int64


@settings(max_examples=200, deadline=None)
@given(latency=st.floats(min_value=LATENCY_MIN_MS, max_value=99_999.0))
def test_each_regular_latency_lies_inside_its_bin(latency: float) -> None:
    (index,) = latency_bins([latency]).tolist()
    assert 1 <= index <= N_LATENCY_BINS - 2
    assert LATENCY_EDGES_MS[index - 1] <= latency < LATENCY_EDGES_MS[index]


def _hist(values: np.ndarray) -> np.ndarray:
    return np.bincount(latency_bins(values), minlength=N_LATENCY_BINS)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    median_ms=st.floats(min_value=1.0, max_value=2_000.0),
    sigma=st.floats(min_value=0.1, max_value=1.5),
)
def test_histogram_quantile_is_within_one_bin_of_numpy(seed: int, median_ms: float, sigma: float) -> None:
    rng = np.random.default_rng(seed)
    sample = rng.lognormal(mean=math.log(median_ms), sigma=sigma, size=20_000)
    sample = sample[(sample >= LATENCY_MIN_MS) & (sample < 100_000.0)]
    hist = _hist(sample)
    assert hist.sum() == sample.size
    for q in (0.5, 0.95, 0.99):
        estimate = latency_quantile(hist, q)
        exact = float(np.percentile(sample, 100 * q))
        assert exact / ONE_BIN <= estimate <= exact * ONE_BIN, (q, estimate, exact)


def test_quantile_reports_the_bins_geometric_middle() -> None:
    hist = _hist(np.full(10, 50.0))
    (index,) = latency_bins([50.0]).tolist()
    middle = math.sqrt(LATENCY_EDGES_MS[index - 1] * LATENCY_EDGES_MS[index])
    assert latency_quantile(hist, 0.5) == pytest.approx(middle)
    assert latency_quantile(hist, 1.0) == pytest.approx(middle)
    # two clusters: the median falls in the lower one, p99 in the upper one
    hist = _hist(np.concatenate([np.full(60, 10.0), np.full(40, 1000.0)]))
    assert 10.0 / ONE_BIN <= latency_quantile(hist, 0.5) <= 10.0 * ONE_BIN
    assert 1000.0 / ONE_BIN <= latency_quantile(hist, 0.99) <= 1000.0 * ONE_BIN


@settings(max_examples=60, deadline=None)
@given(
    sample=hnp.arrays(np.float64, st.integers(1, 400), elements=st.floats(min_value=0.2, max_value=5_000.0)),
    threshold_ms=st.floats(min_value=0.2, max_value=5_000.0),
)
def test_at_or_above_counts_only_requests_certainly_over_the_threshold(sample: np.ndarray, threshold_ms: float) -> None:
    count, edge = latency_at_or_above(_hist(sample), threshold_ms)
    assert edge >= threshold_ms and edge / threshold_ms < ONE_BIN  # the first edge at or above it
    assert count == int((sample >= edge).sum())  # exactly the requests at or over that edge
    assert count <= int((sample >= threshold_ms).sum())


def test_a_p99_reading_over_the_threshold_is_more_than_one_percent_at_or_above_it() -> None:
    under = _hist(np.concatenate([np.full(990, 20.0), np.full(10, 52.0)]))  # exactly 1% over 50.12 ms
    over = _hist(np.concatenate([np.full(989, 20.0), np.full(11, 52.0)]))
    assert latency_quantile(under, 0.99) < 50.0 and latency_at_or_above(under, 50.0)[0] == 10
    assert latency_quantile(over, 0.99) > 50.0 and latency_at_or_above(over, 50.0)[0] == 11
    assert latency_at_or_above(over, 1e9) == (0, math.inf)  # past the layout: nothing can be placed above it


def test_quantile_of_an_empty_histogram_is_nan() -> None:
    assert math.isnan(latency_quantile(np.zeros(N_LATENCY_BINS, np.int64), 0.5))
    assert math.isnan(latency_quantile([0] * N_LATENCY_BINS, 0.99))


def test_quantile_of_under_and_overflow_is_clamped_to_the_layout_ends() -> None:
    assert latency_quantile(_hist(np.full(5, 0.01)), 0.5) == pytest.approx(LATENCY_MIN_MS)
    assert latency_quantile(_hist(np.full(5, 1e6)), 0.5) == pytest.approx(100_000.0)


def test_quantile_zero_is_the_lowest_occupied_bin() -> None:
    hist = _hist(np.full(10, 50.0))
    assert latency_quantile(hist, 0.0) == pytest.approx(latency_quantile(hist, 0.5))


# -- sparse wire form <-> dense arrays ------------------------------------------------


@st.composite
def dense_partials(draw: st.DrawFn, buckets: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    if buckets is None:
        buckets = draw(st.integers(1, 70))
    value = st.one_of(st.just(0.0), st.just(0.0), st.floats(-1e9, 1e9, allow_nan=False, allow_subnormal=False))
    sums = draw(hnp.arrays(np.float64, (N_FIELDS, buckets), elements=value))
    # make some bucket columns wholly empty, as thin traffic does
    empty = draw(hnp.arrays(np.bool_, buckets))
    sums[:, empty] = 0.0
    hist = draw(hnp.arrays(np.int64, N_LATENCY_BINS, elements=st.one_of(st.just(0), st.integers(0, 10**12))))
    return sums, hist


@settings(max_examples=100, deadline=None)
@given(partial=dense_partials())
def test_sparse_form_reproduces_dense_sums_and_histogram_exactly(partial: tuple[np.ndarray, np.ndarray]) -> None:
    sums, hist = partial
    window = _window(sums, hist)
    # only non-empty buckets and bins travel
    assert len(window.bucket_ids) == int(np.any(sums != 0.0, axis=0).sum())
    assert len(window.latency_bins) == int(np.count_nonzero(hist))
    # ... through the JSON wire, as consumers see it
    wire = msgspec.json.decode(msgspec.json.encode(window), type=MetricWindow)
    assert wire == window

    dense_sums, dense_hist = window_arrays(wire)

    assert dense_sums.shape == (N_FIELDS, sums.shape[1])
    assert dense_sums.dtype == np.float64
    assert np.array_equal(dense_sums, sums)
    assert dense_hist.shape == (N_LATENCY_BINS,)
    assert np.array_equal(dense_hist, hist)


def test_sparse_form_of_an_empty_partial() -> None:
    sums = np.zeros((N_FIELDS, 8))
    hist = np.zeros(N_LATENCY_BINS, np.int64)
    assert sparse_window_arrays(sums, hist) == ((), ((),) * N_FIELDS, (), ())
    dense_sums, dense_hist = window_arrays(_window(sums, hist))
    assert dense_sums.shape == (N_FIELDS, 8)
    assert not dense_sums.any()
    assert not dense_hist.any()


def _good() -> MetricWindow:
    sums = np.zeros((N_FIELDS, 8))
    sums[:, 2] = 1.0
    sums[:, 5] = 2.0
    hist = np.zeros(N_LATENCY_BINS, np.int64)
    hist[[3, 40]] = [1, 2]
    return _window(sums, hist)


BAD_LAYOUTS: list[tuple[str, dict[str, Any]]] = [
    ("fields", {"fields": BUCKET_FIELDS[:-1]}),
    ("fields", {"fields": (*BUCKET_FIELDS, "extra")}),
    ("fields", {"fields": tuple(reversed(BUCKET_FIELDS))}),
    ("fields", {"fields": ("clicks_renamed", *BUCKET_FIELDS[1:])}),
    ("bucket_ids", {"bucket_ids": (2, 2)}),
    ("bucket_ids", {"bucket_ids": (2, 8)}),
    ("bucket_ids", {"bucket_ids": (-1, 5)}),
    ("bucket_ids", {"bucket_ids": (2, 5), "buckets": 4}),
    ("sums", {"sums": ((1.0, 2.0),) * (N_FIELDS - 1)}),
    ("sums", {"sums": ((1.0, 2.0, 3.0),) * N_FIELDS}),
    ("sums", {"sums": ((1.0,),) * N_FIELDS}),
    ("latency_bins", {"latency_bins": (3,)}),
    ("latency_bins", {"latency_counts": (1, 2, 3)}),
    ("latency_bins", {"latency_bins": (3, N_LATENCY_BINS)}),
    ("latency_bins", {"latency_bins": (-1, 40)}),
]


@pytest.mark.parametrize(("field", "change"), BAD_LAYOUTS)
def test_window_arrays_refuses_bad_layouts_naming_the_field(field: str, change: dict[str, Any]) -> None:
    window = msgspec.structs.replace(_good(), **change)
    with pytest.raises(ValueError, match=rf"^{field}:"):
        window_arrays(window)


def test_the_good_layout_used_above_is_accepted() -> None:
    sums, hist = window_arrays(_good())
    assert sums[:, 2].tolist() == [1.0] * N_FIELDS
    assert sums[:, 5].tolist() == [2.0] * N_FIELDS
    assert hist.sum() == 3


def _refusal_of(window: MetricWindow) -> str | None:
    try:
        window_arrays(window)
    except ValueError as err:
        return str(err)
    return None


@pytest.mark.parametrize(
    "change",
    [
        # 2 buckets: sums as 2 rows of N_FIELDS (transposed) instead of N_FIELDS rows of 2
        {"sums": tuple(tuple(float(b * N_FIELDS + f) for f in range(N_FIELDS)) for b in range(2))},
        # all values in one flat row
        {"sums": (tuple(1.0 for _ in range(2 * N_FIELDS)),)},
        # values without buckets to put them in
        {"bucket_ids": (), "sums": ((5.0,),) * N_FIELDS},
    ],
    ids=["transposed", "flattened", "no-bucket-ids"],
)
def test_window_arrays_refuses_misshapen_sums(change: dict[str, Any]) -> None:
    window = msgspec.structs.replace(_good(), **change)
    error = _refusal_of(window)
    assert error is not None, "accepted"
    assert error.startswith("sums:"), error


def test_window_arrays_refuses_ragged_sums_naming_sums() -> None:
    window = msgspec.structs.replace(_good(), sums=((1.0, 2.0),) * (N_FIELDS - 1) + ((1.0,),))
    error = _refusal_of(window)
    assert error is not None, "accepted"
    assert error.startswith("sums:"), error


# -- merging ------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    partials=st.lists(dense_partials(buckets=16) | st.just(None), min_size=1, max_size=6),
    seed=st.integers(0, 2**32 - 1),
)
def test_merge_by_arm_adds_partials(partials: list[Any], seed: int) -> None:
    rng = np.random.default_rng(seed)
    windows: dict[str, MetricWindow] = {}
    expected: dict[tuple[str, str], dict[str, Any]] = {}
    for i, partial in enumerate(partials):
        if partial is None:
            sums = rng.integers(0, 5, size=(N_FIELDS, 16)).astype(np.float64)
            hist = rng.integers(0, 3, size=N_LATENCY_BINS)
        else:
            sums, hist = partial
        surface = ("home", "search")[i % 2]
        arm = ("control", "treatment", "t2")[int(rng.integers(0, 3))]
        start = int(rng.integers(0, 3)) * 60_000
        late = bool(rng.integers(0, 2))
        events = int(rng.integers(0, 1000))
        cohort = ("new", "returning")[int(rng.integers(0, 2))]
        windows[f"p{i}"] = _window(
            sums,
            hist,
            partial_id=f"p{i}",
            surface=surface,
            arm_id=arm,
            start=start,
            late=late,
            item_events=events,
            cohort=cohort,
        )
        acc = expected.setdefault(
            (surface, arm),
            {
                "sums": np.zeros((N_FIELDS, 16)),
                "hist": np.zeros(N_LATENCY_BINS, np.int64),
                "events": 0,
                "late": 0,
                "starts": set(),
            },
        )
        acc["sums"] = acc["sums"] + sums
        acc["hist"] = acc["hist"] + hist
        acc["events"] += events
        acc["late"] += events if late else 0
        acc["starts"].add(start)

    merged = merge_by_arm(windows)

    assert set(merged) == set(expected)
    for key, want in expected.items():
        got = merged[key]
        assert (got.surface, got.arm_id) == key
        assert np.allclose(got.sums, want["sums"], rtol=1e-12, atol=0.0)
        assert np.array_equal(got.latency_hist, want["hist"])
        assert got.item_events == want["events"]
        assert got.late_item_events == want["late"]
        assert got.windows == len(want["starts"])

    by_cohort = merge_by_arm_cohort(windows)
    assert {(s, a) for s, a, _ in by_cohort} == set(expected)
    assert {c for _, _, c in by_cohort} <= {"new", "returning"}
    for key, got in merged.items():
        parts = [t for (s, a, _), t in by_cohort.items() if (s, a) == key]
        assert np.allclose(sum(t.sums for t in parts), got.sums, rtol=1e-12, atol=0.0), "cohorts add up to the arm"
        assert np.array_equal(sum(t.latency_hist for t in parts), got.latency_hist)
        assert sum(t.item_events for t in parts) == got.item_events


def test_merge_by_arm_totals_and_ratios() -> None:
    a = np.zeros((N_FIELDS, 4))
    a[FIELD_INDEX["impressions"], 0] = 100
    a[FIELD_INDEX["clicks"], 0] = 5
    b = np.zeros((N_FIELDS, 4))
    b[FIELD_INDEX["impressions"], 3] = 50
    b[FIELD_INDEX["clicks"], 3] = 10
    hist = np.zeros(N_LATENCY_BINS, np.int64)
    hist[30] = 4
    merged = merge_by_arm(
        {
            "x": _window(a, hist, partial_id="x", item_events=105),
            "y": _window(b, hist, partial_id="y", start=60_000, late=True, item_events=60),
            "z": _window(b, hist, partial_id="z", arm_id="treatment", item_events=60),
        }
    )
    control = merged[("home", "control")]
    assert control.total("impressions") == 150.0
    assert control.total("clicks") == 15.0
    assert control.ratio("clicks", "impressions") == pytest.approx(0.1)
    assert math.isnan(control.ratio("clicks", "conversions"))
    assert control.sums[FIELD_INDEX["clicks"]].tolist() == [5.0, 0.0, 0.0, 10.0]
    assert control.latency_hist[30] == 8
    assert (control.item_events, control.late_item_events, control.windows) == (165, 60, 2)
    assert merged[("home", "treatment")].total("clicks") == 10.0


def test_merge_by_arm_refuses_partials_with_different_bucket_counts() -> None:
    hist = np.zeros(N_LATENCY_BINS, np.int64)
    windows = {
        "a": _window(np.ones((N_FIELDS, 4)), hist, partial_id="a"),
        "b": _window(np.ones((N_FIELDS, 8)), hist, partial_id="b"),
    }
    with pytest.raises(ValueError, match=r"^buckets:"):
        merge_by_arm(windows)


def test_merge_by_arm_of_nothing_is_empty() -> None:
    assert merge_by_arm({}) == {}


# -- user buckets ---------------------------------------------------------------------


def test_user_bucket_is_crc32_and_pinned() -> None:
    # Pinned values: every worker, sidecar and analysis run must agree forever.
    assert [user_bucket(u, 64) for u in ("u1", "u2", "alice", "")] == [54, 12, 7, 0]
    assert user_bucket("u1", 1000) == 422
    assert user_bucket("ü-ñ", 256) == zlib.crc32("ü-ñ".encode()) % 256


@settings(max_examples=200, deadline=None)
@given(user=st.text(max_size=64), buckets=st.integers(1, 65_536))
def test_user_bucket_is_in_range_and_deterministic(user: str, buckets: int) -> None:
    bucket = user_bucket(user, buckets)
    assert 0 <= bucket < buckets
    assert bucket == user_bucket(user, buckets)
    assert bucket == zlib.crc32(user.encode()) % buckets
    assert user_bucket(user, 1) == 0


def test_user_buckets_spread_users_evenly() -> None:
    counts = np.bincount([user_bucket(f"u{i}", 64) for i in range(64_000)], minlength=64)
    assert counts.min() > 850
    assert counts.max() < 1150
