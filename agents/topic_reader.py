"""Read a whole topic from the beginning and keep up with it (thin aiokafka adapter, no consumer group).

`TopicReader(bootstrap, topic)` assigns every partition of `topic`, seeks to
the beginning on `start()`, and on each `poll()` reads everything published
before the call, handing each record's value to the subclass's `_accept`
(which keeps what it wants and returns 1 per record kept).  A record that
is not the subclass's `kind` (undecodable, or a tombstone) is refused:
counted in `refused` and logged, one warning per `poll` naming the first
such record's partition, offset and reason, so a bad producer is visible
without stopping the agents.

Who uses it: `agents.metrics_feed.MetricsFeed` (metric windows) and
`agents.alerts_feed.AlertsFeed` (the sidecar's breaker alerts), both run by
`agents.runtime.AgentRuntime`; each agents process keeps its own complete
view of both topics.
"""

from __future__ import annotations

import asyncio
import logging
from typing import ClassVar, Final

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition

log = logging.getLogger(__name__)
_FETCH_MAX_WAIT_MS: Final = 50
_PARTITIONS_WAIT_S: Final = 5.0


class Refused(ValueError):
    """Raised by `_accept` for a record that is not the reader's kind; the message is the reason."""


async def _partitions(consumer: AIOKafkaConsumer, topic: str, wait_s: float = _PARTITIONS_WAIT_S) -> set[int]:
    """The partition ids of `topic` from a fresh metadata fetch (empty when the topic does not exist).

    `consumer.topics()` refreshes nothing the consumer keeps: its metadata
    tracks only topics it was told about, so on Apache Kafka a topic created
    before the consumer started is unknown to `partitions_for_topic` (tansu
    happens to answer anyway).  The client's own fetch is read instead
    (aiokafka is pinned), retried briefly while a new topic has no leader yet.
    """
    await consumer.topics()
    known = consumer.partitions_for_topic(topic)  # enough where the client already tracks the topic (tansu)
    if known:
        return set(known)
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        cluster = await consumer._client.fetch_all_metadata()  # private, see the docstring
        parts = cluster.partitions_for_topic(topic)
        if parts or topic not in cluster.topics() or asyncio.get_running_loop().time() >= deadline:
            return set(parts or ())
        await asyncio.sleep(0.1)


class TopicReader:
    """Every record of one topic since its beginning, in offset order per partition (see the module doc)."""

    #: What a record is, for refusal messages ("metric window").
    kind: ClassVar[str] = "record"

    def __init__(self, bootstrap: str, topic: str) -> None:
        """Nothing is read until `start()`."""
        self.bootstrap, self.topic = bootstrap, topic
        self._consumer: AIOKafkaConsumer | None = None
        self._refused = 0
        self._first_refusal: tuple[int, int, str] | None = None  # (partition, offset, reason) in this poll

    @property
    def refused(self) -> int:
        """Records refused so far (not of this reader's kind), for the caller to report."""
        return self._refused

    async def start(self) -> None:
        """Assign every partition of the topic and seek to the beginning."""
        # A quiet topic (alerts) would hold each fetch for aiokafka's default 500 ms wait, and `poll` runs on
        # every tick of the lease holder: a short wait keeps a tick well inside the lease's TTL.
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=_FETCH_MAX_WAIT_MS,
        )
        await consumer.start()
        parts = await _partitions(consumer, self.topic)
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        if tps:
            await consumer.seek_to_beginning(*tps)
        self._consumer = consumer

    async def stop(self) -> None:
        """Close the consumer."""
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def poll(self, timeout_ms: int = 200) -> int:
        """Read everything published before this call; returns how many records `_accept` kept.

        Caught up means every partition's position reached the end offset
        reported at the call AND a fetch came back empty (either alone can
        stop short: a slow first fetch, or tansu's lagging ListOffsets), so a
        leader that just took over ticks on a complete view, not on the first
        fetch of a backlog.
        """
        consumer = self._consumer
        if consumer is None:
            return 0
        tps = list(consumer.assignment())
        ends = await consumer.end_offsets(tps) if tps else {}
        read = 0
        refused_before = self._refused
        self._first_refusal = None
        while True:
            batch = await consumer.getmany(timeout_ms=timeout_ms, max_records=10_000)
            for tp, records in batch.items():
                for record in records:
                    read += self._take(tp.partition, record.offset, record.value)
            if not batch and all([await consumer.position(tp) >= end for tp, end in ends.items()]):
                break
        if self._first_refusal is not None:
            partition, offset, reason = self._first_refusal
            log.warning(
                "refused %d record(s) that are no %s in this poll (%d in all); first at %s[%d]@%d: %s",
                self._refused - refused_before,
                self.kind,
                self._refused,
                self.topic,
                partition,
                offset,
                reason,
            )
        return read

    def _accept(self, value: bytes) -> int:
        """Keep one record's value (1) or skip it as not wanted (0); raise `Refused` or a msgspec error if bad."""
        raise NotImplementedError

    def _take(self, partition: int, offset: int, value: bytes | None) -> int:
        if value is None:
            return self._refuse(partition, offset, f"a null record (tombstone) is not a {self.kind}")
        try:
            return self._accept(value)
        except (msgspec.DecodeError, Refused) as err:  # ValidationError included
            return self._refuse(partition, offset, str(err))

    def _refuse(self, partition: int, offset: int, reason: str) -> int:
        self._refused += 1
        if self._first_refusal is None:
            self._first_refusal = (partition, offset, reason)
        log.debug("%s[%d]@%d refused: %s", self.topic, partition, offset, reason)
        return 0


__all__ = ["Refused", "TopicReader"]
