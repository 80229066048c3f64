"""Read closed metric windows back from `rectune.metrics` and merge them per arm.

Used by `rectune metrics`, the demo's progress view and the tests.  Partials
are deduplicated by `partial_id` (a partial republished after a crash replaces
its earlier copy), then added.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition

from rectune.admin import partition_count
from schemas.metrics import ArmTotals, MetricWindow, latency_quantile, merge_by_arm
from schemas.topics import METRICS

_decoder = msgspec.json.Decoder(MetricWindow)


async def read_partials(bootstrap: str, *, topic: str = METRICS.name, settle_ms: int = 500) -> dict[str, MetricWindow]:
    """Every partial on the metrics topic, deduplicated by id (reads until a fetch is empty)."""
    count = await partition_count(bootstrap, topic)
    if count == 0:
        return {}
    tps = [TopicPartition(topic, p) for p in range(count)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: dict[str, MetricWindow] = {}
        # Read until every partition reached its end offset AND a fetch came back
        # empty: the first alone can stop short on the embedded broker, whose
        # ListOffsets(LATEST) may be below the high watermark; the second alone can
        # stop before the first fetch of a slow broker returns.
        while True:
            batch = await consumer.getmany(*tps, timeout_ms=settle_ms, max_records=10_000)
            for records in batch.values():
                for record in records:
                    if record.value is None:
                        continue
                    window = _decoder.decode(record.value)
                    out[window.partial_id] = window
            if not batch and all([await _position(consumer, tp) >= ends[tp] for tp in tps]):
                break
        return out
    finally:
        await consumer.stop()


async def _position(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int:
    position: int = await consumer.position(tp)
    return position


def totals_json(totals: dict[tuple[str, str], ArmTotals]) -> list[dict[str, Any]]:
    """Per-arm totals as plain JSON-able dicts (what `rectune metrics --json` prints)."""

    def clean(x: float) -> float | None:
        return None if math.isnan(x) else round(x, 10)

    rows = []
    for (surface, arm), t in sorted(totals.items()):
        rows.append(
            {
                "surface": surface,
                "arm_id": arm,
                "requests": int(t.total("requests")),
                "impressions": int(t.total("impressions")),
                "clicks": int(t.total("clicks")),
                "conversions": int(t.total("conversions")),
                "revenue": round(t.total("revenue"), 6),
                "ctr": clean(t.ratio("clicks", "impressions")),
                "cvr": clean(t.ratio("conversions", "impressions")),
                "latency_p50_ms": clean(latency_quantile(t.latency_hist, 0.5)),
                "latency_p99_ms": clean(latency_quantile(t.latency_hist, 0.99)),
                "mean_distinct_categories": clean(t.ratio("distinct_categories", "requests")),
                "near_duplicate_rate": clean(t.ratio("near_duplicates", "impressions")),
                "long_tail_share": clean(t.ratio("long_tail", "impressions")),
                "fresh_share": clean(t.ratio("fresh", "impressions")),
                "item_events": t.item_events,
                "late_item_events": t.late_item_events,
                "windows": t.windows,
            }
        )
    return rows


async def read_totals(bootstrap: str) -> dict[tuple[str, str], ArmTotals]:
    """Merged per-(surface, arm) totals of everything on the metrics topic."""
    return merge_by_arm(await read_partials(bootstrap))
