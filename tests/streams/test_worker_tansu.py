"""Both worker engines end to end on the embedded broker: totals, dead letters (tombstones too), restart."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from rectune.admin import catalogue_for, ensure_topics
from rectune.metrics_reader import read_totals
from rectune.processes import settings_env, start_worker
from rectune.producer import publish_events
from schemas.dlq import DeadLetter
from schemas.events import Event
from simulator.synthetic import TrafficGenerator, TrafficSpec, truth_by_arm

PARTITIONS = 4


def exact(events: list[Event]) -> dict[str, tuple[int, int, int]]:
    return {arm: (t.impressions, t.clicks, t.conversions) for arm, t in truth_by_arm(events).items()}


async def wait_totals(
    bootstrap: str, expected: dict[str, tuple[int, int, int]], timeout_s: float
) -> dict[str, tuple[int, int, int]]:
    deadline = time.monotonic() + timeout_s
    got: dict[str, tuple[int, int, int]] = {}
    while time.monotonic() < deadline:
        totals = await read_totals(bootstrap)
        got = {
            arm: (int(t.total("impressions")), int(t.total("clicks")), int(t.total("conversions")))
            for (_, arm), t in totals.items()
        }
        if got == expected:
            return got
        await asyncio.sleep(1.0)
    return got


@pytest.mark.parametrize("engine", ["faust", "direct"])
async def test_worker_aggregates_dead_letters_and_resumes(tansu_broker: str, tmp_path: Path, engine: str) -> None:
    await ensure_topics(tansu_broker, catalogue_for(PARTITIONS))
    env = settings_env(
        engine=engine,
        bootstrap=tansu_broker,
        events_partitions=PARTITIONS,
        window_s=5,
        allowed_lateness_s=1,
        idle_close_s=2,
        checkpoint_interval_s=0.5,
        session_timeout_s=6,
        log_level="warning",
        app_id=f"it-{uuid.uuid4().hex[:8]}",
    )
    gen = TrafficGenerator(TrafficSpec(arms=("control", "treatment", "t2")), seed=42)
    first = list(gen.stream(1_767_225_600_000, 3_000, 100.0))
    second = list(gen.stream(1_767_225_600_000 + 40_000, 2_000, 100.0))

    worker = start_worker(tmp_path / "w1.log", env, cwd=tmp_path)
    try:
        await publish_events(tansu_broker, first, source_id="it-a")
        producer = AIOKafkaProducer(bootstrap_servers=tansu_broker)
        await producer.start()
        try:
            await producer.send_and_wait("rectune.events", b"\xff not json at all")
            await producer.send_and_wait("rectune.events", b'{"type":"click","schema_version":1,"event_id":"x"}')
            await producer.send_and_wait("rectune.events", None, key=b"tombstone")
        finally:
            await producer.stop()
        got = await wait_totals(tansu_broker, exact(first), timeout_s=90)
        assert got == exact(first), worker.log_tail()
    finally:
        worker.stop()

    # A new worker resumes from the checkpoints: the second batch adds, nothing doubles.
    await publish_events(tansu_broker, second, source_id="it-b")
    worker = start_worker(tmp_path / "w2.log", env)
    try:
        got = await wait_totals(tansu_broker, exact(first + second), timeout_s=90)
        assert got == exact(first + second), worker.log_tail()
    finally:
        worker.stop()

    consumer = AIOKafkaConsumer(
        "rectune.dlq", bootstrap_servers=tansu_broker, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=3000)
        letters = [msgspec.json.decode(r.value, type=DeadLetter) for rs in batch.values() for r in rs]
    finally:
        await consumer.stop()
    rules = {(d.field, d.event_index) for d in letters}
    assert ("$", None) in rules
    assert ("event_time_ms", None) in rules
    tombstones = [d for d in letters if d.rule == "a null record (tombstone) is not an event"]
    assert len(tombstones) == 1 and tombstones[0].payload_bytes == 0, letters
    assert all(d.rule and d.source_topic == "rectune.events" and d.source_offset >= 0 for d in letters)
    # Faust would make `<app_id>-data/` in the worker's working directory; our state is in Kafka, not there.
    assert not any(p.name.endswith("-data") for p in tmp_path.iterdir()), sorted(tmp_path.iterdir())
