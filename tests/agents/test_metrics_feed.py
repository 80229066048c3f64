"""`MetricsFeed` and `AlertsFeed` over `TopicReader`: refusals are counted and logged once per poll with where and why;
cohort totals; the arms a serving breaker opened.

No broker: `AIOKafkaConsumer` is replaced by an in-memory log of
(partition, offset, value) records that `getmany` hands out in one batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import msgspec
import numpy as np
import pytest
from aiokafka import TopicPartition

from agents import topic_reader
from agents.alerts_feed import AlertsFeed
from agents.metrics_feed import MetricsFeed
from schemas.alerts import Alert, encode_alert
from schemas.metrics import BUCKET_FIELDS, FIELD_INDEX, N_FIELDS, MetricWindow, sparse_window_arrays

TOPIC = "rectune.metrics"


def window(surface: str, index: int, cohort: str = "all") -> bytes:
    sums = np.zeros((N_FIELDS, 4))
    sums[FIELD_INDEX["requests"]] = 10.0
    ids, packed, bins, counts = sparse_window_arrays(sums, np.zeros(122, np.int64))
    return msgspec.json.encode(
        MetricWindow(
            schema_version=1,
            partial_id=f"{surface}:arm0:{cohort}:{index}",
            source_topic="rectune.events",
            source_partition=0,
            window_start_ms=1_767_225_600_000 + 60_000 * index,
            window_end_ms=1_767_225_660_000 + 60_000 * index,
            surface=surface,
            arm_id="arm0",
            cohort=cohort,
            config_versions=(1,),
            buckets=4,
            fields=BUCKET_FIELDS,
            bucket_ids=ids,
            sums=packed,
            latency_bins=bins,
            latency_counts=counts,
            item_events=0,
        )
    )


@dataclass(frozen=True, slots=True)
class Record:
    offset: int
    value: bytes | None


class FakeConsumer:
    """The part of AIOKafkaConsumer that `MetricsFeed` uses, over the class-level `log` (partition -> values)."""

    log: ClassVar[dict[int, list[bytes | None]]] = {}

    def __init__(self, **_: object) -> None:
        self._assigned: list[TopicPartition] = []
        self._positions: dict[TopicPartition, int] = {}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def topics(self) -> set[str]:
        return {TOPIC}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(self.log)

    def assign(self, tps: list[TopicPartition]) -> None:
        self._assigned = list(tps)

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self._positions[tp] = 0

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: len(self.log[tp.partition]) for tp in tps}

    async def position(self, tp: TopicPartition) -> int:
        return self._positions[tp]

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Record]]:
        batch: dict[TopicPartition, list[Record]] = {}
        for tp in self._assigned:
            values = self.log[tp.partition]
            start = self._positions[tp]
            if start < len(values):
                batch[tp] = [Record(offset, values[offset]) for offset in range(start, len(values))]
                self._positions[tp] = len(values)
        return batch


@pytest.fixture
def fake_log(monkeypatch: pytest.MonkeyPatch) -> dict[int, list[bytes | None]]:
    log: dict[int, list[bytes | None]] = {0: [], 1: [], 2: []}
    monkeypatch.setattr(FakeConsumer, "log", log)
    monkeypatch.setattr(topic_reader, "AIOKafkaConsumer", FakeConsumer)
    return log


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "agents.topic_reader" and r.levelno == logging.WARNING]


async def test_refused_records_are_counted_and_warned_once_per_poll_naming_the_first(
    fake_log: dict[int, list[bytes | None]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agents.topic_reader")
    fake_log[0] += [window("home", 0), window("search", 1)]
    fake_log[1] += [window("home", 2), b"{not a window", b'{"schema_version":1}']
    fake_log[2] += [None]
    feed = MetricsFeed("unused:9092", "home")
    await feed.start()
    try:
        assert await feed.poll() == 2
        assert feed.refused == 3
        (first,) = warnings_of(caplog)
        assert "refused 3 record(s)" in first and "(3 in all)" in first
        assert f"first at {TOPIC}[1]@1: JSON is malformed" in first
        debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
        assert any(f"{TOPIC}[1]@2 refused: Object missing required field" in m for m in debug)
        assert any(f"{TOPIC}[2]@0 refused: a null record (tombstone)" in m for m in debug)

        caplog.clear()
        fake_log[0].append(b"\xff")
        fake_log[2].append(window("home", 3))
        assert await feed.poll() == 1
        assert feed.refused == 4
        (second,) = warnings_of(caplog)
        assert "refused 1 record(s)" in second and "(4 in all)" in second
        assert f"first at {TOPIC}[0]@2: " in second

        caplog.clear()
        assert await feed.poll() == 0
        assert feed.refused == 4
        assert warnings_of(caplog) == []
        assert sorted(await feed.totals()) == ["arm0"]
    finally:
        await feed.stop()


async def test_cohort_totals_split_the_arms_totals_by_cohort_and_follow_new_windows(
    fake_log: dict[int, list[bytes | None]],
) -> None:
    fake_log[0] += [window("home", 0, "new"), window("home", 1, "returning"), window("search", 0, "new")]
    fake_log[1] += [window("home", 2, "new")]
    feed = MetricsFeed("unused:9092", "home")
    await feed.start()
    try:
        await feed.poll()
        cohorts = await feed.cohort_totals()
        assert sorted(cohorts) == ["new", "returning"]
        assert cohorts["new"]["arm0"].total("requests") == 80.0  # two windows of 4 buckets x 10 requests
        assert cohorts["returning"]["arm0"].total("requests") == 40.0
        assert (await feed.totals())["arm0"].total("requests") == 120.0, "the pooled read is their sum"
        fake_log[2].append(window("home", 3, "returning"))
        await feed.poll()
        assert (await feed.cohort_totals())["returning"]["arm0"].total("requests") == 80.0, "no stale cache"
    finally:
        await feed.stop()


def alert(kind: str, severity: str, arm_id: str | None) -> bytes:
    return encode_alert(
        Alert(
            schema_version=1,
            kind=kind,  # type: ignore[arg-type]
            severity=severity,  # type: ignore[arg-type]
            source="sidecar-1",
            message="m",
            at_ms=1_767_225_600_000,
            arm_id=arm_id,
        )
    )


async def test_the_alerts_feed_reports_only_arms_a_serving_breaker_opened(
    fake_log: dict[int, list[bytes | None]], caplog: pytest.LogCaptureFixture
) -> None:
    fake_log[0] += [
        alert("slo_breach", "critical", "exp-1.t1"),
        alert("slo_breach", "warning", "exp-1.c"),  # control breaking: a warning, nothing cut back
        alert("guardrail_breach", "warning", "exp-1.t2"),  # the agents' own rollback alert
        alert("slo_breach", "critical", None),
    ]
    fake_log[1] += [b"{not an alert", None]
    feed = AlertsFeed("unused:9092")
    await feed.start()
    try:
        assert await feed.poll() == 1
        assert await feed.opened_arms() == frozenset({"exp-1.t1"})
        assert feed.refused == 2
        assert any("that are no alert" in m for m in warnings_of(caplog))
        fake_log[2].append(alert("breaker_reset", "info", "exp-1.t1"))
        fake_log[2].append(alert("slo_breach", "critical", "exp-2.t3"))
        assert await feed.poll() == 1
        assert await feed.opened_arms() == frozenset({"exp-1.t1", "exp-2.t3"}), "a reset does not undo a rollback"
    finally:
        await feed.stop()
