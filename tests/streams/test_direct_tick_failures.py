"""A failing periodic checkpoint: retried, never silent, bounded, and shutdown still completes.

The processor-level test drives `StreamProcessor.tick` directly; the engine
tests run the real `streams.direct.run_direct` against in-memory stand-ins for
the aiokafka consumer and producer (same durable `MemoryLog` idea as
test_processor_crash.py), injecting broker errors into chosen sends.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import msgspec
import pytest
from aiokafka import TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaTimeoutError

import streams.direct as direct
from schemas.encode import encode_batch
from schemas.events import Event
from schemas.metrics import MetricWindow, merge_by_arm
from schemas.topics import METRICS
from simulator.synthetic import TrafficGenerator, TrafficSpec, pack, truth_by_arm
from streams.aggregate import OutRecord
from streams.direct import CheckpointStalledError, run_direct
from streams.processor import StreamConfig, StreamProcessor
from streams.windows import WindowSpec

TOPIC = "rectune.events"
STATE = "rectune.state"
CONFIG = StreamConfig(
    TOPIC,
    WindowSpec(width_ms=5_000, allowed_lateness_ms=1_000, buckets=16),
    checkpoint_interval_s=0.02,
    idle_close_s=0.2,
)


class MemoryLog:
    """What the broker holds durably: source partitions, checkpoints, published records, commits."""

    def __init__(self, source: list[list[bytes]]) -> None:
        self.source = source
        self.state: dict[int, list[bytes]] = {}
        self.out: list[OutRecord] = []
        self.committed: dict[int, int] = {}


def make_log(seed: int, partitions: int, requests: int) -> tuple[MemoryLog, list[Event]]:
    events = list(TrafficGenerator(TrafficSpec(arms=("a", "b")), seed=seed).stream(1_700_000_000_000, requests, 20.0))
    source: list[list[bytes]] = [[] for _ in range(partitions)]
    for seq, envelope in enumerate(pack(events, 30)):
        source[seq % partitions].append(encode_batch("t", seq, envelope))
    return MemoryLog(source), events


def exact_totals(events: list[Event]) -> dict[str, tuple[int, int, int]]:
    return {arm: (t.impressions, t.clicks, t.conversions) for arm, t in truth_by_arm(events).items()}


def partial_ids(log: MemoryLog) -> list[str]:
    return [msgspec.json.decode(r.value, type=MetricWindow).partial_id for r in log.out if r.topic == METRICS.name]


def merged(log: MemoryLog) -> dict[str, tuple[int, int, int]]:
    """Totals as a metrics reader sees them: a republished partial replaces its copy."""
    partials = {}
    for record in log.out:
        if record.topic == METRICS.name:
            window = msgspec.json.decode(record.value, type=MetricWindow)
            partials[window.partial_id] = window
    return {
        arm: (int(t.total("impressions")), int(t.total("clicks")), int(t.total("conversions")))
        for (_, arm), t in merge_by_arm(partials).items()
    }


def all_done(log: MemoryLog, events: list[Event]) -> bool:
    committed_all = all(log.committed.get(p, 0) == len(s) for p, s in enumerate(log.source))
    return committed_all and merged(log) == exact_totals(events)


@dataclass(frozen=True)
class Record:
    offset: int
    value: bytes
    timestamp: int


class FakeConsumer:
    """The slice of AIOKafkaConsumer that run_direct uses; owns every partition, starts at the commit."""

    def __init__(self, log: MemoryLog) -> None:
        self.log = log
        self.listener: ConsumerRebalanceListener | None = None
        self.assigned: set[TopicPartition] = set()
        self.positions: dict[int, int] = {}
        self.stopped = False

    def subscribe(self, topics: list[str], listener: ConsumerRebalanceListener) -> None:
        self.listener = listener

    async def start(self) -> None:
        pass

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Record]]:
        if not self.assigned:
            assert self.listener is not None
            tps = [TopicPartition(TOPIC, p) for p in range(len(self.log.source))]
            self.assigned = set(tps)
            self.positions = {p: self.log.committed.get(p, 0) for p in range(len(self.log.source))}
            await self.listener.on_partitions_assigned(tps)
        batch: dict[TopicPartition, list[Record]] = {}
        for tp in sorted(self.assigned):
            start = self.positions[tp.partition]
            chunk = self.log.source[tp.partition][start : start + 3]  # small batches: ticks interleave
            if chunk:
                batch[tp] = [Record(start + i, value, 0) for i, value in enumerate(chunk)]
                self.positions[tp.partition] = start + len(chunk)
        await asyncio.sleep(0 if batch else 0.01)
        return batch

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            self.log.committed[tp.partition] = offset

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp.partition] = offset

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    async def stop(self) -> None:
        self.stopped = True


class FakeProducer:
    """The slice of AIOKafkaProducer that run_direct uses; `fails(topic, n)` makes the n-th send to topic raise."""

    def __init__(self, log: MemoryLog, fails: Callable[[str, int], bool]) -> None:
        self.log = log
        self.fails = fails
        self.sends: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.stopped = False

    def _count(self, topic: str) -> None:
        self.sends[topic] += 1
        if self.fails(topic, self.sends[topic]):
            self.failed[topic] += 1
            raise KafkaTimeoutError

    async def start(self) -> None:
        pass

    async def send_and_wait(self, topic: str, value: bytes, key: bytes, partition: int) -> None:
        assert topic == STATE
        self._count(topic)
        self.log.state.setdefault(partition, []).append(value)

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[None]:
        self._count(topic)
        self.log.out.append(OutRecord(topic, key, value))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def stop(self) -> None:
        self.stopped = True


@pytest.fixture
def fake_kafka(
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[MemoryLog, Callable[[str, int], bool]], tuple[FakeConsumer, FakeProducer]]:
    def install(log: MemoryLog, fails: Callable[[str, int], bool]) -> tuple[FakeConsumer, FakeProducer]:
        consumer, producer = FakeConsumer(log), FakeProducer(log, fails)

        async def read_latest(bootstrap: str, topic: str, partition: int) -> bytes | None:
            records = log.state.get(partition, [])
            return records[-1] if records else None

        monkeypatch.setattr(direct, "AIOKafkaConsumer", lambda **_: consumer)
        monkeypatch.setattr(direct, "AIOKafkaProducer", lambda **_: producer)
        monkeypatch.setattr(direct, "read_latest", read_latest)
        return consumer, producer

    return install


async def wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def start(stop: asyncio.Event, limit_s: float = 60.0) -> asyncio.Task[None]:
    return asyncio.create_task(
        run_direct(
            CONFIG,
            bootstrap="fake:9092",
            group_id="g",
            state_topic=STATE,
            checkpoint_failure_limit_s=limit_s,
            stop=stop,
        )
    )


# -- the processor ---------------------------------------------------------------


class FlakyIO:
    """StreamIO whose checkpoint writes fail while `failing` is set."""

    def __init__(self) -> None:
        self.failing = True
        self.state: list[bytes] = []
        self.committed: list[int] = []

    async def load_checkpoint(self, partition: int) -> bytes | None:
        return None

    async def write_checkpoint(self, partition: int, data: bytes) -> None:
        if self.failing:
            raise KafkaTimeoutError
        self.state.append(data)

    async def publish(self, records: Iterable[OutRecord]) -> None:
        pass

    async def commit(self, partition: int, next_offset: int) -> None:
        self.committed.append(next_offset)

    async def seek(self, partition: int, offset: int) -> None:
        pass

    def owns(self, partition: int) -> bool:
        return True


async def test_a_failed_tick_leaves_the_partition_dirty_and_the_next_tick_checkpoints_it() -> None:
    log, _ = make_log(1, 1, requests=20)
    io = FlakyIO()
    proc = StreamProcessor(CONFIG, io)
    await proc.assign([0], 0.0)
    for offset, payload in enumerate(log.source[0]):
        await proc.on_message(0, offset, payload, 0, 0.0)
    assert proc.aggregator(0) is not None
    assert not proc.aggregator(0).outbox  # type: ignore[union-attr]  # only state to save: the dirty flag alone must carry the retry
    with pytest.raises(KafkaTimeoutError) as failed:
        await proc.tick(0.01)
    assert any("rectune.events[0] failed at write_checkpoint" in note for note in failed.value.__notes__)
    io.failing = False
    await proc.tick(0.02)
    assert len(io.state) == 1
    assert io.committed == [len(log.source[0])]


# -- the direct engine -----------------------------------------------------------


async def test_transient_checkpoint_and_publish_failures_are_retried_and_totals_are_exact(
    fake_kafka: Callable[[MemoryLog, Callable[[str, int], bool]], tuple[FakeConsumer, FakeProducer]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    log, events = make_log(7, 2, requests=300)
    # The first two checkpoint writes fail (two ticks in a row), and later the
    # second metrics record: a publish that breaks off half way.
    consumer, producer = fake_kafka(
        log, lambda topic, n: (topic == STATE and n <= 2) or (topic == METRICS.name and n == 2)
    )
    stop = asyncio.Event()
    with caplog.at_level(logging.WARNING):
        worker = start(stop)
        # Ticks alone (no shutdown checkpoint yet) must bring everything out.
        done = await wait_for(lambda: all_done(log, events) or worker.done(), timeout_s=20.0)
        stop.set()
        await asyncio.wait_for(worker, 10.0)
    assert done and all_done(log, events), "ticks stopped making progress after a failed checkpoint"
    assert producer.failed == {STATE: 2, METRICS.name: 1}
    ids = partial_ids(log)
    assert len(ids) > len(set(ids))  # the broken-off publish was redone, and replaced its copies
    assert consumer.stopped and producer.stopped
    # Each failure is logged with what failed: the partition and the step of the protocol.
    assert any(r.name == "streams.direct" and r.message.startswith("checkpoint tick failed") for r in caplog.records)
    notes = [note for r in caplog.records if r.exc_info and r.exc_info[1] for note in r.exc_info[1].__notes__]
    assert sum(f"{TOPIC}[" in n and "failed at write_checkpoint" in n for n in notes) == 2
    assert sum(f"{TOPIC}[" in n and "failed at publish" in n for n in notes) == 1


async def test_checkpoints_failing_beyond_the_limit_stop_the_worker_with_a_clear_error(
    fake_kafka: Callable[[MemoryLog, Callable[[str, int], bool]], tuple[FakeConsumer, FakeProducer]],
) -> None:
    log, _ = make_log(3, 2, requests=100)
    consumer, producer = fake_kafka(log, lambda topic, n: topic == STATE)  # the state topic never accepts a write
    stop = asyncio.Event()
    worker = start(stop, limit_s=0.2)
    with pytest.raises(CheckpointStalledError) as stalled:
        await asyncio.wait_for(worker, 10.0)  # nobody sets `stop`: the worker must give up by itself
    message = str(stalled.value)
    assert f"checkpoints of {TOPIC} failed" in message
    assert "limit 0.2 s" in message
    assert "KafkaTimeoutError" in message
    assert "hint:" in message
    assert isinstance(stalled.value.__cause__, KafkaTimeoutError)
    assert producer.failed[STATE] >= 3  # retried before giving up, then the final checkpoint was attempted too
    assert log.committed == {}  # nothing committed without a checkpoint
    assert consumer.stopped and producer.stopped


async def test_shutdown_while_checkpoints_fail_still_checkpoints_and_stops_the_clients(
    fake_kafka: Callable[[MemoryLog, Callable[[str, int], bool]], tuple[FakeConsumer, FakeProducer]],
) -> None:
    log, events = make_log(5, 2, requests=200)
    broker_down = True
    consumer, producer = fake_kafka(log, lambda topic, n: broker_down and topic == STATE)
    stop = asyncio.Event()
    worker = start(stop)
    consumed = await wait_for(lambda: consumer.positions == {0: len(log.source[0]), 1: len(log.source[1])}, 10.0)
    assert consumed
    # Enough failed ticks for the quiet partitions to idle-close their windows into the outbox.
    failed_before = producer.failed[STATE]
    assert await wait_for(lambda: producer.failed[STATE] >= failed_before + 20, 10.0)
    broker_down = False  # back in time for the shutdown checkpoint (SIGTERM)
    stop.set()
    await asyncio.wait_for(worker, 10.0)
    assert consumer.stopped and producer.stopped
    assert {p: log.committed.get(p) for p in range(2)} == {0: len(log.source[0]), 1: len(log.source[1])}
    assert merged(log) == exact_totals(events)


class FailsOnPartition(FlakyIO):
    """Checkpoint writes of one partition fail; the others succeed."""

    def __init__(self, bad: int) -> None:
        super().__init__()
        self.bad, self.failing = bad, False
        self.written: list[int] = []

    async def write_checkpoint(self, partition: int, data: bytes) -> None:
        if partition == self.bad:
            raise KafkaTimeoutError
        self.written.append(partition)


async def test_a_failed_checkpoint_on_revoke_still_checkpoints_and_drops_the_other_partitions() -> None:
    log, _ = make_log(2, 3, requests=30)
    io = FailsOnPartition(bad=0)
    proc = StreamProcessor(CONFIG, io)
    await proc.assign([0, 1, 2], 0.0)
    for partition, values in enumerate(log.source):
        for offset, payload in enumerate(values):
            await proc.on_message(partition, offset, payload, 0, 0.0)
    with pytest.raises(KafkaTimeoutError):
        await proc.revoke([0, 1, 2])
    assert proc.assigned() == [], "every revoked partition is dropped"
    assert io.written == [1, 2], "the partitions after the failing one still get their checkpoint"
