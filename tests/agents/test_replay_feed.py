"""The agents' topic readers on Apache Kafka: every partition assigned, and the replay feed's seek by time."""

from __future__ import annotations

import time
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from test_loop_screen import make

from agents.replay_feed import ReplayFeed
from agents.topic_reader import TopicReader
from rectune.admin import ensure_topics
from schemas.replay import encode_replay
from schemas.topics import TopicSpec


@pytest.mark.kafka
async def test_a_starting_feed_seeks_by_time_on_a_broker_that_indexes_it(kafka_broker: str) -> None:
    topic = f"rectune.replay.{uuid.uuid4().hex[:8]}"
    now_ms = int(time.time() * 1000)
    records = make(version=2, logging_version=1, lean=0.0, requests=30)
    await ensure_topics(kafka_broker, [TopicSpec(topic, 1, 7 * 86_400_000, "delete", "replay feed test")])
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker, acks="all")
    await producer.start()
    try:
        for i, record in enumerate(records):
            # the first ten two hours old by the broker's clock, the rest now
            stamp = now_ms - 2 * 3_600_000 if i < 10 else now_ms
            await producer.send_and_wait(topic, encode_replay(record), timestamp_ms=stamp)
    finally:
        await producer.stop()
    feed = ReplayFeed(kafka_broker, "home", topic=topic, lookback_ms=3_600_000)
    # event times of the made records are old (T0); the feed's event-time filter is set far back so only the
    # broker's time index decides what is read
    await feed.start(now_ms=now_ms)
    feed._since_ms = 0
    try:
        assert await feed.poll(timeout_ms=500) == 20
        assert [r.request_id for r in feed.records] == [r.request_id for r in records[10:]]
    finally:
        await feed.stop()


class _Everything(TopicReader):
    def _accept(self, value: bytes) -> int:
        return 1


@pytest.mark.kafka
async def test_a_reader_assigns_every_partition_of_a_topic_created_before_it_started(kafka_broker: str) -> None:
    """The metrics and alerts feeds' base: on Apache Kafka it once assigned nothing and read nothing."""
    topic = f"rectune.reader.{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_broker, [TopicSpec(topic, 3, 86_400_000, "delete", "topic reader test")])
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker, acks="all")
    await producer.start()
    try:
        for i in range(9):
            await producer.send_and_wait(topic, b"v", partition=i % 3)
    finally:
        await producer.stop()
    reader = _Everything(kafka_broker, topic)
    await reader.start()
    try:
        assert await reader.poll(timeout_ms=500) == 9
    finally:
        await reader.stop()
