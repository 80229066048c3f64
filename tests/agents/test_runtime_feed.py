"""`MetricsFeed` on a real broker (tansu): one poll reads the whole backlog; republished partials replace, not add."""

from __future__ import annotations

import msgspec
import numpy as np
from aiokafka import AIOKafkaProducer

from agents.metrics_feed import MetricsFeed
from rectune.admin import ensure_topics
from schemas.metrics import BUCKET_FIELDS, FIELD_INDEX, N_FIELDS, MetricWindow, sparse_window_arrays
from schemas.topics import METRICS


def partial(surface: str, arm_id: str, index: int, requests: float) -> bytes:
    sums = np.zeros((N_FIELDS, 4))
    sums[FIELD_INDEX["requests"]] = requests
    sums[FIELD_INDEX["impressions"]] = 12.0 * requests
    ids, packed, bins, counts = sparse_window_arrays(sums, np.zeros(122, np.int64))
    return msgspec.json.encode(
        MetricWindow(
            schema_version=1,
            partial_id=f"{surface}:{arm_id}:{index}",
            source_topic="rectune.events",
            source_partition=index % 8,
            window_start_ms=1_767_225_600_000 + 60_000 * index,
            window_end_ms=1_767_225_660_000 + 60_000 * index,
            surface=surface,
            arm_id=arm_id,
            cohort="all",
            config_versions=(1,),
            buckets=4,
            fields=BUCKET_FIELDS,
            bucket_ids=ids,
            sums=packed,
            latency_bins=bins,
            latency_counts=counts,
            item_events=int(48 * requests),
        )
    )


async def test_one_poll_reads_the_whole_backlog_exactly(tansu_broker: str) -> None:
    await ensure_topics(tansu_broker, [METRICS])
    producer = AIOKafkaProducer(bootstrap_servers=tansu_broker, linger_ms=5)
    await producer.start()
    try:
        sends = []
        for i in range(400):
            sends.append(await producer.send(METRICS.name, partial("home", f"arm{i % 3}", i, 10.0), partition=i % 4))
            sends.append(await producer.send(METRICS.name, partial("search", "arm0", i, 99.0), partition=i % 4))
        sends.append(await producer.send(METRICS.name, partial("home", "arm0", 0, 10.0), partition=3))  # republished
        sends.append(await producer.send(METRICS.name, b"{not a window", partition=1))
        for fut in sends:
            await fut
    finally:
        await producer.stop()
    feed = MetricsFeed(tansu_broker, "home")
    await feed.start()
    try:
        assert await feed.poll(timeout_ms=20) == 401
        totals = await feed.totals()
        assert sorted(totals) == ["arm0", "arm1", "arm2"]
        assert [totals[a].total("requests") for a in ("arm0", "arm1", "arm2")] == [134 * 40.0, 133 * 40.0, 133 * 40.0]
        assert [totals[a].windows for a in ("arm0", "arm1", "arm2")] == [134, 133, 133]
        assert feed.refused == 1
        assert await feed.poll(timeout_ms=20) == 0
    finally:
        await feed.stop()
