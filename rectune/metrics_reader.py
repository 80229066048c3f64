"""Read closed metric windows back from `rectune.metrics` and merge them per arm.

Used by `rectune metrics`, the demo's progress view and the tests.  Partials
are deduplicated by `partial_id` (a partial republished after a crash replaces
its earlier copy), then added.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
from aiokafka import TopicPartition

from rectune.admin import partition_count
from rectune.kafka_read import read_to_end
from schemas.metrics import ArmTotals, MetricWindow, latency_quantile, merge_by_arm
from schemas.topics import METRICS

_decoder = msgspec.json.Decoder(MetricWindow)


async def read_partials(bootstrap: str, *, topic: str = METRICS.name, settle_ms: int = 500) -> dict[str, MetricWindow]:
    """Every partial on the metrics topic, deduplicated by id (read to the end, see `rectune.kafka_read`)."""
    count = await partition_count(bootstrap, topic)
    if count == 0:
        return {}
    tps = [TopicPartition(topic, p) for p in range(count)]
    out: dict[str, MetricWindow] = {}
    for record in await read_to_end(bootstrap, tps, settle_ms=settle_ms):
        if record.value is not None:
            window = _decoder.decode(record.value)
            out[window.partial_id] = window
    return out


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
