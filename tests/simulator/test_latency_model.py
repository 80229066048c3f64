"""The latency model: closed forms, sampling, and the calibration fit (with a fake timer, never wall clock)."""

from __future__ import annotations

import itertools

import msgspec
import numpy as np
import pytest

from schemas.config import default_config
from serving_sidecar.candidates import synthetic_candidates
from simulator import latency as lat
from simulator.scenario import LatencySpec, load_scenario

SPEC = LatencySpec(
    base_ms=5.0,
    per_prerank_candidate_ms=0.01,
    per_rank_candidate_ms=0.03,
    rerank_ms_per_pool_slot=0.002,
    jitter_sigma=0.3,
)


def test_median_and_p99_follow_the_formula_with_cuts_clamped() -> None:
    config = default_config()  # cut 1000, rank cut 100, list 12
    assert lat.median_ms(SPEC, config, 5_000) == pytest.approx(5.0 + 10.0 + 3.0 + 2.4)
    # Only 400 candidates: the cascade cannot keep 1000.
    assert lat.median_ms(SPEC, config, 400) == pytest.approx(5.0 + 4.0 + 3.0 + 2.4)
    assert lat.p99_ms(SPEC, config, 5_000) == pytest.approx(20.4 * np.exp(2.3263478740408408 * 0.3))
    samples = lat.sample_ms(SPEC, 20.4, np.random.default_rng(0), 200_000)
    assert np.quantile(samples, 0.99) == pytest.approx(lat.p99_ms(SPEC, config, 5_000), rel=0.02)
    assert samples.mean() == pytest.approx(lat.mean_ms(SPEC, config, 5_000), rel=0.01)


def test_latency_grows_with_every_cut() -> None:
    base = default_config()
    bigger = [
        msgspec.structs.replace(base, pre_rank=msgspec.structs.replace(base.pre_rank, candidate_cut=2_000)),
        msgspec.structs.replace(
            base,
            pre_rank=msgspec.structs.replace(base.pre_rank, candidate_cut=2_000),
            rank=msgspec.structs.replace(base.rank, cut=300),
        ),
    ]
    values = [lat.median_ms(SPEC, c, 10_000) for c in (base, *bigger)]
    assert values == sorted(values) and len(set(values)) == 3


def test_fit_recovers_known_coefficients_from_a_fake_timer() -> None:
    truth = LatencySpec(
        base_ms=0.2,
        per_prerank_candidate_ms=1e-4,
        per_rank_candidate_ms=5e-4,
        rerank_ms_per_pool_slot=4e-5,
        jitter_sigma=0.0,
    )
    candidates = synthetic_candidates(3_000, np.random.default_rng(0))
    grid = lat.calibration_grid(default_config())
    # A fake clock that advances by the true model's latency of the config being timed.
    expected = iter([v for c in grid for v in (0.0, lat.median_ms(truth, c, len(candidates)) * 5 / 1e3)])
    clock = itertools.accumulate(expected)
    timings = lat.measure_cascade(candidates, grid, rng=np.random.default_rng(0), repeats=5, timer=lambda: next(clock))
    assert [t.duration_ms for t in timings] == pytest.approx([lat.median_ms(truth, c, 3_000) for c in grid])
    fitted = lat.fit_latency(timings, jitter_sigma=0.2, scale=10.0)
    assert fitted.base_ms == pytest.approx(2.0, rel=1e-6)
    assert fitted.per_prerank_candidate_ms == pytest.approx(1e-3, rel=1e-6)
    assert fitted.per_rank_candidate_ms == pytest.approx(5e-3, rel=1e-6)
    assert fitted.rerank_ms_per_pool_slot == pytest.approx(4e-4, rel=1e-6)
    assert fitted.jitter_sigma == 0.2
    with pytest.raises(ValueError, match="at least 4 points"):
        lat.fit_latency(timings[:3])


def test_the_shipped_slo_binds_near_the_default_cuts() -> None:
    for name in ("apparel_core", "apparel_seasonal"):
        scenario = load_scenario(name)
        base = default_config()
        p99 = lat.p99_ms(scenario.latency, base, 5_000)
        assert p99 < scenario.latency_slo_ms
        five_times = msgspec.structs.replace(base, pre_rank=msgspec.structs.replace(base.pre_rank, candidate_cut=5_000))
        assert lat.p99_ms(scenario.latency, five_times, 5_000) > scenario.latency_slo_ms
