"""Pipeline throughput benchmark (issue 2): the stream worker against its baseline and ceiling.

One run, one broker, messages produced before any timing; every variant runs in
its own process, one at a time (the target machine has two cores), and is
timed from outside through its consumer group's committed offsets:

- ``batched``: the real ``rectune worker`` over envelopes of ~100 item events
  (the realistic mix: 12-item impressions, ~5% clicks, ~0.5% conversions);
- ``ceiling``: a bare aiokafka consumer + orjson + numpy over the same
  envelopes, same aggregation, no Faust (``bench/_pipeline_variants.py``);
- ``naive``: a plain Faust agent doing one Table update per event, over
  messages holding one item-level event each (the issue's baseline);
- ``single``: the real worker over those same one-event messages;
- ``direct`` (informational, human table only): the worker's own
  `StreamProcessor` driven by a bare aiokafka loop instead of a Faust agent,
  over the envelopes (``--no-direct`` skips it).

Throughput is counted in item-level events (`schemas.events.item_events`).
A variant's rate is measured between the first and the last observation of
its committed offsets (polled every 0.1 s; the worker and the variants commit
every 0.2 s), so process start-up, group join and checkpoint restore are not
in it; start-up (spawn to first committed progress) is reported beside it.

The worker reads the fixed topic ``rectune.events`` and keeps its checkpoints
in the shared ``rectune.streams.state``, so the run is ordered on one broker:
envelopes are produced, ``ceiling`` and ``batched`` consume them; the worker
is stopped once caught up (then ``direct`` runs, with its own group and state
topic); the one-event messages are then appended to the same topic before
``naive`` (its group's offsets set to where they start) and ``single`` (the
same worker group, resuming from its checkpoint) run.

The last stdout line is one JSON object: events, the four rates, peak RSS of
the batched worker, the broker, two ratios and the target booleans.

    .venv/bin/python bench/pipeline.py            # 2,000,000 events (make bench)
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
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import msgspec
import numpy as np
import numpy.typing as npt
import psutil
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
POLL_S: Final = 0.1
#: A rate timed over less than this is flagged (a few commit intervals dominate it).
MIN_TRUSTED_S: Final = 5.0
#: Group session timeout of every Faust variant (the worker's default); tansu delays
#: a new group's first join by about half of it, which start-up then shows.
SESSION_TIMEOUT_S: Final = 10.0
MB: Final = 1024 * 1024

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


@dataclass(slots=True)
class Placement:
    """Where a message set landed: per partition its offsets and cumulative item events."""

    starts: dict[int, int]
    ends: dict[int, int]
    offsets: dict[int, npt.NDArray[np.int64]]
    cum_items: dict[int, npt.NDArray[np.int64]]

    def items_before(self, partition: int, committed: int) -> int:
        """Item events of this set in `partition` at offsets below `committed`."""
        idx = int(np.searchsorted(self.offsets[partition], committed, side="left"))
        return int(self.cum_items[partition][idx])

    def items_done(self, committed: dict[int, int]) -> int:
        """Item events of this set below the committed offsets (all partitions)."""
        return sum(self.items_before(p, committed.get(p, self.starts[p])) for p in self.starts)

    def messages(self) -> int:
        """Messages of this set."""
        return sum(len(o) for o in self.offsets.values())


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


# -- measuring ------------------------------------------------------------------


class Proc(Protocol):
    """What the watcher needs of a variant process."""

    @property
    def pid(self) -> int: ...

    def alive(self) -> bool: ...

    def log_tail(self, max_bytes: int = 4000) -> str: ...


@dataclass(slots=True)
class Result:
    """One variant's measurement."""

    name: str
    messages: int
    item_events: int
    events_per_s: float
    messages_per_s: float
    startup_s: float
    measured_s: float
    peak_rss_mb: float
    cpu_s: float
    samples: int
    note: str = ""

    @property
    def events_per_cpu_s(self) -> float:
        """Item events per CPU second of the variant's process tree over the timed interval."""
        return self.events_per_s * self.measured_s / self.cpu_s if self.cpu_s > 0 else float("nan")


def tree_usage(proc: psutil.Process) -> tuple[int, float]:
    """Resident bytes and CPU seconds (user + system) of a process and its descendants."""
    rss = 0
    cpu = 0.0
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return rss, cpu
    for p in members:
        with contextlib.suppress(psutil.Error), p.oneshot():
            rss += p.memory_info().rss
            times = p.cpu_times()
            cpu += times.user + times.system
    return rss, cpu


async def committed_offsets(consumer: AIOKafkaConsumer, topic: str) -> dict[int, int]:
    """The group's committed offset of every source partition (partitions without one are left out)."""
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    values = await asyncio.gather(*(consumer.committed(tp) for tp in tps))
    return {tp.partition: v for tp, v in zip(tps, values, strict=True) if v is not None}


async def watch(
    name: str,
    bootstrap: str,
    group: str,
    placement: Placement,
    proc: Proc,
    spawned_at: float,
    timeout_s: float,
) -> Result:
    """Time one variant: items of `placement` below the group's committed offsets, polled every 0.1 s.

    The rate is (items at the last poll − items at the first poll that showed
    progress) / (time between them): start-up and the first commit interval
    are excluded, both ends carry the same commit and poll delays.  Peak RSS
    is the largest resident size of the variant's process tree at any poll;
    CPU seconds are the tree's over the same interval as the rate.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    ps = psutil.Process(proc.pid)
    start_items = placement.items_done(placement.starts)
    total_items = placement.items_done(placement.ends) - start_items
    first: tuple[float, int, float] | None = None
    last: tuple[float, int, float] = (spawned_at, 0, 0.0)
    peak = 0
    samples = 0
    note = ""
    try:
        while True:
            committed = await committed_offsets(consumer, EVENTS.name)
            now = time.monotonic()
            rss, cpu = tree_usage(ps)
            peak = max(peak, rss)
            done_items = placement.items_done(committed) - start_items
            samples += 1
            if done_items > 0 and first is None:
                first = (now, done_items, cpu)
            last = (now, done_items, cpu)
            if all(committed.get(p, -1) >= end for p, end in placement.ends.items()):
                break
            if not proc.alive():
                msg = f"{name}: process exited before finishing; log ends with:\n{proc.log_tail()}"
                raise RuntimeError(msg)
            if now - spawned_at > timeout_s:
                note = f"timed out after {timeout_s:.0f} s at {done_items}/{total_items} events"
                break
            await asyncio.sleep(POLL_S)
    finally:
        await consumer.stop()
    if first is None:
        msg = f"{name}: no progress within {timeout_s:.0f} s; log ends with:\n{proc.log_tail()}"
        raise RuntimeError(msg)
    span = last[0] - first[0]
    if span <= 0.0:  # finished within one commit interval: fall back to spawn-to-end
        span = last[0] - spawned_at
        rate = last[1] / span
        note = note or "finished within one commit interval: rate includes start-up"
    else:
        rate = (last[1] - first[1]) / span
        if span < MIN_TRUSTED_S:
            note = note or f"timed only {span:.1f} s: too short to trust (use more events)"
    messages = placement.messages()
    return Result(
        name=name,
        messages=messages,
        item_events=total_items,
        events_per_s=rate,
        messages_per_s=rate * messages / max(total_items, 1),
        startup_s=first[0] - spawned_at,
        measured_s=span,
        peak_rss_mb=peak / MB,
        cpu_s=last[2] - first[2],
        samples=samples,
        note=note,
    )


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
    """RECTUNE_* settings of the benchmarked worker (defaults otherwise: 60 s windows, 64 buckets)."""
    return settings_env(
        engine=engine,
        bootstrap=bootstrap,
        events_partitions=PARTITIONS,
        app_id=app_id,
        log_level="warning",
        checkpoint_interval_s=checkpoint_s,
        session_timeout_s=SESSION_TIMEOUT_S,
    )


async def run(args: argparse.Namespace, work_dir: Path) -> tuple[dict[str, Result], dict[str, Any]]:
    """Produce, then run ceiling, batched, naive and single one after another; returns results and facts."""
    facts: dict[str, Any] = {"load_before": os.getloadavg()}
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
    running: ManagedProcess | None = None
    try:
        await ensure_topics(broker.bootstrap, catalogue_for(PARTITIONS))
        t0 = time.monotonic()
        batched = await produce(broker.bootstrap, EVENTS.name, batched_data)
        facts["produce_batched_s"] = time.monotonic() - t0
        del batched_data
        timeout = args.variant_timeout_s

        # ceiling: bare aiokafka + orjson + numpy over the envelopes.
        group = f"bench-ceiling-{uuid.uuid4().hex[:8]}"
        argv = [
            sys.executable,
            str(VARIANTS_SCRIPT),
            "ceiling",
            "--bootstrap",
            broker.bootstrap,
            "--topic",
            EVENTS.name,
            "--group",
            group,
            "--ends",
            json.dumps(batched.ends),
        ]
        spawned = time.monotonic()
        running = ManagedProcess(
            spawn(argv, what="ceiling", log_path=work_dir / "ceiling.log", cwd=work_dir), work_dir / "ceiling.log"
        )
        results["ceiling"] = await watch("ceiling", broker.bootstrap, group, batched, running, spawned, timeout)
        stop_quietly(running)
        running = None

        # batched: the real worker over the same envelopes.
        app_id = f"bench-worker-{uuid.uuid4().hex[:8]}"
        env = worker_env(broker.bootstrap, app_id, args.checkpoint_interval_s)
        spawned = time.monotonic()
        running = start_worker(work_dir / "worker-batched.log", env, cwd=work_dir)
        results["batched"] = await watch("batched", broker.bootstrap, app_id, batched, running, spawned, timeout)
        stop_quietly(running)
        running = None
        facts["broker_rss_mb"] = max(facts["broker_rss_mb"], tree_usage(broker_ps)[0] / MB)

        if args.direct:
            # direct: the real `rectune worker` with RECTUNE_ENGINE=direct (the same StreamProcessor
            # on a plain aiokafka consumer instead of a Faust agent), same envelopes.
            group = f"bench-direct-{uuid.uuid4().hex[:8]}"
            direct_env = worker_env(broker.bootstrap, group, args.checkpoint_interval_s, engine="direct")
            spawned = time.monotonic()
            running = start_worker(work_dir / "worker-direct.log", direct_env, cwd=work_dir)
            results["direct"] = await watch("direct", broker.bootstrap, group, batched, running, spawned, timeout)
            stop_quietly(running)
            running = None

        # The one-event messages go after the envelopes, once the worker is caught up and stopped.
        t0 = time.monotonic()
        single = await produce(broker.bootstrap, EVENTS.name, single_data)
        facts["produce_single_s"] = time.monotonic() - t0
        del single_data
        if single.starts != batched.ends:
            msg = f"one-event messages landed at {single.starts}, expected right after the envelopes {batched.ends}"
            raise RuntimeError(msg)

        # naive: plain Faust, one table update per event, starting at the one-event messages.
        naive_id = f"bench-naive-{uuid.uuid4().hex[:8]}"
        await precommit(broker.bootstrap, naive_id, single.starts)
        argv = [
            sys.executable,
            str(VARIANTS_SCRIPT),
            "naive",
            "--bootstrap",
            broker.bootstrap,
            "--topic",
            EVENTS.name,
            "--app-id",
            naive_id,
            "--partitions",
            str(PARTITIONS),
            "--commit-interval-s",
            str(args.checkpoint_interval_s),
            "--session-timeout-s",
            str(SESSION_TIMEOUT_S),
        ]
        spawned = time.monotonic()
        running = ManagedProcess(
            spawn(argv, what="naive", log_path=work_dir / "naive.log", cwd=work_dir), work_dir / "naive.log"
        )
        results["naive"] = await watch("naive", broker.bootstrap, naive_id, single, running, spawned, timeout)
        stop_quietly(running)
        running = None

        # single: the same worker group resumes from its checkpoints at the one-event messages.
        spawned = time.monotonic()
        running = start_worker(work_dir / "worker-single.log", env, cwd=work_dir)
        results["single"] = await watch("single", broker.bootstrap, app_id, single, running, spawned, timeout)
        stop_quietly(running)
        running = None
        facts["broker_rss_mb"] = max(facts["broker_rss_mb"], tree_usage(broker_ps)[0] / MB)
        facts["load_after"] = os.getloadavg()
    finally:
        stop_quietly(running)
        broker.stop()
    return results, facts


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (platform string elsewhere)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def report(args: argparse.Namespace, results: dict[str, Result], facts: dict[str, Any]) -> dict[str, Any]:
    """Print the human table and return the JSON summary (every figure measured in this run)."""
    print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}, Python {platform.python_version()}, broker {args.broker}")
    print(
        f"data: {facts['batched_bytes'] / MB:.0f} MB of envelopes, {facts['single_bytes'] / MB:.1f} MB of one-event "
        f"messages (shape {args.single_shape!r}); generated in {facts['generate_s']:.1f} s, envelopes produced in "
        f"{facts['produce_batched_s']:.1f} s; broker RSS up to {facts['broker_rss_mb']:.0f} MB"
    )
    load = facts["load_before"][0], facts.get("load_after", (float("nan"),))[0]
    busy = " (other processes were busy: rates are lower and noisier)" if max(load) > 0.5 else ""
    print(f"load average (1 min) before/after: {load[0]:.2f}/{load[1]:.2f}{busy}")
    print("rates are per second, so the envelope set and the smaller one-event set may differ in size;")
    print("CPU s is the variant's process tree over the timed interval (the broker's is not included)")
    header = (
        f"{'variant':<9} {'messages':>9} {'item events':>12} {'events/s':>11} {'msgs/s':>9} "
        f"{'events/CPU-s':>12} {'CPU s':>6} {'timed s':>8} {'start-up s':>10} {'peak RSS MB':>11}  note"
    )
    print(header)
    print("-" * len(header))
    for name in ("batched", "ceiling", "direct", "single", "naive"):
        r = results.get(name)
        if r is None:
            continue
        print(
            f"{r.name:<9} {r.messages:>9} {r.item_events:>12} {r.events_per_s:>11,.0f} {r.messages_per_s:>9,.0f} "
            f"{r.events_per_cpu_s:>12,.0f} {r.cpu_s:>6.1f} {r.measured_s:>8.2f} {r.startup_s:>10.2f} "
            f"{r.peak_rss_mb:>11.0f}  {r.note}"
        )
    b = results["batched"]
    vs_naive = b.events_per_s / results["naive"].events_per_s
    vs_ceiling = b.events_per_s / results["ceiling"].events_per_s
    print(
        f"batched / naive = {vs_naive:.1f}x (target >= {TARGET_VS_NAIVE:.0f}x); "
        f"batched / ceiling = {vs_ceiling:.2f} (target >= {TARGET_VS_CEILING}); "
        f"batched >= {TARGET_RATE:,.0f}/s on a 2-core machine; "
        f"peak RSS <= {TARGET_RSS_MB:.0f} MB for {TARGET_RSS_EVENTS:,} events (this run: {b.item_events:,})"
    )
    return {
        "events": b.item_events,
        "batched_events_per_s": round(b.events_per_s),
        "batched_direct_events_per_s": round(results["direct"].events_per_s) if "direct" in results else None,
        "single_events_per_s": round(results["single"].events_per_s),
        "naive_events_per_s": round(results["naive"].events_per_s),
        "ceiling_events_per_s": round(results["ceiling"].events_per_s),
        "peak_rss_mb": round(b.peak_rss_mb, 1),
        "broker": args.broker,
        "batched_vs_naive": round(vs_naive, 2),
        "batched_vs_ceiling": round(vs_ceiling, 3),
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
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs) after the run")
    args = parser.parse_args(argv)
    if args.events is None:
        args.events = 300_000 if args.quick else TARGET_RSS_EVENTS
    if args.single_events is None:
        per_message = 8 if args.single_shape == "wire" else 1  # ~8 item events per bare wire event
        args.single_events = (20_000 if args.quick else 50_000) * per_message
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
