"""Pipeline throughput benchmark (issue 2): the stream worker against its baseline and ceiling.

One run, one broker, messages produced before any timing; the variants run
one after another, each in its own process(es), and are timed from outside
through their consumer group's committed offsets (`bench/_pipeline_measure.py`):

- ``batched``: the real ``rectune worker`` (Faust engine) over envelopes of
  ~100 item events (the realistic mix: 12-item impressions, ~5% clicks, ~0.5%
  conversions), as ``--workers N`` processes in one app id / consumer group
  (default min(CPUs, partitions): how a Faust app is scaled on this machine),
  and again as one process (``batched_1proc``);
- ``ceiling``: bare aiokafka consumers + orjson + numpy over the same
  envelopes, same aggregation, no Faust (``bench/_pipeline_variants.py``),
  N processes in one group (like for like) and one (``ceiling_1proc``);
- ``naive``: a plain Faust agent doing one Table update per event, over
  messages holding one item-level event each (the issue's baseline), one process;
- ``single``: the real worker over those same one-event messages, one process;
- ``direct`` (informational): the worker with ``RECTUNE_ENGINE=direct`` (its
  `StreamProcessor` on a bare aiokafka loop), N processes (``--no-direct`` skips it).

Throughput is counted in item-level events (`schemas.events.item_events`).
A variant's rate is measured between the first poll (every 0.1 s) that shows
committed progress by any member of its group and the poll at which the
group's committed offsets reach the ends (the worker and the variants commit
every 0.2 s): process start-up and a group formed before its first commit are
not in it, a rebalance after that is; start-up and the rate from spawn to the
end are reported beside it.  Peak RSS of a group is the sum of its processes'
peaks.  Each process's assigned partitions are read from its log, so the run
shows (and the JSON flags) that every process of a group got work.

The worker reads the fixed topic ``rectune.events``, so the run is ordered on
one broker: envelopes are produced, the ``ceiling``, ``batched`` and ``direct``
groups consume them (each group its own id and checkpoint topic); the
one-event messages are then appended to the same topic before ``naive`` (its
group's offsets set to where they start) and ``single`` (the N-process worker
group, resuming from its checkpoints) run.

The last stdout line is one JSON object: events, the rates, peak RSS of the
batched group, the broker, the ratios and the target booleans (on the
N-process figures).

    .venv/bin/python bench/pipeline.py            # 2,000,000 events, 2 workers here (make bench)
    .venv/bin/python bench/pipeline.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec
import numpy as np
import numpy.typing as npt
import psutil
from _machine import cpu_model
from _pipeline_measure import MB, Placement, Result, assigned_partitions, tree_usage, watch
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from rectune.admin import catalogue_for, ensure_topics
from rectune.embedded import ManagedProcess, spawn, start_tansu
from rectune.processes import settings_env, start_worker
from schemas.encode import encode_batch, encode_event
from schemas.events import Event, Impression, item_events
from schemas.topics import EVENTS
from simulator.synthetic import TrafficGenerator, TrafficSpec, pack

REPO: Final = Path(__file__).resolve().parent.parent
VARIANTS_SCRIPT: Final = Path(__file__).resolve().parent / "_pipeline_variants.py"
PARTITIONS: Final = 4
ENVELOPE_ITEMS: Final = 100
START_MS: Final = 1_767_225_600_000  # 2026-01-01T00:00:00Z
#: Requests per second of *event time*: 2M item events span ~5 min, so ~5 windows close per partition.
EVENT_TIME_RATE: Final = 500.0
#: Requests generated for real; larger sets repeat this pool with new ids and later times.
POOL_REQUESTS: Final = 20_000
#: Group session timeout of every Faust variant (the worker's default); tansu delays
#: a new group's first join by about half of it, which start-up then shows.
SESSION_TIMEOUT_S: Final = 10.0

# Targets of issue 2 (ratios within one run).
TARGET_VS_NAIVE: Final = 40.0
TARGET_VS_CEILING: Final = 0.5
TARGET_RATE: Final = 250_000.0
TARGET_RSS_MB: Final = 600.0
TARGET_RSS_EVENTS: Final = 2_000_000


# -- data -----------------------------------------------------------------------


@dataclass(slots=True)
class MessageSet:
    """Encoded messages and the item-level events each one holds, in send order."""

    payloads: list[bytes] = field(default_factory=list)
    items: list[int] = field(default_factory=list)

    @property
    def item_events(self) -> int:
        """Item-level events in the whole set."""
        return sum(self.items)

    @property
    def nbytes(self) -> int:
        """Bytes of all message values."""
        return sum(map(len, self.payloads))


def _shifted(events: list[Event], copy: int, shift_ms: int) -> Iterator[Event]:
    """The pool's events with unique ids and event times `copy` spans later."""
    if copy == 0:
        yield from events
        return
    tag = f"~{copy}"
    replace = msgspec.structs.replace
    for e in events:
        yield replace(
            e, event_id=e.event_id + tag, request_id=e.request_id + tag, event_time_ms=e.event_time_ms + shift_ms
        )


def batched_set(target_items: int, seed: int) -> tuple[MessageSet, int]:
    """Envelopes of ~100 item events, at least `target_items` in all; returns them and the last event time.

    A pool of `POOL_REQUESTS` generated requests is repeated with new ids and
    later event times (generation costs ~6 µs per item event, the rewrite
    ~1 µs per event), so every message is a valid envelope and windows close.
    """
    gen = TrafficGenerator(TrafficSpec(), seed)
    pool = list(gen.stream(START_MS, POOL_REQUESTS, EVENT_TIME_RATE))
    span_ms = int(POOL_REQUESTS * 1000 / EVENT_TIME_RATE)
    out = MessageSet()
    total = 0
    copy = 0
    last_ms = START_MS
    while total < target_items:
        events = list(_shifted(pool, copy, copy * span_ms))
        for envelope in pack(events, ENVELOPE_ITEMS):
            n = sum(item_events(e) for e in envelope)
            out.payloads.append(encode_batch(f"bench-{seed}-{copy}", len(out.payloads), envelope))
            out.items.append(n)
            last_ms = max(last_ms, max(e.event_time_ms for e in envelope))
            total += n
            if total >= target_items:
                break
        copy += 1
    return out, last_ms


def single_set(target_items: int, seed: int, start_ms: int, shape: str) -> MessageSet:
    """Bare one-event messages, at least `target_items` item-level events in all.

    `shape="item"` (default): one item-level event per message: each 12-item
    impression becomes 12 one-item impressions (same request, user, arm, time
    and positions), clicks and conversions stay as they are.  `shape="wire"`:
    the bare events as a sidecar would send them unbatched (an impression
    message then holds 12 item events).
    """
    gen = TrafficGenerator(TrafficSpec(), seed)
    out = MessageSet()
    total = 0
    request = 0
    replace = msgspec.structs.replace
    while total < target_items:
        for event in gen.request(start_ms + int(request * 1000 / EVENT_TIME_RATE)):
            if shape == "item" and isinstance(event, Impression):
                parts: list[Event] = [
                    replace(event, event_id=f"{event.event_id}.{item.position}", items=(item,)) for item in event.items
                ]
            else:
                parts = [event]
            for part in parts:
                out.payloads.append(encode_event(part))
                out.items.append(item_events(part))
                total += out.items[-1]
        request += 1
    return out


async def produce(bootstrap: str, topic: str, data: MessageSet) -> Placement:
    """Send every message (message i to partition i mod 4) and record the offsets they got."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=1 * MB, max_request_size=4 * MB, acks=1
    )
    await producer.start()
    try:
        futures = [
            await producer.send(topic, payload, partition=i % PARTITIONS) for i, payload in enumerate(data.payloads)
        ]
        metas = [await f for f in futures]
    finally:
        await producer.stop()
    per_offsets: dict[int, list[int]] = {p: [] for p in range(PARTITIONS)}
    per_items: dict[int, list[int]] = {p: [] for p in range(PARTITIONS)}
    for meta, n in zip(metas, data.items, strict=True):
        per_offsets[meta.partition].append(meta.offset)
        per_items[meta.partition].append(n)
    offsets: dict[int, npt.NDArray[np.int64]] = {}
    cum: dict[int, npt.NDArray[np.int64]] = {}
    for p in range(PARTITIONS):
        order = np.argsort(per_offsets[p], kind="stable")
        offsets[p] = np.asarray(per_offsets[p], dtype=np.int64)[order]
        items = np.asarray(per_items[p], dtype=np.int64)[order]
        cum[p] = np.concatenate([[0], np.cumsum(items)]).astype(np.int64)
    return Placement(
        starts={p: int(o[0]) if len(o) else 0 for p, o in offsets.items()},
        ends={p: int(o[-1]) + 1 if len(o) else 0 for p, o in offsets.items()},
        offsets=offsets,
        cum_items=cum,
    )


# -- running ------------------------------------------------------------------


async def precommit(bootstrap: str, group: str, offsets: dict[int, int]) -> None:
    """Commit `offsets` for a group that has never run, so it starts where a message set begins."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = {TopicPartition(EVENTS.name, p): off for p, off in offsets.items()}
        consumer.assign(list(tps))
        await consumer.commit(tps)
    finally:
        await consumer.stop()


def stop_quietly(proc: ManagedProcess | None) -> None:
    """Stop a process we started (SIGTERM, then SIGKILL after 15 s)."""
    if proc is not None:
        proc.stop(timeout_s=15.0)


def stop_group(procs: Sequence[ManagedProcess]) -> None:
    """Stop the processes of one group together (SIGTERM to all first, so they leave at once)."""
    for proc in procs:
        if proc.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
    for proc in procs:
        stop_quietly(proc)


# -- the run --------------------------------------------------------------------


@dataclass(slots=True)
class Broker:
    """The broker of the run, whatever its kind."""

    kind: str
    bootstrap: str
    pid: int
    stop: Any


def start_broker(kind: str, work_dir: Path) -> Broker:
    """Start the embedded tansu broker (default) or a single-node Apache Kafka."""
    if kind == "tansu":
        tansu = start_tansu(work_dir / "tansu")
        return Broker("tansu", tansu.bootstrap, tansu.pid, tansu.stop)
    from rectune.apache_kafka import ApacheKafkaBroker, fetch_kafka_jars

    kafka = ApacheKafkaBroker(work_dir / "kafka", fetch_kafka_jars(REPO / ".cache" / "kafka"))
    kafka.start()
    return Broker("kafka", kafka.bootstrap, kafka.pid or 0, kafka.stop)


def worker_env(bootstrap: str, app_id: str, checkpoint_s: float, engine: str = "faust") -> dict[str, str]:
    """RECTUNE_* settings of the benchmarked worker (defaults otherwise: 60 s windows, 64 buckets).

    Log level info: the worker then logs each partition it is assigned (only on
    rebalances, nothing per message), which shows how a group split the work.
    """
    return settings_env(
        engine=engine,
        bootstrap=bootstrap,
        events_partitions=PARTITIONS,
        app_id=app_id,
        log_level="info",
        checkpoint_interval_s=checkpoint_s,
        session_timeout_s=SESSION_TIMEOUT_S,
    )


@dataclass(slots=True)
class Group:
    """How to start the processes of one variant: a consumer group and one launcher per process."""

    name: str
    group: str
    launch: Callable[[int], ManagedProcess]
    processes: int


async def measure(
    group: Group, bootstrap: str, placement: Placement, timeout_s: float, stagger_s: float = 0.0
) -> Result:
    """Start the processes of `group` (at once, or `stagger_s` apart), time them together, stop them together.

    The clock (see `_pipeline_measure.watch`) starts at the group's first
    committed progress, whoever made it, so a member joining after that is a
    rebalance inside the timed window.  Each process's assigned partitions are
    read back from its log.
    """
    procs: list[ManagedProcess] = []

    async def launch_all() -> None:
        for i in range(group.processes):
            if i and stagger_s > 0:
                await asyncio.sleep(stagger_s)
            procs.append(group.launch(i))

    spawned = time.monotonic()
    launcher = asyncio.create_task(launch_all())
    try:
        if stagger_s <= 0:
            await launcher
        result = await watch(
            group.name, bootstrap, group.group, EVENTS.name, placement, procs, spawned, timeout_s, group.processes
        )
        if not launcher.done():
            late = f"finished before process {len(procs) + 1} of {group.processes} was started (--stagger-s)"
            result.note = f"{result.note}; {late}" if result.note else late
        else:
            await launcher
    finally:
        launcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await launcher
        stop_group(procs)
    never_started: tuple[tuple[int, ...], ...] = ((),) * (group.processes - len(procs))
    result.assigned = tuple(assigned_partitions(p.log_path) for p in procs) + never_started
    # Progress as it happens, so a later variant that fails or hangs does not lose this one.
    print(
        f"measured {result.name}: {result.processes} process(es), {result.events_per_s:,.0f} item events/s over "
        f"{result.measured_s:.1f} s (start-up {result.startup_s:.1f} s), partitions {list(result.assigned)}, "
        f"{result.rebalancing_s:.1f} s rebalancing in the timed window {result.note}",
        flush=True,
    )
    return result


def ceiling_group(name: str, bootstrap: str, work_dir: Path, processes: int) -> Group:
    """`processes` bare aiokafka consumers (`_pipeline_variants.py ceiling`) in one fresh group."""
    group = f"bench-{name}-{uuid.uuid4().hex[:8]}"
    argv = [sys.executable, str(VARIANTS_SCRIPT), "ceiling", "--bootstrap", bootstrap]
    argv += ["--topic", EVENTS.name, "--group", group]

    def launch(i: int) -> ManagedProcess:
        log = work_dir / f"{name}-{i}.log"
        return ManagedProcess(spawn(argv, what=name, log_path=log, cwd=work_dir), log)

    return Group(name, group, launch, processes)


def worker_group(name: str, env: dict[str, str], app_id: str, work_dir: Path, processes: int) -> Group:
    """`processes` real `rectune worker` processes with `env` (one app id = one group), each in its own dir."""

    def launch(i: int) -> ManagedProcess:
        cwd = work_dir / f"{name}-{i}"  # Faust keeps a data dir per app id under its cwd
        cwd.mkdir(parents=True, exist_ok=True)
        return start_worker(work_dir / f"worker-{name}-{i}.log", env, cwd=cwd)

    return Group(name, app_id, launch, processes)


def ceiling_consumed(result: Result, work_dir: Path) -> int:
    """Item events the ceiling processes of `result` consumed in all (their summaries' sum)."""
    total = 0
    for i in range(result.processes):
        lines = (work_dir / f"{result.name}-{i}.log").read_text(encoding="utf-8").strip().splitlines()
        total += int(json.loads(lines[-1])["item_events"])
    return total


async def run(args: argparse.Namespace, work_dir: Path) -> tuple[dict[str, Result], dict[str, Any]]:
    """Produce, then run every variant one after another; returns results and facts."""
    facts: dict[str, Any] = {"load_before": os.getloadavg()}
    print(f"load average before: {facts['load_before']}", flush=True)
    t0 = time.monotonic()
    batched_data, last_ms = batched_set(args.events, args.seed)
    single_data = single_set(args.single_events, args.seed + 1, last_ms + 60_000, args.single_shape)
    facts["generate_s"] = time.monotonic() - t0
    facts["batched_bytes"] = batched_data.nbytes
    facts["single_bytes"] = single_data.nbytes

    results: dict[str, Result] = {}
    broker = start_broker(args.broker, work_dir)
    broker_ps = psutil.Process(broker.pid)
    facts["broker_rss_mb"] = 0.0
    n = args.workers
    bootstrap = broker.bootstrap
    timeout = args.variant_timeout_s
    try:
        await ensure_topics(bootstrap, catalogue_for(PARTITIONS))
        t0 = time.monotonic()
        batched = await produce(bootstrap, EVENTS.name, batched_data)
        facts["produce_batched_s"] = time.monotonic() - t0
        del batched_data

        # ceiling: bare aiokafka + orjson + numpy over the envelopes, N processes in one group, then one.
        stagger = args.stagger_s
        ceiling = ceiling_group("ceiling", bootstrap, work_dir, n)
        results["ceiling"] = await measure(ceiling, bootstrap, batched, timeout, stagger)
        facts["ceiling_consumed"] = ceiling_consumed(results["ceiling"], work_dir)
        if n > 1:
            one = ceiling_group("ceiling_1proc", bootstrap, work_dir, 1)
            results["ceiling_1proc"] = await measure(one, bootstrap, batched, timeout)

        # batched: the real worker over the same envelopes, N processes in one group, then one.
        app_id = f"bench-worker-{uuid.uuid4().hex[:8]}"
        env = worker_env(bootstrap, app_id, args.checkpoint_interval_s)
        batched_group = worker_group("batched", env, app_id, work_dir, n)
        results["batched"] = await measure(batched_group, bootstrap, batched, timeout, stagger)
        facts["broker_rss_mb"] = max(facts["broker_rss_mb"], tree_usage(broker_ps)[0] / MB)
        if n > 1:
            one_id = f"bench-worker1-{uuid.uuid4().hex[:8]}"
            one_env = worker_env(bootstrap, one_id, args.checkpoint_interval_s)
            one = worker_group("batched_1proc", one_env, one_id, work_dir, 1)
            results["batched_1proc"] = await measure(one, bootstrap, batched, timeout)

        if args.direct:
            # direct: the real `rectune worker` with RECTUNE_ENGINE=direct (the same StreamProcessor
            # on a plain aiokafka consumer instead of a Faust agent), same envelopes, N processes.
            group = f"bench-direct-{uuid.uuid4().hex[:8]}"
            direct_env = worker_env(bootstrap, group, args.checkpoint_interval_s, engine="direct")
            direct = worker_group("direct", direct_env, group, work_dir, n)
            results["direct"] = await measure(direct, bootstrap, batched, timeout, stagger)

        # The one-event messages go after the envelopes, once the workers are caught up and stopped.
        t0 = time.monotonic()
        single = await produce(bootstrap, EVENTS.name, single_data)
        facts["produce_single_s"] = time.monotonic() - t0
        del single_data
        if single.starts != batched.ends:
            msg = f"one-event messages landed at {single.starts}, expected right after the envelopes {batched.ends}"
            raise RuntimeError(msg)

        # naive: plain Faust, one table update per event, starting at the one-event messages (one process).
        naive_id = f"bench-naive-{uuid.uuid4().hex[:8]}"
        await precommit(bootstrap, naive_id, single.starts)
        argv = [sys.executable, str(VARIANTS_SCRIPT), "naive", "--bootstrap", bootstrap, "--topic", EVENTS.name]
        argv += ["--app-id", naive_id, "--partitions", str(PARTITIONS)]
        argv += ["--commit-interval-s", str(args.checkpoint_interval_s), "--session-timeout-s", str(SESSION_TIMEOUT_S)]

        def launch_naive(i: int) -> ManagedProcess:
            log = work_dir / f"naive-{i}.log"
            return ManagedProcess(spawn(argv, what="naive", log_path=log, cwd=work_dir / "naive"), log)

        (work_dir / "naive").mkdir()
        results["naive"] = await measure(Group("naive", naive_id, launch_naive, 1), bootstrap, single, timeout)

        # single: the batched worker group resumes from its checkpoints at the one-event messages (one process).
        single_group = worker_group("single", env, app_id, work_dir, 1)
        results["single"] = await measure(single_group, bootstrap, single, timeout)
        facts["broker_rss_mb"] = max(facts["broker_rss_mb"], tree_usage(broker_ps)[0] / MB)
        facts["load_after"] = os.getloadavg()
        print(f"load average after: {facts['load_after']}", flush=True)
    finally:
        broker.stop()
    return results, facts


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def report(args: argparse.Namespace, results: dict[str, Result], facts: dict[str, Any]) -> dict[str, Any]:
    """Print the human table and return the JSON summary (every figure measured in this run)."""
    print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}, Python {platform.python_version()}, broker {args.broker}")
    print(
        f"data: {facts['batched_bytes'] / MB:.0f} MB of envelopes, {facts['single_bytes'] / MB:.1f} MB of one-event "
        f"messages (shape {args.single_shape!r}); generated in {facts['generate_s']:.1f} s, envelopes produced in "
        f"{facts['produce_batched_s']:.1f} s; broker RSS up to {facts['broker_rss_mb']:.0f} MB"
    )
    load_before, load_after = facts["load_before"], facts.get("load_after", (float("nan"),) * 3)
    busy = (
        " (other processes were busy: rates are lower and noisier)" if max(load_before[0], load_after[0]) > 0.5 else ""
    )
    print(f"load average (1 min) before/after: {load_before[0]:.2f}/{load_after[0]:.2f}{busy}")
    print("rates are per second, so the envelope set and the smaller one-event set may differ in size;")
    print("CPU s is the variant's processes over the timed interval (the broker's is not included);")
    print("peak RSS is the sum of each process's peak (the largest single process in brackets);")
    print("w/ start-up is events/s from spawn to the end: start-up, group join and every rebalance included")
    header = (
        f"{'variant':<14} {'procs':>5} {'messages':>9} {'item events':>12} {'events/s':>11} {'msgs/s':>9} "
        f"{'events/CPU-s':>12} {'CPU s':>6} {'timed s':>8} {'start-up s':>10} {'w/ start-up':>11} "
        f"{'peak RSS MB':>15}  note"
    )
    print(header)
    print("-" * len(header))
    order = ("batched", "batched_1proc", "ceiling", "ceiling_1proc", "direct", "single", "naive")
    for name in order:
        r = results.get(name)
        if r is None:
            continue
        rss = f"{r.peak_rss_mb:.0f} ({r.peak_rss_max_mb:.0f})"
        print(
            f"{r.name:<14} {r.processes:>5} {r.messages:>9} {r.item_events:>12} {r.events_per_s:>11,.0f} "
            f"{r.messages_per_s:>9,.0f} {r.events_per_cpu_s:>12,.0f} {r.cpu_s:>6.1f} {r.measured_s:>8.2f} "
            f"{r.startup_s:>10.2f} {r.with_startup_events_per_s:>11,.0f} {rss:>15}  {r.note}"
        )
    print("group membership and work split (partitions each process logged as assigned; CPU s in the timed window):")
    for name in order:
        r = results.get(name)
        if r is None or len(r.assigned) < 2:
            continue
        split = "; ".join(
            f"p{i}: {list(parts)} {cpu:.1f} CPU-s"
            for i, (parts, cpu) in enumerate(zip(r.assigned, r.cpu_s_per_process, strict=False))
        )
        flag = "" if r.all_assigned else "  ** NOT every process got a partition **"
        print(
            f"  {r.name}: {split}; {r.members_at_first} member(s) at first progress, up to {r.members_max}; "
            f"group complete {r.group_complete_s:.1f} s after spawn; {r.rebalancing_s:.1f} s of the "
            f"{r.measured_s:.1f} s timed window rebalancing{flag}"
        )
    b, c = results["batched"], results["ceiling"]
    b1, c1 = results.get("batched_1proc", b), results.get("ceiling_1proc", c)
    print(
        f"ceiling processes consumed {facts['ceiling_consumed']:,} item events for {c.item_events:,} produced "
        f"({facts['ceiling_consumed'] - c.item_events:,} re-read after a rebalance)"
    )
    vs_naive = _ratio(b.events_per_s, results["naive"].events_per_s)
    vs_ceiling = _ratio(b.events_per_s, c.events_per_s)
    vs_ceiling_1 = _ratio(b1.events_per_s, c1.events_per_s)
    print(
        f"{b.processes} worker process(es): batched / naive = {vs_naive:.1f}x (target >= {TARGET_VS_NAIVE:.0f}x); "
        f"batched / ceiling = {vs_ceiling:.2f} (target >= {TARGET_VS_CEILING}; 1 process each: {vs_ceiling_1:.2f}); "
        f"batched >= {TARGET_RATE:,.0f}/s on a 2-core machine; "
        f"peak RSS <= {TARGET_RSS_MB:.0f} MB for {TARGET_RSS_EVENTS:,} events (this run: {b.item_events:,})"
    )
    spread = {name: r.all_assigned for name, r in results.items() if len(r.assigned) > 1}
    return {
        "events": b.item_events,
        "workers": args.workers,
        "batched_events_per_s": round(b.events_per_s),
        "batched_1proc_events_per_s": round(b1.events_per_s),
        "batched_with_startup_events_per_s": round(b.with_startup_events_per_s),
        "batched_1proc_with_startup_events_per_s": round(b1.with_startup_events_per_s),
        "batched_direct_events_per_s": round(results["direct"].events_per_s) if "direct" in results else None,
        "single_events_per_s": round(results["single"].events_per_s),
        "naive_events_per_s": round(results["naive"].events_per_s),
        "ceiling_events_per_s": round(c.events_per_s),
        "ceiling_1proc_events_per_s": round(c1.events_per_s),
        "peak_rss_mb": round(b.peak_rss_mb, 1),
        "peak_rss_per_process_max_mb": round(b.peak_rss_max_mb, 1),
        "batched_1proc_peak_rss_mb": round(b1.peak_rss_mb, 1),
        "broker": args.broker,
        "batched_vs_naive": round(vs_naive, 2),
        "batched_vs_ceiling": round(vs_ceiling, 3),
        "batched_1proc_vs_ceiling_1proc": round(vs_ceiling_1, 3),
        "batched_rebalancing_s": round(b.rebalancing_s, 2),
        "every_process_assigned": all(spread.values()),
        "ceiling_consumed_item_events": facts["ceiling_consumed"],
        "load_1min_before": round(load_before[0], 2),
        "load_1min_after": round(load_after[0], 2),
        "target_batched_vs_naive_met": vs_naive >= TARGET_VS_NAIVE,
        "target_batched_vs_ceiling_met": vs_ceiling >= TARGET_VS_CEILING,
        "target_batched_rate_met": b.events_per_s >= TARGET_RATE,
        "target_peak_rss_met": b.peak_rss_mb <= TARGET_RSS_MB,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command line of the benchmark."""
    parser = argparse.ArgumentParser(prog="bench/pipeline.py", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=None, help="item events in envelopes (default 2,000,000)")
    parser.add_argument(
        "--single-events", type=int, default=None, help="item events in one-event messages (default 50,000)"
    )
    parser.add_argument(
        "--single-shape",
        choices=("item", "wire"),
        default="item",
        help="item: one item-level event per message (default); wire: bare events as the sidecar "
        "would send them unbatched (12-item impressions)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 300k envelope events, 20k one-event events")
    parser.add_argument("--broker", choices=("tansu", "kafka"), default="tansu")
    parser.add_argument(
        "--checkpoint-interval-s",
        type=float,
        default=0.2,
        help="worker checkpoint (= commit) interval; the timing resolution (default 0.2)",
    )
    parser.add_argument("--variant-timeout-s", type=float, default=240.0, help="give up on a variant after this")
    parser.add_argument(
        "--no-direct",
        dest="direct",
        action="store_false",
        help="skip the informational 'direct' variant (StreamProcessor on a bare aiokafka loop)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(os.cpu_count() or 1, PARTITIONS),
        help="processes of the batched, ceiling and direct groups (default: min(CPUs, partitions)); "
        "batched and ceiling are also measured with one process",
    )
    parser.add_argument(
        "--stagger-s",
        type=float,
        default=0.0,
        help="start the processes of a multi-process group this many seconds apart (default 0: all at once), "
        "so later members join mid-stream and their rebalance falls inside the timed window",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs) after the run")
    args = parser.parse_args(argv)
    if args.events is None:
        args.events = 300_000 if args.quick else TARGET_RSS_EVENTS
    if args.single_events is None:
        per_message = 8 if args.single_shape == "wire" else 1  # ~8 item events per bare wire event
        args.single_events = (20_000 if args.quick else 50_000) * per_message
    if not 1 <= args.workers <= PARTITIONS:
        parser.error(f"--workers must be between 1 and {PARTITIONS} (the events partitions), got {args.workers}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; the last stdout line is the JSON summary."""
    args = parse_args(argv)
    work_dir = Path(tempfile.mkdtemp(prefix="rectune-bench-pipeline-"))
    try:
        results, facts = asyncio.run(run(args, work_dir))
        summary = report(args, results, facts)
    except BaseException:
        print(f"pipeline benchmark failed; logs kept in {work_dir}", file=sys.stderr)
        raise
    if args.keep:
        print(f"logs: {work_dir}")
    else:
        shutil.rmtree(work_dir, ignore_errors=True)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
