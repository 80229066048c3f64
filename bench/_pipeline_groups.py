"""The broker and process side of the pipeline benchmark: producing, starting and timing consumer groups.

`bench/pipeline.py` (`run`) starts the broker here (`start_broker`), sends
each message set (`produce`, which records where every message landed), and
times each variant as a `Group` of one or N processes (`measure`, around
`_pipeline_measure.watch`): the real worker (`worker_group`, `worker_env`) or
the bare aiokafka ceiling (`ceiling_group`, run from
`bench/_pipeline_variants.py`).  Kept apart from the data generation
(`_pipeline_data`) and the report (`_pipeline_report`) because everything here
talks to the broker or to child processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from _pipeline_data import MessageSet
from _pipeline_measure import MB, Placement, Result, assigned_partitions, watch
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from rectune.embedded import ManagedProcess, spawn, start_tansu
from rectune.processes import settings_env, start_worker
from schemas.topics import EVENTS

REPO: Final = Path(__file__).resolve().parent.parent
VARIANTS_SCRIPT: Final = Path(__file__).resolve().parent / "_pipeline_variants.py"
PARTITIONS: Final = 4
#: Group session timeout of every Faust variant (the worker's default); tansu delays
#: a new group's first join by about half of it, which start-up then shows.
SESSION_TIMEOUT_S: Final = 10.0


# -- producing ----------------------------------------------------------------


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


# -- broker and groups ---------------------------------------------------------


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
