"""Effectively-once on Apache Kafka: kill -9 a worker again and again while events
flow, and a two-worker group that loses a member mid-stream.  Merged per-arm
totals must equal the exact totals of what was produced: nothing lost, nothing
counted twice.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from pathlib import Path

import pytest

from rectune.admin import catalogue_for, ensure_topics
from rectune.apache_kafka import ApacheKafkaBroker
from rectune.metrics_reader import read_totals
from rectune.processes import settings_env, start_worker
from rectune.producer import publish_events
from schemas.events import Event
from simulator.synthetic import TrafficGenerator, TrafficSpec, truth_by_arm

PARTITIONS = 4
START_MS = 1_767_225_600_000


def exact(events: list[Event]) -> dict[str, tuple[int, int, int, float]]:
    return {arm: (t.impressions, t.clicks, t.conversions, t.revenue) for arm, t in truth_by_arm(events).items()}


async def merged(bootstrap: str) -> dict[str, tuple[int, int, int, float]]:
    totals = await read_totals(bootstrap)
    return {
        arm: (
            int(t.total("impressions")),
            int(t.total("clicks")),
            int(t.total("conversions")),
            round(t.total("revenue"), 4),
        )
        for (_, arm), t in totals.items()
    }


async def wait_exact(
    bootstrap: str, expected: dict[str, tuple[int, int, int, float]], timeout_s: float
) -> dict[str, tuple[int, int, int, float]]:
    deadline = time.monotonic() + timeout_s
    got = await merged(bootstrap)
    while got != expected and time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        got = await merged(bootstrap)
    return got


ENGINES = pytest.mark.parametrize("engine", ["faust", "direct"])


def worker_env(bootstrap: str, app_id: str, engine: str = "faust") -> dict[str, str]:
    return settings_env(
        engine=engine,
        bootstrap=bootstrap,
        events_partitions=PARTITIONS,
        window_s=2,
        allowed_lateness_s=0.5,
        idle_close_s=3,
        checkpoint_interval_s=0.3,
        session_timeout_s=3,
        log_level="warning",
        app_id=app_id,
    )


async def produce_slowly(bootstrap: str, events: list[Event], chunks: int, pause_s: float, source: str) -> None:
    size = -(-len(events) // chunks)
    for i in range(chunks):
        await publish_events(bootstrap, events[i * size : (i + 1) * size], source_id=f"{source}-{i}")
        await asyncio.sleep(pause_s)


@ENGINES
async def test_kill_minus_nine_repeatedly_loses_and_doubles_nothing(
    fresh_kafka: ApacheKafkaBroker, tmp_path: Path, engine: str
) -> None:
    bootstrap = fresh_kafka.bootstrap
    await ensure_topics(bootstrap, catalogue_for(PARTITIONS))
    gen = TrafficGenerator(TrafficSpec(arms=("control", "a", "b")), seed=2024)
    events = list(gen.stream(START_MS, 16_000, 400.0))  # ~200k item events over 40 s of event time
    env = worker_env(bootstrap, f"kill-{uuid.uuid4().hex[:6]}", engine)
    rng = random.Random(99)
    producer = asyncio.create_task(produce_slowly(bootstrap, events, chunks=40, pause_s=0.6, source="kill"))
    kills = 0
    worker = start_worker(tmp_path / "worker-0.log", env)
    try:
        while kills < 10:
            await asyncio.sleep(rng.uniform(1.5, 4.5))
            worker.kill()  # SIGKILL: no revoke, no final checkpoint
            kills += 1
            worker = start_worker(tmp_path / f"worker-{kills}.log", env)
        await producer
        got = await wait_exact(bootstrap, exact(events), timeout_s=150)
        assert got == exact(events), worker.log_tail()
    finally:
        producer.cancel()
        worker.stop()
    assert kills == 10


@ENGINES
async def test_two_workers_one_leaves_mid_stream(fresh_kafka: ApacheKafkaBroker, tmp_path: Path, engine: str) -> None:
    bootstrap = fresh_kafka.bootstrap
    await ensure_topics(bootstrap, catalogue_for(PARTITIONS))
    gen = TrafficGenerator(TrafficSpec(arms=("control", "a")), seed=7)
    events = list(gen.stream(START_MS, 8_000, 400.0))
    env = worker_env(bootstrap, f"pair-{uuid.uuid4().hex[:6]}", engine)
    first = start_worker(tmp_path / "w1.log", env)
    second = start_worker(tmp_path / "w2.log", {**env, "RECTUNE_LOG_LEVEL": "info"})
    try:
        await asyncio.sleep(8)  # both joined: the group split the partitions
        producer = asyncio.create_task(produce_slowly(bootstrap, events, chunks=20, pause_s=0.5, source="pair"))
        await asyncio.sleep(4)
        second.stop()  # leaves the group mid-stream; its partitions move to the first worker
        await producer
        got = await wait_exact(bootstrap, exact(events), timeout_s=120)
        assert got == exact(events), first.log_tail()
    finally:
        first.stop()
        second.stop()
    log = (tmp_path / "w2.log").read_text()
    assert "assigned: resuming at offset" in log, "the second worker never owned a partition"
