"""Cumulative per-arm totals of one surface from `rectune.metrics` (thin aiokafka adapter).

`MetricsFeed(bootstrap, surface)` assigns every partition of the metrics topic
and reads from the beginning (no consumer group: each agents process keeps its
own complete view), deduplicates partials by `partial_id` (a partial
republished after a crash replaces its earlier copy, as `rectune metrics`
does) and merges them per arm with `schemas.metrics.merge_by_arm` (and per arm and
cohort for Insight, `cohort_totals`).  `poll()`
reads everything published before it (see `poll`); `totals()` implements
`agents.loop.MetricsSource`.  A record that is no metric window (undecodable,
or a tombstone) is refused: counted in `refused` and logged, one warning per
`poll` naming the first such record's partition, offset and reason.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.metrics import ArmTotals, MetricWindow, merge_by_arm, merge_by_arm_cohort
from schemas.topics import METRICS

log = logging.getLogger(__name__)
_decoder = msgspec.json.Decoder(MetricWindow)


class MetricsFeed:
    """Merged totals of `surface`'s arms, kept up to date by `poll()`."""

    def __init__(self, bootstrap: str, surface: str, *, topic: str = METRICS.name) -> None:
        """Nothing is read until `start()`."""
        self.bootstrap, self.surface, self.topic = bootstrap, surface, topic
        self.partials: dict[str, MetricWindow] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._cache: dict[str, ArmTotals] | None = None
        self._cohort_cache: dict[str, dict[str, ArmTotals]] | None = None
        self._refused = 0
        self._first_refusal: tuple[int, int, str] | None = None  # (partition, offset, reason) in this poll

    @property
    def refused(self) -> int:
        """Records refused so far (not a metric window), for the caller to report next to the totals."""
        return self._refused

    async def start(self) -> None:
        """Assign every partition of the topic and seek to the beginning."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False)
        await consumer.start()
        await consumer.topics()  # refreshes the metadata
        parts = consumer.partitions_for_topic(self.topic) or set()
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
        """Read everything published before this call; returns how many partials of the surface were read.

        Caught up means every partition's position reached the end offset
        reported at the call AND a fetch came back empty (either alone can
        stop short: a slow first fetch, or tansu's lagging ListOffsets), so a
        leader that just took over ticks on complete totals, not on the first
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
                "refused %d record(s) that are no metric window in this poll (%d in all); first at %s[%d]@%d: %s",
                self._refused - refused_before,
                self._refused,
                self.topic,
                partition,
                offset,
                reason,
            )
        return read

    def _take(self, partition: int, offset: int, value: bytes | None) -> int:
        """Keep one record's window if it is of this surface (1), else 0; refused records are counted."""
        if value is None:
            return self._refuse(partition, offset, "a null record (tombstone) is not a metric window")
        try:
            window = _decoder.decode(value)
        except msgspec.DecodeError as err:  # ValidationError included
            return self._refuse(partition, offset, str(err))
        if window.surface != self.surface:
            return 0
        self.partials[window.partial_id] = window
        self._cache = self._cohort_cache = None
        return 1

    def _refuse(self, partition: int, offset: int, reason: str) -> int:
        self._refused += 1
        if self._first_refusal is None:
            self._first_refusal = (partition, offset, reason)
        log.debug("%s[%d]@%d refused: %s", self.topic, partition, offset, reason)
        return 0

    async def totals(self) -> Mapping[str, ArmTotals]:
        """arm id → cumulative merged totals of this surface."""
        if self._cache is None:
            self._cache = {arm: t for (_, arm), t in merge_by_arm(self.partials).items()}
        return self._cache

    async def cohort_totals(self) -> Mapping[str, Mapping[str, ArmTotals]]:
        """cohort → arm id → cumulative merged totals of this surface (Insight's per-cohort reads)."""
        if self._cohort_cache is None:
            out: dict[str, dict[str, ArmTotals]] = {}
            for (_, arm, cohort), t in merge_by_arm_cohort(self.partials).items():
                out.setdefault(cohort, {})[arm] = t
            self._cohort_cache = out
        return self._cohort_cache
