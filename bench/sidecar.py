"""Sidecar benchmark (issue 3, "Measure"): config propagation, request overhead, the cascade, a config storm.

One run, one broker (embedded tansu by default), one `Sidecar` built with a
bench-only keyring generated at run time (`os.urandom`) and started as a
ranker would start it.  Four measurements, in this order:

- **propagation**: >= 1,000 signed config changes produced one at a time by a
  long-lived aiokafka producer (`send_and_wait`, acks=all), each built with
  `prepare` (version, parent, signature, the sidecar's own checks) before any
  timing.  The kinds cycle (activate a 12-item config, activate a 10-item
  config, start an A/B allocation, roll back), so every change alters what
  some user is served.  `t_sent` is read right before `send_and_wait`;
  `t_active` is when a watcher thread (polling `holder.snapshot()` with a
  ~0.1 ms sleep, so it never holds the GIL against the consumer) first sees
  that version; its polling period is reported as the resolution.  The next
  change goes out once the previous one is active, or after `--inflight-cap-ms`
  if it is not (so a slow broker cannot stretch the run), plus a random
  0..`--gap-ms` pause so changes do not phase-lock with the consumer's fetch
  cycle.  Hooks on the consumer's `apply_record` and the holder's `update`
  split the time into broker + fetch, fold (verify, apply, snapshot) and
  watcher lag.
- **overhead**: `holder.snapshot()` + `router.assign()` + `monitor.record()`
  per request, timed with `perf_counter_ns` around the three calls, over
  `--requests` calls from a Zipf(1) population of `--users` users (fresh id
  strings per request, so cache hits and misses are as in production), an
  A/B allocation live; the timer's own cost (two back-to-back
  `perf_counter_ns`, measured the same way) is subtracted.  The JSON carries
  the corrected figures; raw ones and per-call components are in the table.
- **cascade**: `rank()` on 100,000 synthetic candidates -> 1,000 -> 200 -> 50
  shown (exploration 0.05, sponsored slots on), `--cascade-calls` calls over
  three rotating candidate sets; wall and thread-CPU time per call, the
  calls' context switches (`getrusage(RUSAGE_THREAD)`: an involuntary one
  means another task took the core), and a per-stage breakdown.
- **storm**: a ranker loop (`begin` -> `rank` on 20,000 candidates ->
  `to_shown_items` -> `finish`, event sink on) timed per request, in quiet
  phases (no config change) and storm phases (a change every 0.1 s, from a
  separate publisher process by default), `--storm-rounds` short rounds of
  each in ABBA order, each phase after an untimed lead-in; the ratio of
  pooled p99s (storm / quiet), with per-round figures and an interval from
  resampling whole rounds, since the machine is shared and its noise comes
  in bursts; thread-CPU and never-preempted p99s are reported beside it.

Prints a table, then as the last line one JSON object: the six figures of the
issue, `targets_met` per target and `context`.

    .venv/bin/python bench/sidecar.py            # full run (for make bench), ~2 min
    .venv/bin/python bench/sidecar.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import resource
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, Protocol

import msgspec
import numpy as np
import numpy.typing as npt
from _sidecar_storm import KEYS_ENV, StormPlan, StormPublisher, StormRound
from aiokafka import AIOKafkaProducer

from rectune.admin import catalogue_for, ensure_topics
from rectune.config_log_io import draft, prepare, publish_records
from rectune.embedded import start_tansu
from schemas.config import Allocation, ArmShare, CascadeConfig, default_config, validate_config
from schemas.config_log import ConfigChange, Keyring, ServingState, apply, encode_change
from schemas.events import ShownItem
from schemas.guardrails import Guardrails
from schemas.topics import CONFIG
from serving_sidecar.candidates import CandidateSet, synthetic_candidates
from serving_sidecar.cascade import pre_rank, rank, rank_stage, re_rank
from serving_sidecar.holder import Snapshot
from serving_sidecar.loop_thread import LoopThread
from serving_sidecar.sidecar import Sidecar, SidecarConfig

REPO: Final = Path(__file__).resolve().parent.parent
STORM_SCRIPT: Final = Path(__file__).resolve().parent / "_sidecar_storm.py"

# Targets of issue 3.
TARGET_PROPAGATION_P99_MS: Final = 50.0
TARGET_OVERHEAD_MEDIAN_US: Final = 3.0
TARGET_CASCADE_P99_MS: Final = 15.0
TARGET_STORM_RATIO: Final = 1.05

KEY_ID: Final = "bench"
SALT: Final = "bench-salt"
STORM_EXPERIMENT: Final = "bench-storm"
CYCLE_EXPERIMENT: Final = "bench-cycle"
WATCH_SLEEP_S: Final = 0.0001
CASCADE_CANDIDATES: Final = 100_000
CASCADE_SETS: Final = 3
STORM_SETS: Final = 4
BOOTSTRAP_RESAMPLES: Final = 1_000

FloatArray = npt.NDArray[np.float64]


# -- small helpers -------------------------------------------------------------------------


def pct(values: Sequence[float] | npt.NDArray[np.float64] | npt.NDArray[np.int64], q: float) -> float:
    """The q-th percentile (0..100) of `values` (numpy's linear interpolation)."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (platform string elsewhere)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def with_re_rank(config: CascadeConfig, **changes: Any) -> CascadeConfig:
    """`config` with some re-rank fields replaced."""
    return msgspec.structs.replace(config, re_rank=msgspec.structs.replace(config.re_rank, **changes))


def zipf_users(n_requests: int, n_users: int, rng: np.random.Generator, prefix: str = "user") -> list[str]:
    """`n_requests` user ids drawn from a Zipf(1) law over `n_users` users; a fresh str object per request."""
    weights = 1.0 / np.arange(1, n_users + 1, dtype=np.float64)
    ranks = rng.choice(n_users, size=n_requests, p=weights / weights.sum())
    ids = rng.permutation(n_users)[ranks]  # popularity unrelated to the id
    return [f"{prefix}-{int(i):06d}" for i in ids]


def first_seen_fraction(users: Sequence[str]) -> float:
    """Share of requests whose user had not appeared before in the sequence (bucket-cache misses)."""
    return len(set(users)) / max(len(users), 1)


@dataclass(frozen=True, slots=True)
class Broker:
    """The broker of the run, whatever its kind."""

    kind: str
    bootstrap: str
    stop: Callable[[], None]


def start_broker(kind: str, work_dir: Path) -> Broker:
    """Start the embedded tansu broker (default) or a single-node Apache Kafka."""
    if kind == "tansu":
        tansu = start_tansu(work_dir / "tansu")
        return Broker("tansu", tansu.bootstrap, tansu.stop)
    from rectune.apache_kafka import ApacheKafkaBroker, fetch_kafka_jars

    kafka = ApacheKafkaBroker(work_dir / "kafka", fetch_kafka_jars(REPO / ".cache" / "kafka"))
    kafka.start()
    return Broker("kafka", kafka.bootstrap, kafka.stop)


# -- instrumentation -----------------------------------------------------------------------


class Watcher:
    """A thread polling `holder.snapshot()`; records when each version is first seen (perf_counter s)."""

    def __init__(self, sidecar: Sidecar, sleep_s: float = WATCH_SLEEP_S) -> None:
        self._sidecar = sidecar
        self._sleep_s = sleep_s
        self.seen: dict[int, float] = {}
        self.ticks: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-watcher", daemon=True)

    def start(self) -> None:
        """Start polling."""
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and join."""
        self._stop.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        holder = self._sidecar.holder
        clock, sleep, ticks, seen = time.perf_counter, time.sleep, self.ticks, self.seen
        last: Snapshot | None = None
        last_version = 0
        while not self._stop.is_set():
            snapshot = holder.snapshot()
            now = clock()
            ticks.append(now)
            if snapshot is not last and snapshot is not None:
                last = snapshot
                for version in range(last_version + 1, snapshot.version + 1):
                    seen.setdefault(version, now)
                last_version = max(last_version, snapshot.version)
            sleep(self._sleep_s)

    def period_us(self) -> FloatArray:
        """Polling periods (µs) over the whole watch."""
        return np.diff(np.asarray(self.ticks, dtype=np.float64)) * 1e6


class FoldHooks:
    """Wraps the consumer's `apply_record` and the holder's `update` to time each record's fold (bench only)."""

    def __init__(self, sidecar: Sidecar) -> None:
        self.fold_start: dict[int, float] = {}  # offset -> when the record reached the fold
        self.swapped: dict[int, float] = {}  # version -> when the holder swapped it in
        consumer, holder = sidecar.consumer, sidecar.holder
        apply_record, update = consumer.apply_record, holder.update

        def timed_apply(offset: int, value: bytes | None) -> bool:
            self.fold_start.setdefault(offset, time.perf_counter())
            return apply_record(offset, value)

        def timed_update(change: Callable[[Snapshot], Snapshot]) -> Snapshot | None:
            new = update(change)
            if new is not None:
                self.swapped.setdefault(new.version, time.perf_counter())
            return new

        consumer.apply_record = timed_apply  # type: ignore[method-assign]
        holder.update = timed_update  # type: ignore[method-assign]


# -- propagation ---------------------------------------------------------------------------


@dataclass(slots=True)
class Chain:
    """The local fold of what we publish: the head the next change is prepared against."""

    keyring: Keyring
    guardrails: Guardrails
    head: ServingState = field(default_factory=ServingState)

    def next(self, change: ConfigChange) -> tuple[int, bytes]:
        """Prepare `change` as the next version (signed, checked as the sidecar will); returns (version, record)."""
        ready = prepare(self.head, change, self.keyring, self.guardrails, int(time.time() * 1000))
        self.head = apply(self.head, ready, self.keyring, self.guardrails)
        return ready.version, encode_change(ready)

    def config(self, config: CascadeConfig, *, activate: bool, reason: str) -> tuple[int, bytes]:
        """A `config` change."""
        return self.next(draft("config", author="agent:bench", reason=reason, config=config, activate=activate))

    def allocation(self, experiment: str, treatment_version: int, share: float = 0.5) -> tuple[int, bytes]:
        """An `allocation` change: control vs `treatment_version` at `share`."""
        allocation = Allocation(
            experiment_id=experiment,
            salt=SALT,
            arms=(
                ArmShare("control", self.head.control_version, 1.0 - share),
                ArmShare("treatment", treatment_version, share),
            ),
        )
        return self.next(draft("allocation", author="agent:bench", reason="a/b", allocation=allocation))

    def rollback(self, version: int) -> tuple[int, bytes]:
        """A `rollback` change restoring `version`."""
        return self.next(draft("rollback", author="agent:bench", reason="rollback", restores_version=version))


def propagation_changes(chain: Chain, count: int) -> list[tuple[int, str, bytes]]:
    """`count` changes cycling activate-12 / activate-10 / allocation / rollback: (version, kind, record)."""
    list12, list10 = default_config(), with_re_rank(default_config(), list_size=10)
    out: list[tuple[int, str, bytes]] = []
    v12 = v10 = 0
    while len(out) < count:
        step = len(out) % 4
        if step == 0:
            v12, value = chain.config(list12, activate=True, reason="activate 12-item lists")
            out.append((v12, "activate", value))
        elif step == 1:
            v10, value = chain.config(list10, activate=True, reason="activate 10-item lists")
            out.append((v10, "activate", value))
        elif step == 2:
            version, value = chain.allocation(CYCLE_EXPERIMENT, v12)
            out.append((version, "allocation", value))
        else:
            version, value = chain.rollback(v10)  # ends the experiment: everyone back on 10 items
            out.append((version, "rollback", value))
    return out


@dataclass(frozen=True, slots=True)
class Propagation:
    """Per-change times (ms from t_sent) and the run's facts."""

    kinds: list[str]
    ack_ms: FloatArray
    fold_ms: FloatArray  # t_sent -> the record reached the consumer's fold (broker + fetch)
    swap_ms: FloatArray  # t_sent -> holder swapped (fold included)
    active_ms: FloatArray  # t_sent -> the watcher saw it (the figure)
    timeouts: int
    overlapped: int  # changes sent while an earlier one was not active yet
    watcher_period_us: FloatArray
    duration_s: float


async def produce_one_at_a_time(
    bootstrap: str,
    changes: list[tuple[int, str, bytes]],
    watcher: Watcher,
    args: argparse.Namespace,
    rng: np.random.Generator,
) -> tuple[list[float], list[float], int]:
    """Send each record, wait for it to go active (up to the in-flight cap), pause; returns t_sent, ack times."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    sent: list[float] = []
    acked: list[float] = []
    overlapped = 0
    try:
        await producer.partitions_for(CONFIG.name)
        cap_s = args.inflight_cap_ms / 1000.0
        for i, (version, _, value) in enumerate(changes):
            if i and changes[i - 1][0] not in watcher.seen:
                overlapped += 1
            t_sent = time.perf_counter()
            await producer.send_and_wait(CONFIG.name, value, partition=0)
            acked.append(time.perf_counter())
            sent.append(t_sent)
            # The watcher is a plain thread (no loop coupling that could delay it): poll what it saw.
            while version not in watcher.seen and time.perf_counter() - t_sent < cap_s:  # noqa: ASYNC110
                await asyncio.sleep(0.0002)
            await asyncio.sleep(float(rng.uniform(0.0, args.gap_ms / 1000.0)))
    finally:
        await producer.stop()
    return sent, acked, overlapped


def measure_propagation(
    sidecar: Sidecar, hooks: FoldHooks, chain: Chain, bootstrap: str, args: argparse.Namespace
) -> Propagation:
    """The propagation phase (see the module docstring)."""
    first_offset = chain.head.version  # one record per version, from offset 0: offset = version - 1
    changes = propagation_changes(chain, args.changes)
    watcher = Watcher(sidecar)
    watcher.start()
    begin = time.perf_counter()
    try:
        sent, acked, overlapped = asyncio.run(
            produce_one_at_a_time(bootstrap, changes, watcher, args, np.random.default_rng(args.seed))
        )
        last = changes[-1][0]
        deadline = time.perf_counter() + 10.0
        while last not in watcher.seen and time.perf_counter() < deadline:
            time.sleep(0.001)
    finally:
        watcher.stop()
    duration = time.perf_counter() - begin
    nan = float("nan")
    t0 = np.asarray(sent)
    versions = [v for v, _, _ in changes]
    active = np.asarray([watcher.seen.get(v, nan) for v in versions]) - t0
    swap = np.asarray([hooks.swapped.get(v, nan) for v in versions]) - t0
    fold = np.asarray([hooks.fold_start.get(first_offset + i, nan) for i in range(len(versions))]) - t0
    return Propagation(
        kinds=[k for _, k, _ in changes],
        ack_ms=(np.asarray(acked) - t0) * 1000.0,
        fold_ms=fold * 1000.0,
        swap_ms=swap * 1000.0,
        active_ms=active * 1000.0,
        timeouts=int(np.isnan(active).sum()),
        overlapped=overlapped,
        watcher_period_us=watcher.period_us(),
        duration_s=duration,
    )


def wait_version(sidecar: Sidecar, version: int, timeout_s: float = 30.0) -> None:
    """Block until the sidecar serves `version` (or raise)."""
    deadline = time.monotonic() + timeout_s
    while True:
        snapshot = sidecar.holder.snapshot()
        if snapshot is not None and snapshot.version >= version:
            return
        if time.monotonic() > deadline:
            msg = f"the sidecar did not reach config version {version} within {timeout_s:g} s"
            raise RuntimeError(msg)
        time.sleep(0.002)


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


# -- storm ---------------------------------------------------------------------------------


class StormDriver(Protocol):
    """Starts and stops storms of config changes (a child process, or a thread of this process)."""

    def go(self) -> None: ...

    def stop(self) -> StormRound: ...

    def close(self) -> None: ...


class ProcessStorm:
    """The storm publisher in its own process (`bench/_sidecar_storm.py`), driven over stdin/stdout."""

    def __init__(self, plan: StormPlan, keys_spec: str, timeout_s: float = 60.0) -> None:
        env = dict(os.environ)
        env[KEYS_ENV] = keys_spec
        self._timeout_s = timeout_s
        self._proc = subprocess.Popen(
            [sys.executable, str(STORM_SCRIPT), plan.to_json()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        if self._read() != "ready":
            msg = "the storm publisher did not start"
            raise RuntimeError(msg)

    def _pipes(self) -> tuple[IO[str], IO[str]]:
        stdin, stdout = self._proc.stdin, self._proc.stdout
        assert stdin is not None and stdout is not None
        return stdin, stdout

    def _read(self) -> str:
        _, stdout = self._pipes()
        ready, _, _ = select.select([stdout], [], [], self._timeout_s)
        line = stdout.readline() if ready else ""
        if not line:
            msg = f"the storm publisher gave no answer (exit code {self._proc.poll()})"
            raise RuntimeError(msg)
        return line.strip()

    def _send(self, command: str) -> None:
        stdin, _ = self._pipes()
        stdin.write(command + "\n")
        stdin.flush()

    def go(self) -> None:
        self._send("go")

    def stop(self) -> StormRound:
        self._send("stop")
        return StormRound.from_json(self._read())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._send("quit")
        try:
            self._proc.wait(10.0)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


class ThreadStorm:
    """The storm publisher on a private event-loop thread of this process."""

    def __init__(self, plan: StormPlan, keyring: Keyring) -> None:
        self._thread = LoopThread("bench-storm").start()
        self._publisher = StormPublisher(plan, keyring)
        self._thread.run(self._publisher.start(), 60.0)
        self._stop: asyncio.Event | None = None
        self._future: Any = None

    def go(self) -> None:
        async def begin() -> asyncio.Event:
            return asyncio.Event()

        stop = self._thread.run(begin(), 10.0)
        self._stop = stop
        self._future = self._thread.submit(self._publisher.run(stop))

    def stop(self) -> StormRound:
        assert self._stop is not None
        self._thread.loop.call_soon_threadsafe(self._stop.set)
        result: StormRound = self._future.result(30.0)
        return result

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._thread.run(self._publisher.close(), 10.0)
        self._thread.stop()


@dataclass(frozen=True, slots=True)
class Phase:
    """One timed phase of the ranker loop."""

    kind: str  # "quiet" or "storm"
    latency_ms: FloatArray
    cpu_ms: FloatArray  # the request thread's CPU time (no preemption, no GIL waits)
    preempted: npt.NDArray[np.bool_]  # the request saw >= 1 involuntary context switch
    swapped: npt.NDArray[np.bool_]  # a config swap happened while the request ran
    duration_s: float
    swaps: int
    storm: StormRound | None


class RankerLoop:
    """A synchronous ranker: begin -> rank -> to_shown_items -> finish, one request after another."""

    def __init__(self, sidecar: Sidecar, args: argparse.Namespace) -> None:
        rng = np.random.default_rng(args.seed + 3)
        self.sidecar = sidecar
        self.sets: list[CandidateSet] = [synthetic_candidates(args.storm_candidates, rng) for _ in range(STORM_SETS)]
        self.users = zipf_users(args.storm_requests * (2 * args.storm_rounds + 1), args.users, rng, "storm")
        self.rng = np.random.default_rng(args.seed + 4)
        self._next = 0

    def run_for(self, seconds: float) -> None:
        """Serve requests, untimed, for `seconds`."""
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            self.run(10)

    def run(self, n: int) -> tuple[FloatArray, FloatArray, npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        """Serve `n` requests; per request: wall and thread CPU ms (begin to finish), preempted?, swap during it?"""
        sidecar, sets, rng, users = self.sidecar, self.sets, self.rng, self.users
        clock, cpu_clock = time.perf_counter, time.thread_time_ns
        out = np.empty(n, dtype=np.float64)
        cpu = np.empty(n, dtype=np.float64)
        preempted = np.zeros(n, dtype=np.bool_)
        swapped = np.zeros(n, dtype=np.bool_)
        holder = sidecar.holder
        usage, who = resource.getrusage, resource.RUSAGE_THREAD
        for i in range(n):
            candidates = sets[self._next % STORM_SETS]
            uid = users[self._next % len(users)]
            self._next += 1
            switches = usage(who).ru_nivcsw
            swaps = holder.swaps
            c0 = cpu_clock()
            t0 = clock()
            request = sidecar.begin(uid, surface="home", cohort="returning")
            ranked = sidecar.rank(request, candidates, rng)
            items = ranked.to_shown_items(candidates)
            sidecar.finish(request, items, latency_ms=(clock() - t0) * 1000.0)
            out[i] = (clock() - t0) * 1000.0
            cpu[i] = (cpu_clock() - c0) / 1e6
            preempted[i] = usage(who).ru_nivcsw > switches
            swapped[i] = holder.swaps != swaps
        return out, cpu, preempted, swapped


def measure_storm(sidecar: Sidecar, loop: RankerLoop, driver: StormDriver, args: argparse.Namespace) -> list[Phase]:
    """Quiet and storm phases in ABBA order, each after an unmeasured lead-in of `--storm-lead-s`.

    A storm starts before its lead-in (so changes are already landing when
    timing starts); after its measured requests it is stopped and the last
    change is awaited, so no swap leaks into the next phase.
    """
    order: list[str] = []
    for r in range(args.storm_rounds):
        order += ["quiet", "storm"] if r % 2 == 0 else ["storm", "quiet"]
    loop.run(max(args.storm_requests // 2, 50))  # warm-up
    phases: list[Phase] = []
    for kind in order:
        gc.collect()
        if kind == "storm":
            driver.go()
        loop.run_for(args.storm_lead_s)
        swaps0 = sidecar.holder.swaps
        t0 = time.perf_counter()
        latency, cpu, preempted, hit = loop.run(args.storm_requests)
        duration = time.perf_counter() - t0
        swaps = sidecar.holder.swaps - swaps0
        storm: StormRound | None = None
        if kind == "storm":
            storm = driver.stop()
            wait_version(sidecar, storm.last_version)
        phases.append(Phase(kind, latency, cpu, preempted, hit, duration, swaps, storm))
    return phases


def paired_rounds(phases: list[Phase]) -> list[tuple[Phase, Phase]]:
    """(quiet, storm) of each round, in run order."""
    quiet = [ph for ph in phases if ph.kind == "quiet"]
    storm = [ph for ph in phases if ph.kind == "storm"]
    return list(zip(quiet, storm, strict=True))


def bootstrap_ratio(rounds: list[tuple[Phase, Phase]], rng: np.random.Generator) -> tuple[float, float]:
    """95% interval of the pooled p99(storm) / p99(quiet), resampling whole rounds.

    Whole rounds, not single requests: the noise of a shared machine comes in
    bursts longer than a request, so requests of one phase are not independent.
    """
    ratios = np.empty(BOOTSTRAP_RESAMPLES)
    n = len(rounds)
    for b in range(BOOTSTRAP_RESAMPLES):
        pick = rng.integers(0, n, n)
        quiet = np.concatenate([rounds[i][0].latency_ms for i in pick])
        storm = np.concatenate([rounds[i][1].latency_ms for i in pick])
        ratios[b] = np.percentile(storm, 99) / np.percentile(quiet, 99)
    return float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))


# -- the run -------------------------------------------------------------------------------


@dataclass(slots=True)
class Results:
    """Everything measured in one run."""

    propagation: Propagation | None = None
    overhead: Overhead | None = None
    cascade: Cascade | None = None
    phases: list[Phase] = field(default_factory=list)
    sink: dict[str, int] = field(default_factory=dict)
    consumer: dict[str, int] = field(default_factory=dict)
    load: list[tuple[float, float, float]] = field(default_factory=list)  # os.getloadavg() at start and end
    sink_flush_s: tuple[float, bool] = (0.0, True)  # draining the overhead phase's impressions before the cascade


def run(args: argparse.Namespace, work_dir: Path) -> Results:
    """Start broker and sidecar, run the four phases, clean everything up."""
    results = Results(load=[os.getloadavg()])
    secret = os.urandom(32).hex()  # bench-only key, never stored
    keys_spec = f"{KEY_ID}:{secret}"
    keyring = Keyring.parse(keys_spec, KEY_ID)
    guardrails = Guardrails()
    broker = start_broker(args.broker, work_dir)
    sidecar: Sidecar | None = None
    driver: StormDriver | None = None
    try:
        asyncio.run(ensure_topics(broker.bootstrap, catalogue_for(1)))
        sidecar = SidecarConfig(
            bootstrap=broker.bootstrap, keyring=keyring, source_id="bench-ranker", guardrails=guardrails
        ).build()
        hooks = FoldHooks(sidecar)
        sidecar.start()
        chain = Chain(keyring, guardrails)
        version, value = chain.config(default_config(), activate=True, reason="bench start")
        asyncio.run(publish_records(broker.bootstrap, [value]))
        if not sidecar.wait_ready(30.0):
            msg = "the sidecar never served the first config"
            raise RuntimeError(msg)
        wait_version(sidecar, version)

        print(f"propagation: {args.changes} changes ...", file=sys.stderr, flush=True)
        results.propagation = measure_propagation(sidecar, hooks, chain, broker.bootstrap, args)

        # The experiment the overhead and storm phases run under: control C, treatment A (B is the storm's other).
        base = default_config()
        setup = [chain.config(base, activate=True, reason="storm control")]
        control = setup[0][0]
        setup.append(chain.config(with_re_rank(base, mmr_lambda=0.75), activate=False, reason="storm arm A"))
        setup.append(chain.config(with_re_rank(base, mmr_lambda=0.7), activate=False, reason="storm arm B"))
        arm_a, arm_b = setup[1][0], setup[2][0]
        setup.append(chain.allocation(STORM_EXPERIMENT, arm_a))
        asyncio.run(publish_records(broker.bootstrap, [v for _, v in setup]))
        wait_version(sidecar, setup[-1][0])

        print(f"overhead: {args.requests} requests ...", file=sys.stderr, flush=True)
        loop = RankerLoop(sidecar, args)
        sample = loop.sets[0]
        probe = sidecar.begin("probe", surface="home", cohort="returning")
        items = sidecar.rank(probe, sample, np.random.default_rng(0)).to_shown_items(sample)
        results.overhead = measure_overhead(sidecar, args, items)
        # finish() above queued impressions: let the sink drain so the cascade runs in steady state.
        t = time.perf_counter()
        drained = sidecar.events.flush(60.0)
        results.sink_flush_s = (time.perf_counter() - t, drained)

        print(f"cascade: {args.cascade_calls} calls ...", file=sys.stderr, flush=True)
        results.cascade = measure_cascade(args)

        print(
            f"storm: {args.storm_rounds} x ({args.storm_requests} quiet + {args.storm_requests} storm) ...",
            file=sys.stderr,
            flush=True,
        )
        plan = StormPlan(
            bootstrap=broker.bootstrap,
            key_id=KEY_ID,
            head_version=chain.head.version,
            control_version=control,
            arm_versions=(arm_a, arm_b),
            experiment_id=STORM_EXPERIMENT,
            salt=SALT,
            share=0.5,
            rate_per_s=args.storm_rate,
        )
        driver = ThreadStorm(plan, keyring) if args.storm_producer == "thread" else ProcessStorm(plan, keys_spec)
        results.phases = measure_storm(sidecar, loop, driver, args)
        sink = sidecar.events.stats()
        results.sink = {"emitted": sink.emitted, "dropped": sink.dropped}
        stats = sidecar.consumer.stats()
        results.consumer = {"accepted": stats.accepted, "refused": stats.refused, "errors": stats.errors}
        results.load.append(os.getloadavg())
    finally:
        if driver is not None:
            driver.close()
        if sidecar is not None:
            sidecar.stop()
        broker.stop()
    return results


# -- report --------------------------------------------------------------------------------


def _ms(values: FloatArray) -> str:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return "n/a"
    return f"{pct(finite, 50):8.2f} {pct(finite, 99):8.2f} {float(finite.max()):8.2f}"


def report(args: argparse.Namespace, r: Results, runtime_s: float) -> dict[str, Any]:
    """Print the human table and return the JSON summary (every figure measured in this run)."""
    p, o, c = r.propagation, r.overhead, r.cascade
    assert p is not None and o is not None and c is not None and r.phases
    print(
        f"machine: {os.cpu_count()} CPUs, {cpu_model()}, Python {platform.python_version()}, "
        f"numpy {np.__version__}, broker {args.broker}, storm producer: {args.storm_producer}"
    )

    active = p.active_ms[np.isfinite(p.active_ms)]
    period = p.watcher_period_us
    print(
        f"\npropagation: {len(p.kinds)} changes one at a time in {p.duration_s:.1f} s "
        f"({p.timeouts} never seen active; {p.overlapped} sent while the previous was not active yet, "
        f"in-flight cap {args.inflight_cap_ms:g} ms, pause 0..{args.gap_ms:g} ms)"
    )
    print(f"  watcher resolution: polling period p50 {pct(period, 50):.0f} µs, p99 {pct(period, 99):.0f} µs")
    print(f"  {'ms from t_sent to ...':<44} {'p50':>8} {'p99':>8} {'max':>8}")
    print(f"  {'ack of send_and_wait (acks=all)':<44} {_ms(p.ack_ms)}")
    print(f"  {'record reaches the consumer fold':<44} {_ms(p.fold_ms)}")
    print(f"  {'holder swapped (verify + apply + snapshot)':<44} {_ms(p.swap_ms)}")
    print(f"  {'active: seen by the watcher  <- figure':<44} {_ms(p.active_ms)}")
    fold_cost = p.swap_ms - p.fold_ms
    print(f"  {'  fold alone (swap - reach)':<44} {_ms(fold_cost)}")
    for kind in ("activate", "allocation", "rollback"):
        sel = np.asarray([k == kind for k in p.kinds]) & np.isfinite(p.active_ms)
        print(f"  {'  active, ' + kind + ' changes':<44} {_ms(p.active_ms[sel])}")

    raw_med, raw_p99 = pct(o.raw_ns, 50) / 1000.0, pct(o.raw_ns, 99) / 1000.0
    print(
        f"\noverhead: snapshot + assign + record, {o.raw_ns.size:,} requests, {args.users:,} users (Zipf 1), "
        f"{o.miss_fraction:.1%} first-seen users (bucket-cache misses), distinct users per arm {o.arms}"
    )
    print(
        f"  timer (two perf_counter_ns): median {o.timer_median_ns:.0f} ns, "
        f"p99 {pct(o.timer_ns, 99):.0f} ns (subtracted below)"
    )
    print(f"  {'µs per request':<30} {'median':>8} {'p90':>8} {'p99':>8} {'p99.9':>8}")
    print(
        f"  {'raw':<30} {raw_med:8.3f} {pct(o.raw_ns, 90) / 1000:8.3f} {raw_p99:8.3f} {pct(o.raw_ns, 99.9) / 1000:8.3f}"
    )
    print(
        f"  {'corrected  <- figure':<30} {o.corrected_us(50):8.3f} {o.corrected_us(90):8.3f} "
        f"{o.corrected_us(99):8.3f} {o.corrected_us(99.9):8.3f}"
    )
    comp = ", ".join(f"{k} {v / 1000:.3f}" for k, v in o.components_ns.items())
    print(f"  components alone (median µs, corrected): {comp}")
    print(
        f"  facade context (raw µs, median / p99): begin() {pct(o.begin_ns, 50) / 1000:.2f} / "
        f"{pct(o.begin_ns, 99) / 1000:.2f} (uuid4 + token), finish() {pct(o.finish_ns, 50) / 1000:.2f} / "
        f"{pct(o.finish_ns, 99) / 1000:.2f} (impression of 12 items to the sink), {o.begin_ns.size:,} calls"
    )
    flush_s, drained = r.sink_flush_s
    print(f"  the sink then drained those impressions in {flush_s:.2f} s{'' if drained else ' (NOT fully)'}")

    print(
        f"\ncascade: {CASCADE_CANDIDATES:,} candidates -> 1,000 -> 200 -> 50 shown (exploration 0.05, "
        f"2 of 4 sponsored slots), {c.wall_ms.size} calls over {CASCADE_SETS} sets "
        f"(generated in {c.generate_s:.1f} s); lists of {min(c.lengths)}..{max(c.lengths)} items"
    )
    print(f"  {'ms per call':<30} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}")
    print(
        f"  {'wall  <- figure':<30} {pct(c.wall_ms, 50):8.2f} {pct(c.wall_ms, 90):8.2f} "
        f"{pct(c.wall_ms, 99):8.2f} {float(c.wall_ms.max()):8.2f}"
    )
    print(
        f"  {'thread CPU':<30} {pct(c.cpu_ms, 50):8.2f} {pct(c.cpu_ms, 90):8.2f} "
        f"{pct(c.cpu_ms, 99):8.2f} {float(c.cpu_ms.max()):8.2f}"
    )
    print("  stages (wall ms, p50 / p99): " + ", ".join(f"{k} {a:.2f} / {b:.2f}" for k, (a, b) in c.stages_ms.items()))
    calm = c.wall_ms[~c.preempted]
    calm_p99 = pct(calm, 99) if calm.size else float("nan")
    print(
        f"  {c.preempted.mean():.0%} of calls were preempted (>= 1 involuntary context switch: another task took the "
        f"core), {c.blocked.mean():.0%} blocked (voluntary switch: GIL or I/O wait); "
        f"wall p99 of the {calm.size} calls never preempted: {calm_p99:.2f} ms"
    )

    quiet = np.concatenate([ph.latency_ms for ph in r.phases if ph.kind == "quiet"])
    storm = np.concatenate([ph.latency_ms for ph in r.phases if ph.kind == "storm"])
    ratio = pct(storm, 99) / pct(quiet, 99)
    rounds = paired_rounds(r.phases)
    low, high = bootstrap_ratio(rounds, np.random.default_rng(args.seed + 5))
    print(
        f"\nstorm: ranker loop on {args.storm_candidates:,} candidates (begin -> rank -> to_shown_items -> finish, "
        f"event sink on), {args.storm_requests:,} requests per phase, changes at {args.storm_rate:g}/s in storm "
        f"phases; sink emitted {r.sink.get('emitted', 0):,} impressions, dropped {r.sink.get('dropped', 0)}"
    )
    print(
        f"  {'phase':<8} {'requests':>8} {'s':>6} {'swaps/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'cpu p99':>8}  storm"
    )
    for ph in r.phases:
        s = ph.storm
        note = (
            f"{s.sent} changes v{s.first_version}..v{s.last_version}, max tick slip {s.max_late_ms:.1f} ms" if s else ""
        )
        print(
            f"  {ph.kind:<8} {ph.latency_ms.size:>8} {ph.duration_s:6.1f} {ph.swaps / ph.duration_s:8.1f} "
            f"{pct(ph.latency_ms, 50):8.3f} {pct(ph.latency_ms, 99):8.3f} {float(ph.latency_ms.max()):8.2f} "
            f"{pct(ph.cpu_ms, 99):8.3f}  {note}"
        )
    print(
        f"  pooled   quiet p50 {pct(quiet, 50):.3f} p99 {pct(quiet, 99):.3f} ms; "
        f"storm p50 {pct(storm, 50):.3f} p99 {pct(storm, 99):.3f} ms"
    )
    print(
        f"  p99 ratio storm/quiet = {ratio:.3f} (95% bootstrap {low:.3f}..{high:.3f}); "
        f"p50 ratio {pct(storm, 50) / pct(quiet, 50):.3f}"
    )
    storm_phases = [ph for ph in r.phases if ph.kind == "storm"]
    quiet_phases = [ph for ph in r.phases if ph.kind == "quiet"]
    round_ratios = [
        pct(s.latency_ms, 99) / pct(q.latency_ms, 99) for s, q in zip(storm_phases, quiet_phases, strict=True)
    ]
    above = sum(x > 1.0 for x in round_ratios)
    print(
        f"  per-round p99 ratios ({len(round_ratios)} rounds, median {pct(round_ratios, 50):.3f}, "
        f"{above} above 1): " + ", ".join(f"{x:.2f}" for x in round_ratios)
    )
    quiet_cpu = np.concatenate([ph.cpu_ms for ph in quiet_phases])
    storm_cpu = np.concatenate([ph.cpu_ms for ph in storm_phases])
    cpu_ratio = pct(storm_cpu, 99) / pct(quiet_cpu, 99)
    print(
        f"  request-thread CPU time: quiet p99 {pct(quiet_cpu, 99):.3f} ms, storm p99 {pct(storm_cpu, 99):.3f} ms, "
        f"ratio {cpu_ratio:.3f} (excludes preemption by other processes and waits for the GIL)"
    )
    quiet_pre = np.concatenate([ph.preempted for ph in quiet_phases])
    storm_pre = np.concatenate([ph.preempted for ph in storm_phases])
    calm_ratio = pct(storm[~storm_pre], 99) / pct(quiet[~quiet_pre], 99)
    print(
        f"  requests preempted (another task ran): quiet {quiet_pre.mean():.1%}, storm {storm_pre.mean():.1%}; "
        f"wall p99 of the others: quiet {pct(quiet[~quiet_pre], 99):.3f} ms, "
        f"storm {pct(storm[~storm_pre], 99):.3f} ms, ratio {calm_ratio:.3f}"
    )
    hit = np.concatenate([ph.swapped for ph in storm_phases])
    if hit.any():
        print(
            f"  within storm phases, the {hit.mean():.1%} of requests during which a swap landed: p50 "
            f"{pct(storm[hit], 50):.3f} ms, mean {float(storm[hit].mean()):.3f} ms; the others: p50 "
            f"{pct(storm[~hit], 50):.3f} ms, mean {float(storm[~hit].mean()):.3f} ms"
        )
    consumer = r.consumer
    print(
        f"  config consumer over the run: {consumer.get('accepted', 0)} accepted, {consumer.get('refused', 0)} "
        f"refused, {consumer.get('errors', 0)} errors; load average (1/5/15 min) at start "
        f"{'/'.join(f'{x:.2f}' for x in r.load[0])}, at end {'/'.join(f'{x:.2f}' for x in r.load[-1])}"
    )

    prop_p50, prop_p99 = pct(active, 50), pct(active, 99)
    over_med, over_p99 = o.corrected_us(50), o.corrected_us(99)
    casc_p99 = pct(c.wall_ms, 99)
    met = {
        "propagation_p99": p.timeouts == 0 and prop_p99 <= TARGET_PROPAGATION_P99_MS,
        "overhead_median": over_med <= TARGET_OVERHEAD_MEDIAN_US,
        "cascade_p99": casc_p99 <= TARGET_CASCADE_P99_MS,
        "storm_p99_ratio": ratio <= TARGET_STORM_RATIO,
    }
    print(
        f"\ntargets: propagation p99 {prop_p99:.1f} ms <= {TARGET_PROPAGATION_P99_MS:g} "
        f"{'met' if met['propagation_p99'] else 'MISSED'}; overhead median {over_med:.2f} µs <= "
        f"{TARGET_OVERHEAD_MEDIAN_US:g} {'met' if met['overhead_median'] else 'MISSED'}; cascade p99 "
        f"{casc_p99:.1f} ms <= {TARGET_CASCADE_P99_MS:g} {'met' if met['cascade_p99'] else 'MISSED'}; "
        f"storm ratio {ratio:.3f} <= {TARGET_STORM_RATIO} {'met' if met['storm_p99_ratio'] else 'MISSED'}"
    )
    print(f"runtime {runtime_s:.0f} s")
    return {
        "propagation_p50_ms": round(prop_p50, 3),
        "propagation_p99_ms": round(prop_p99, 3),
        "overhead_median_us": round(over_med, 3),
        "overhead_p99_us": round(over_p99, 3),
        "cascade_p99_ms": round(casc_p99, 3),
        "storm_p99_ratio": round(ratio, 4),
        "targets_met": met,
        "context": {
            "changes": len(p.kinds),
            "requests": o.raw_ns.size,
            "storm_requests": {"quiet": int(quiet.size), "storm": int(storm.size)},
            "broker": args.broker,
            "storm_producer": args.storm_producer,
            "propagation_max_ms": round(float(active.max()), 3) if active.size else None,
            "propagation_timeouts": p.timeouts,
            "watcher_period_p50_us": round(pct(period, 50), 1),
            "overhead_basis": "corrected: median timer cost (two perf_counter_ns) subtracted",
            "overhead_median_us_raw": round(raw_med, 3),
            "overhead_p99_us_raw": round(raw_p99, 3),
            "timer_median_ns": round(o.timer_median_ns, 1),
            "cascade_p50_ms": round(pct(c.wall_ms, 50), 3),
            "cascade_cpu_p99_ms": round(pct(c.cpu_ms, 99), 3),
            "storm_quiet_p99_ms": round(pct(quiet, 99), 3),
            "storm_storm_p99_ms": round(pct(storm, 99), 3),
            "storm_ratio_ci95": [round(low, 4), round(high, 4)],
            "storm_round_ratios": [round(x, 4) for x in round_ratios],
            "storm_swaps_per_s": round(
                sum(ph.swaps for ph in storm_phases) / sum(ph.duration_s for ph in storm_phases), 2
            ),
            "quiet_swaps": sum(ph.swaps for ph in quiet_phases),
            "storm_cpu_p99_ratio": round(cpu_ratio, 4),
            "storm_unpreempted_p99_ratio": round(calm_ratio, 4),
            "storm_swap_hit_share": round(float(hit.mean()), 4),
            "storm_swap_hit_mean_excess_ms": round(float(storm[hit].mean() - storm[~hit].mean()), 3)
            if hit.any() and (~hit).any()
            else None,
            "storm_preempted_share": [round(float(quiet_pre.mean()), 4), round(float(storm_pre.mean()), 4)],
            "cascade_unpreempted_p99_ms": round(calm_p99, 3),
            "cascade_preempted_share": round(float(c.preempted.mean()), 4),
            "load_avg_start_end": [round(r.load[0][0], 2), round(r.load[-1][0], 2)],
            "cpus": os.cpu_count(),
            "runtime_s": round(runtime_s, 1),
        },
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command line of the benchmark."""
    parser = argparse.ArgumentParser(prog="bench/sidecar.py", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (fewer changes, requests and rounds)")
    parser.add_argument("--broker", choices=("tansu", "kafka"), default="tansu")
    parser.add_argument("--changes", type=int, default=None, help="config changes timed (default 1,000)")
    parser.add_argument(
        "--inflight-cap-ms",
        type=float,
        default=30.0,
        help="send the next change after this even if the previous is not active yet",
    )
    parser.add_argument("--gap-ms", type=float, default=10.0, help="random pause 0..this between changes")
    parser.add_argument("--requests", type=int, default=None, help="overhead requests (default 200,000)")
    parser.add_argument("--users", type=int, default=50_000, help="user population (Zipf 1)")
    parser.add_argument(
        "--overhead-span-s",
        type=float,
        default=20.0,
        help="simulated time the overhead requests span (latency-window slices roll over)",
    )
    parser.add_argument("--facade-calls", type=int, default=20_000, help="begin()/finish() calls timed for context")
    parser.add_argument("--cascade-calls", type=int, default=None, help="cascade calls (default 300)")
    parser.add_argument("--storm-candidates", type=int, default=20_000)
    parser.add_argument("--storm-requests", type=int, default=None, help="timed requests per phase (default 600)")
    parser.add_argument("--storm-rounds", type=int, default=None, help="quiet/storm rounds, ABBA order (default 20)")
    parser.add_argument("--storm-lead-s", type=float, default=0.3, help="untimed lead-in of every phase")
    parser.add_argument("--storm-rate", type=float, default=10.0, help="config changes per second in a storm")
    parser.add_argument(
        "--storm-producer",
        choices=("process", "thread"),
        default="process",
        help="publish the storm from a child process (default) or a thread of the ranker process",
    )
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--keep", action="store_true", help="keep the work dir (broker log) after the run")
    args = parser.parse_args(argv)
    defaults = {
        "changes": (200, 1_000),
        "requests": (50_000, 200_000),
        "cascade_calls": (60, 300),
        "storm_requests": (300, 600),
        "storm_rounds": (4, 20),
    }
    for name, (quick, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; the last stdout line is the JSON summary."""
    args = parse_args(argv)
    work_dir = Path(tempfile.mkdtemp(prefix="rectune-bench-sidecar-"))
    begin = time.perf_counter()
    try:
        results = run(args, work_dir)
        summary = report(args, results, time.perf_counter() - begin)
    except BaseException:
        print(f"sidecar benchmark failed; logs kept in {work_dir}", file=sys.stderr)
        raise
    if args.keep:
        print(f"logs: {work_dir}")
    else:
        shutil.rmtree(work_dir, ignore_errors=True)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
