"""Subprocess entry points of the pipeline benchmark's comparison variants.

`bench/pipeline.py` runs each variant in its own process(es), one variant at a
time, and measures it from outside (consumer-group committed offsets, process
RSS), so these programs only have to consume and commit:

- ``ceiling``: a bare aiokafka consumer (`getmany(max_records=10000)`), orjson
  per message and numpy per fetched batch: the same per-(window, arm, bucket)
  sums as the stream worker, without Faust, strict validation or checkpoints.
  What Python can do on this data when nothing but the work itself is paid.
  One or N processes in one consumer group (like the worker scaled out); each
  runs until SIGTERM, logs ``partition N assigned`` on every assignment and
  prints a JSON summary (messages, item events) as its last line.
- ``naive``: the baseline the issue names: a plain Faust agent over messages
  holding one event each, iterating the stream and updating a Faust `Table`
  (memory store, changelog on) once per event.
(The ``direct`` row of the benchmark is the real worker with
``RECTUNE_ENGINE=direct``, started by ``bench/pipeline.py`` itself.)

Run as ``python bench/_pipeline_variants.py {ceiling,naive} --bootstrap H:P ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
import zlib
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

#: Must match the worker's defaults (rectune.settings / streams.windows).
BUCKETS: Final = 64
WINDOW_MS: Final = 60_000
#: Commit cadence of the ceiling consumer: the same as the bench's worker checkpoints.
COMMIT_EVERY_S: Final = 0.2
#: Row layout: bucket, then requests, impressions, clicks, conversions, revenue, revenue_sq,
#: latency, latency_sq, distinct categories, near duplicates, long tail, fresh (as the worker).
N_VALUES: Final = 12


class CeilingAggregate:
    """Per-(window, surface, arm, cohort) × bucket sums from parsed JSON events.

    Mirrors `streams.aggregate.PartitionAggregator.add_message` + `fold` field
    for field (same rows, same numpy fold per batch) so the ceiling does the
    same work as the worker minus Faust, strict validation and checkpoints.
    """

    def __init__(self) -> None:
        self.rows: list[tuple[float, ...]] = []
        self.keys: list[tuple[int, str, str, str]] = []
        self.bucket_cache: dict[str, int] = {}
        self.groups: dict[tuple[int, str, str, str], npt.NDArray[np.float64]] = {}
        self.item_events = 0

    def add(self, doc: dict[str, Any]) -> None:
        """Turn one decoded message (envelope or bare event) into pending rows."""
        events = doc["events"] if doc["type"] == "batch" else (doc,)
        rows = self.rows
        keys = self.keys
        cache = self.bucket_cache
        items_total = 0
        for e in events:
            t = e["event_time_ms"]
            user = e["user_id"]
            bucket = cache.get(user)
            if bucket is None:
                bucket = zlib.crc32(user.encode()) % BUCKETS
                cache[user] = bucket
            kind = e["type"]
            if kind == "impression":
                items = e["items"]
                n = len(items)
                styles = {it.get("style_id") or it["item_id"] for it in items}
                cats = {it["category"] for it in items}
                tail = sum(1 for it in items if it.get("long_tail"))
                fresh = sum(1 for it in items if it.get("fresh"))
                lat = e["ranker_latency_ms"]
                rows.append(
                    (bucket, 1.0, n, 0.0, 0.0, 0.0, 0.0, lat, lat * lat, len(cats), n - len(styles), tail, fresh)
                )
            elif kind == "click":
                n = 1
                rows.append((bucket, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0))
            else:
                n = 1
                rev = e["revenue"]
                rows.append((bucket, 0.0, 0.0, 0.0, 1.0, rev, rev * rev, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0))
            keys.append((t - t % WINDOW_MS, e["surface"], e["arm_id"], e["cohort"]))
            items_total += n
        self.item_events += items_total

    def fold(self) -> None:
        """Add the pending rows into the groups' sums with one bincount per field."""
        if not self.rows:
            return
        index: dict[tuple[int, str, str, str], int] = {}
        gids = np.fromiter((index.setdefault(k, len(index)) for k in self.keys), dtype=np.int64, count=len(self.keys))
        table = np.asarray(self.rows, dtype=np.float64)
        n_groups = len(index)
        cell = gids * BUCKETS + table[:, 0].astype(np.int64)
        sums = np.empty((n_groups, N_VALUES, BUCKETS), dtype=np.float64)
        for f in range(N_VALUES):
            sums[:, f, :] = np.bincount(cell, weights=table[:, 1 + f], minlength=n_groups * BUCKETS).reshape(
                n_groups, BUCKETS
            )
        for key, gid in index.items():
            acc = self.groups.get(key)
            if acc is None:
                self.groups[key] = sums[gid].copy()
            else:
                acc += sums[gid]
        self.rows.clear()
        self.keys.clear()


class _CommitOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Commits what was consumed before partitions move, and logs every assignment (the bench parses it)."""

    def __init__(self, consumer: AIOKafkaConsumer, agg: CeilingAggregate) -> None:
        self._consumer = consumer
        self._agg = agg

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self._agg.fold()
        if revoked:
            await self._consumer.commit()

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        for tp in sorted(assigned):
            print(f"partition {tp.partition} assigned", flush=True)


async def run_ceiling(bootstrap: str, topic: str, group: str) -> dict[str, Any]:
    """Consume `topic` in consumer group `group` until SIGTERM/SIGINT, committing every 0.2 s.

    Called by `bench/pipeline.py`, which starts one or N of these in one group
    and stops them once the group's committed offsets reach the ends of the
    envelopes: the parent times the committed offsets, exactly as it does for
    the Faust variants.  Revoked partitions are committed first (like the
    worker's revoke), so a rebalance re-reads nothing.  Returns a summary.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    agg = CeilingAggregate()
    consumer.subscribe([topic], listener=_CommitOnRevoke(consumer, agg))
    await consumer.start()
    messages = 0
    started = time.monotonic()
    first_record_s: float | None = None
    last_commit = started
    loads = orjson.loads
    add = agg.add
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
            for records in batch.values():
                for record in records:
                    add(loads(record.value))
                messages += len(records)
            if batch and first_record_s is None:
                first_record_s = time.monotonic()
            agg.fold()
            now = time.monotonic()
            if now - last_commit >= COMMIT_EVERY_S:
                await consumer.commit()
                last_commit = now
        await consumer.commit()
    finally:
        await consumer.stop()
    total_impressions = sum(float(s[1].sum()) for s in agg.groups.values())
    return {
        "messages": messages,
        "item_events": agg.item_events,
        "impressions": total_impressions,
        "groups": len(agg.groups),
        "internal_s": time.monotonic() - (first_record_s or started),
    }


def run_naive(
    bootstrap: str, app_id: str, topic: str, partitions: int, *, commit_interval_s: float, session_timeout_s: float
) -> None:
    """Run the naive Faust app until killed: one Table update per event.

    The table key is arm × user bucket; the update adds the event's item-level
    count (1 for an item-level event).  Offsets are committed by Faust itself
    every `commit_interval_s` (the bench uses the worker's checkpoint
    interval) so the parent can time it like the other variants.
    """
    import faust

    from schemas.decode import decode_message
    from schemas.events import item_events
    from schemas.metrics import user_bucket

    app = faust.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        web_enabled=False,
        topic_partitions=partitions,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=commit_interval_s,
        # As the worker's: tansu delays a new group's first join by about half of it.
        broker_session_timeout=session_timeout_s,
        broker_heartbeat_interval=min(3.0, session_timeout_s / 3),
    )
    source = app.topic(
        topic, value_type=bytes, key_type=bytes, value_serializer="raw", key_serializer="raw", partitions=partitions
    )
    counts = app.Table("counts", default=int, partitions=partitions)

    @app.agent(source, name="naive-count")
    async def count(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        async for value in stream:
            for event in decode_message(value).events:
                counts[f"{event.arm_id}|{user_bucket(event.user_id, BUCKETS)}"] += item_events(event)
        yield None

    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    worker.execute_from_commandline()


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of the variant processes (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="_pipeline_variants")
    sub = parser.add_subparsers(dest="variant", required=True)
    p = sub.add_parser("ceiling")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--group", required=True)
    p = sub.add_parser("naive")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--app-id", required=True)
    p.add_argument("--partitions", type=int, required=True)
    p.add_argument("--commit-interval-s", type=float, default=COMMIT_EVERY_S)
    p.add_argument("--session-timeout-s", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.variant == "ceiling":
        summary = asyncio.run(run_ceiling(args.bootstrap, args.topic, args.group))
        print(json.dumps(summary), flush=True)
    else:
        run_naive(
            args.bootstrap,
            args.app_id,
            args.topic,
            args.partitions,
            commit_interval_s=args.commit_interval_s,
            session_timeout_s=args.session_timeout_s,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
