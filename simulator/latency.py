"""The ranker latency model of the fast path, and how its coefficients were calibrated.

Callers: `simulator.world.World` (`latency_ms`, the latency column of
`simulate`, `Expected.latency_p99_ms`), `simulator.oracle` (the SLO check),
and whoever recalibrates a scenario (`measure_cascade` + `fit_latency`).

Model (scenario `latency` block): a request's latency is

    (base_ms + per_prerank_candidate_ms · candidate_cut
             + per_rank_candidate_ms · rank.cut
             + rerank_ms_per_pool_slot · rank.cut · list_size) · LogNormal(0, jitter_sigma)

with every cut clamped to what the stage before produced, as the cascade
does.  The median is the bracket; p99 = median · exp(2.326 · jitter_sigma).

Calibration.  `measure_cascade` times the real `serving_sidecar.cascade.rank`
on a world's candidate set over `calibration_grid` (candidate_cut 200/1000/4000
x rank.cut 50/200 x list_size 8/24) and `fit_latency` fits the intercept and
slopes by least squares.  Measured on the shared 2-vCPU development VM
(apparel_core, ~7 300 candidates, load ~4; two runs): base 0.9-1.3 ms (the
pre-rank matrix-vector product and partition over all candidates),
0.08-0.17 µs per pre-rank survivor, ~0 per rank-pool item, 0.13-0.27 µs per
pool item per slot (the MMR loop).  The reference cascade reads *precomputed*
predictions; a production ranker pays, per pre-rank survivor, a feature fetch
and a rank-model inference (batched GBDT/small-DNN scorers: ~5-20 µs per
candidate), and its re-rank fetches each pool item's embedding and features.
The shipped scenarios therefore keep the measured *shape* (a fixed cost, a
term linear in the survivors, a pool x slots term for MMR) and scale it to a
production ranker: 12 µs per survivor (~100x the reference arithmetic),
40 µs per rank-pool item (feature/embedding fetch), 2 µs per pool item per
slot (~10x), and a 6 ms base for retrieval and feature fetch; lognormal
jitter sigma 0.25.  At `default_config()` (1 000 survivors, pool 100, 12
slots) that is a median of ~24 ms and a p99 of ~44 ms against the 50 ms SLO,
so the SLO binds near the default cuts (5 000 survivors would break it).
The demo path, which runs the real cascade, reports either the real
(sub-millisecond to few-ms) timing or this model (`World.latency_ms`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import msgspec
import numpy as np
from numpy.typing import NDArray

from schemas.config import CascadeConfig
from serving_sidecar.candidates import CandidateSet
from serving_sidecar.cascade import rank
from simulator.scenario import LatencySpec

Z99: Final = 2.3263478740408408


def effective_cuts(config: CascadeConfig, n_candidates: int) -> tuple[int, int, int]:
    """(pre-rank survivors, rank pool, list slots) the cascade really works on for `n_candidates`."""
    survivors = min(config.pre_rank.candidate_cut, n_candidates)
    pool = min(config.rank.cut, survivors)
    slots = min(config.re_rank.list_size, pool)
    return survivors, pool, slots


def median_ms(spec: LatencySpec, config: CascadeConfig, n_candidates: int) -> float:
    """Median modelled latency of `config` on `n_candidates` candidates."""
    survivors, pool, slots = effective_cuts(config, n_candidates)
    return (
        spec.base_ms
        + spec.per_prerank_candidate_ms * survivors
        + spec.per_rank_candidate_ms * pool
        + spec.rerank_ms_per_pool_slot * pool * slots
    )


def p99_ms(spec: LatencySpec, config: CascadeConfig, n_candidates: int) -> float:
    """99th percentile of the modelled latency (exact for the lognormal jitter)."""
    return median_ms(spec, config, n_candidates) * float(np.exp(Z99 * spec.jitter_sigma))


def mean_ms(spec: LatencySpec, config: CascadeConfig, n_candidates: int) -> float:
    """Mean of the modelled latency."""
    return median_ms(spec, config, n_candidates) * float(np.exp(0.5 * spec.jitter_sigma**2))


def sample_ms(spec: LatencySpec, median: float, rng: np.random.Generator, size: int) -> NDArray[np.float64]:
    """`size` latencies around `median` with the scenario's lognormal jitter."""
    out: NDArray[np.float64] = median * np.exp(spec.jitter_sigma * rng.standard_normal(size))
    return out


@dataclass(frozen=True, slots=True)
class Timing:
    """One calibration point: the cuts the cascade worked on and its mean wall time per call."""

    survivors: int
    pool: int
    slots: int
    duration_ms: float


def measure_cascade(
    candidates: CandidateSet,
    configs: Sequence[CascadeConfig],
    *,
    rng: np.random.Generator,
    repeats: int = 20,
    timer: Callable[[], float] = time.perf_counter,
) -> list[Timing]:
    """Time the real `cascade.rank` on `candidates` for each config (mean of `repeats` calls after a warm-up).

    A measurement tool for recalibrating scenarios (not used by the world at
    run time); `timer` is injectable so tests can check the bookkeeping.
    """
    out: list[Timing] = []
    for config in configs:
        rank(candidates, config, rng)
        start = timer()
        for _ in range(repeats):
            rank(candidates, config, rng)
        elapsed_ms = (timer() - start) * 1e3 / repeats
        out.append(Timing(*effective_cuts(config, len(candidates)), elapsed_ms))
    return out


def calibration_grid(base: CascadeConfig) -> list[CascadeConfig]:
    """A grid of cuts around `base` that separates the three slopes (for `measure_cascade`)."""
    return [
        msgspec.structs.replace(
            base,
            pre_rank=msgspec.structs.replace(base.pre_rank, candidate_cut=cut),
            rank=msgspec.structs.replace(base.rank, cut=pool),
            re_rank=msgspec.structs.replace(base.re_rank, list_size=size, sponsored_positions=(), sponsored_quota=0),
        )
        for cut in (200, 1_000, 4_000)
        for pool in (50, 200)
        for size in (8, 24)
    ]


def fit_latency(timings: Sequence[Timing], *, jitter_sigma: float = 0.0, scale: float = 1.0) -> LatencySpec:
    """Least-squares fit of the model's intercept and slopes to `timings`, each multiplied by `scale`.

    Negative fitted terms (measurement noise) are clamped to 0.
    """
    if len(timings) < 4:
        msg = "fit_latency: timings must hold at least 4 points (one per coefficient)"
        raise ValueError(msg)
    x = np.array([[1.0, t.survivors, t.pool, t.pool * t.slots] for t in timings])
    y = np.array([t.duration_ms for t in timings])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    coef = np.maximum(coef, 0.0) * scale
    return LatencySpec(
        base_ms=float(coef[0]),
        per_prerank_candidate_ms=float(coef[1]),
        per_rank_candidate_ms=float(coef[2]),
        rerank_ms_per_pool_slot=float(coef[3]),
        jitter_sigma=jitter_sigma,
    )
