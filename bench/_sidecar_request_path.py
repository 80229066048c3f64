"""The request-path phases of the sidecar benchmark: per-request overhead and the cascade.

`bench/sidecar.py` runs these after propagation, on the same `Sidecar`:
`measure_overhead` times ``snapshot + assign + record`` per request over a
Zipf user population (the timer's own cost subtracted) with `begin`/`finish`
beside it, and `measure_cascade` times `rank()` on 100,000 synthetic
candidates with a per-stage breakdown.  Nothing here waits on the broker
(`finish` only queues impressions for the event sink): both phases are
in-process work, measured with `perf_counter_ns`, thread CPU time and the
thread's context switches.
"""

from __future__ import annotations

import argparse
import gc
import resource
import time
from dataclasses import dataclass
from typing import Final

import msgspec
import numpy as np
import numpy.typing as npt
from _sidecar_stats import FloatArray, first_seen_fraction, pct, zipf_users

from schemas.config import CascadeConfig, default_config, validate_config
from schemas.events import ShownItem
from schemas.guardrails import Guardrails
from serving_sidecar.candidates import synthetic_candidates
from serving_sidecar.cascade import pre_rank, rank, rank_stage, re_rank
from serving_sidecar.sidecar import Sidecar

CASCADE_CANDIDATES: Final = 100_000
CASCADE_SETS: Final = 3


# -- overhead ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Overhead:
    """Per-request cost of snapshot + assign + record (ns), the timer's cost, components, facade context."""

    raw_ns: npt.NDArray[np.int64]
    timer_ns: npt.NDArray[np.int64]
    components_ns: dict[str, float]  # median corrected ns per component
    begin_ns: npt.NDArray[np.int64]
    finish_ns: npt.NDArray[np.int64]
    miss_fraction: float
    arms: dict[str, int]

    @property
    def timer_median_ns(self) -> float:
        return float(np.median(self.timer_ns))

    def corrected_us(self, q: float) -> float:
        return (pct(self.raw_ns, q) - self.timer_median_ns) / 1000.0


def measure_overhead(sidecar: Sidecar, args: argparse.Namespace, ranked_items: tuple[ShownItem, ...]) -> Overhead:
    """The overhead phase: per-call timing over a Zipf user population, timer cost subtracted."""
    rng = np.random.default_rng(args.seed + 1)
    n = args.requests
    users = zipf_users(n, args.users, rng)
    latencies: list[float] = rng.lognormal(np.log(8.0), 0.4, size=n).tolist()
    start_s = time.monotonic()
    nows: list[float] = (start_s + np.arange(n) * (args.overhead_span_s / n)).tolist()
    holder, router, monitor = sidecar.holder, sidecar.router, sidecar.monitor
    snapshot_of, assign, record = holder.snapshot, router.assign, monitor.record
    clock = time.perf_counter_ns
    for i in range(2_000):  # build the route of this snapshot; warm-up users are not in the population
        snap = snapshot_of()
        assert snap is not None
        record(assign(snap, f"warm-{i}").arm_id, 5.0, start_s)

    def timer_only() -> npt.NDArray[np.int64]:
        out = [0] * n
        for i in range(n):
            t0 = clock()
            t1 = clock()
            out[i] = t1 - t0
        return np.asarray(out, dtype=np.int64)

    def whole() -> npt.NDArray[np.int64]:
        out = [0] * n
        for i in range(n):
            uid, lat, now = users[i], latencies[i], nows[i]
            t0 = clock()
            snap = snapshot_of()
            arm = assign(snap, uid).arm_id  # type: ignore[arg-type]
            record(arm, lat, now)
            t1 = clock()
            out[i] = t1 - t0
        return np.asarray(out, dtype=np.int64)

    gc.collect()
    timer_ns = timer_only()
    raw_ns = whole()
    timer_ns = np.concatenate([timer_ns, timer_only()])  # before and after: drift shows in the table

    # Components, each on its own (same corrections); a second pass over other users' strings.
    snap = snapshot_of()
    assert snap is not None
    users2 = zipf_users(n, args.users, rng)
    arms = [assign(snap, u).arm_id for u in users2[:1000]]
    comp: dict[str, list[int]] = {"snapshot": [], "assign": [], "record": []}
    for i in range(n):
        t0 = clock()
        snapshot_of()
        t1 = clock()
        assign(snap, users2[i])
        t2 = clock()
        record(arms[i % 1000], latencies[i], nows[i])
        t3 = clock()
        comp["snapshot"].append(t1 - t0)
        comp["assign"].append(t2 - t1)
        comp["record"].append(t3 - t2)
    timer_median = float(np.median(timer_ns))
    components = {k: float(np.median(v)) - timer_median for k, v in comp.items()}

    # Facade context: begin() (uuid4, token) and finish() (impression to the event sink).
    m = min(n, args.facade_calls)
    begin_ns, finish_ns = [0] * m, [0] * m
    for i in range(m):
        t0 = clock()
        request = sidecar.begin(users[i], surface="home", cohort="returning")
        t1 = clock()
        sidecar.finish(request, ranked_items, latency_ms=latencies[i])
        t2 = clock()
        begin_ns[i], finish_ns[i] = t1 - t0, t2 - t1
    counts: dict[str, int] = {}
    for u in set(users):
        a = assign(snap, u).arm_id
        counts[a] = counts.get(a, 0) + 1
    return Overhead(
        raw_ns=raw_ns,
        timer_ns=timer_ns,
        components_ns=components,
        begin_ns=np.asarray(begin_ns, dtype=np.int64),
        finish_ns=np.asarray(finish_ns, dtype=np.int64),
        miss_fraction=first_seen_fraction(users),
        arms=counts,
    )


# -- cascade -------------------------------------------------------------------------------


def cascade_config() -> CascadeConfig:
    """100,000 -> 1,000 -> 200 -> 50 shown, exploration 0.05, two sponsored slots."""
    base = default_config()
    config = msgspec.structs.replace(
        base,
        pre_rank=msgspec.structs.replace(base.pre_rank, candidate_cut=1_000),
        rank=msgspec.structs.replace(base.rank, cut=200),
        re_rank=msgspec.structs.replace(
            base.re_rank,
            list_size=50,
            exploration_rate=0.05,
            max_per_category=6,
            max_per_brand=5,
            sponsored_quota=2,
            sponsored_positions=(2, 7, 15, 30),
        ),
    )
    Guardrails().check(validate_config(config))
    return config


@dataclass(frozen=True, slots=True)
class Cascade:
    """Per-call wall and thread-CPU time (ms), stage medians/p99s (ms), list lengths."""

    wall_ms: FloatArray
    cpu_ms: FloatArray
    stages_ms: dict[str, tuple[float, float]]
    lengths: list[int]
    preempted: npt.NDArray[np.bool_]  # >= 1 involuntary context switch during the call (another task ran)
    blocked: npt.NDArray[np.bool_]  # >= 1 voluntary switch (waited: the GIL, I/O)
    generate_s: float


def measure_cascade(args: argparse.Namespace) -> Cascade:
    """The cascade phase on three rotating 100,000-candidate sets."""
    rng = np.random.default_rng(args.seed + 2)
    t = time.perf_counter()
    sets = [synthetic_candidates(CASCADE_CANDIDATES, rng) for _ in range(CASCADE_SETS)]
    generate_s = time.perf_counter() - t
    config = cascade_config()
    for i in range(10):
        rank(sets[i % CASCADE_SETS], config, rng)
    gc.collect()
    wall, cpu, lengths, preempted, blocked = [], [], [], [], []
    for i in range(args.cascade_calls):
        candidates = sets[i % CASCADE_SETS]
        u0 = resource.getrusage(resource.RUSAGE_THREAD)
        c0, w0 = time.thread_time_ns(), time.perf_counter_ns()
        ranked = rank(candidates, config, rng)
        w1, c1 = time.perf_counter_ns(), time.thread_time_ns()
        u1 = resource.getrusage(resource.RUSAGE_THREAD)
        preempted.append(u1.ru_nivcsw > u0.ru_nivcsw)
        blocked.append(u1.ru_nvcsw > u0.ru_nvcsw)
        wall.append((w1 - w0) / 1e6)
        cpu.append((c1 - c0) / 1e6)
        lengths.append(len(ranked))
    stages: dict[str, list[float]] = {"pre_rank": [], "rank_stage": [], "re_rank": []}
    for i in range(max(args.cascade_calls // 3, 20)):
        candidates = sets[i % CASCADE_SETS]
        t0 = time.perf_counter_ns()
        survivors, _ = pre_rank(candidates, config.pre_rank)
        t1 = time.perf_counter_ns()
        pool, scores = rank_stage(candidates, survivors, config.rank)
        t2 = time.perf_counter_ns()
        re_rank(candidates, pool, scores, config.re_rank, rng)
        t3 = time.perf_counter_ns()
        stages["pre_rank"].append((t1 - t0) / 1e6)
        stages["rank_stage"].append((t2 - t1) / 1e6)
        stages["re_rank"].append((t3 - t2) / 1e6)
    return Cascade(
        wall_ms=np.asarray(wall),
        preempted=np.asarray(preempted, dtype=np.bool_),
        blocked=np.asarray(blocked, dtype=np.bool_),
        cpu_ms=np.asarray(cpu),
        stages_ms={k: (pct(v, 50), pct(v, 99)) for k, v in stages.items()},
        lengths=lengths,
        generate_s=generate_s,
    )
