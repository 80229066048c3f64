"""Subprocess entry points of the pipeline benchmark's comparison variants.

`bench/pipeline.py` runs each variant in its own process, one at a time, and
measures it from outside (consumer-group committed offsets, process RSS), so
these programs only have to consume and commit:

- ``ceiling``: a bare aiokafka consumer (`getmany(max_records=10000)`), orjson
  per message and numpy per fetched batch: the same per-(window, arm, bucket)
  sums as the stream worker, without Faust, strict validation or checkpoints.
  What Python can do on this data when nothing but the work itself is paid.
- ``naive``: the baseline the issue names: a plain Faust agent over messages
  holding one event each, iterating the stream and updating a Faust `Table`
  (memory store, changelog on) once per event.
- ``direct`` (informational, not in the issue's JSON): the library's own
  `StreamProcessor` (strict decoding, aggregation, checkpoint + outbox +
  commit protocol, same settings as the worker) driven by a bare aiokafka
  `getmany` loop instead of a Faust agent: what the worker would do without
  Faust's per-message delivery.  Bench-only I/O; its checkpoints go to their
  own state topic so it never reads the real worker's.

Run as ``python bench/_pipeline_variants.py {ceiling,naive,direct} --bootstrap H:P ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import zlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson

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


async def run_ceiling(bootstrap: str, topic: str, group: str, ends: dict[int, int]) -> dict[str, Any]:
    """Consume `topic` until every partition reaches `ends`, committing every 0.2 s.

    Measures nothing itself beyond a summary: the parent times the committed
    offsets of `group`, exactly as it does for the Faust variants.
    """
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    agg = CeilingAggregate()
    positions: dict[int, int] = {}
    messages = 0
    started = time.monotonic()
    first_record_s: float | None = None
    last_commit = started
    loads = orjson.loads
    add = agg.add
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
            for tp, records in batch.items():
                for record in records:
                    add(loads(record.value))
                messages += len(records)
                positions[tp.partition] = records[-1].offset + 1
            if batch and first_record_s is None:
                first_record_s = time.monotonic()
            agg.fold()
            now = time.monotonic()
            done = all(positions.get(p, 0) >= end for p, end in ends.items())
            if done or now - last_commit >= COMMIT_EVERY_S:
                await consumer.commit()
                last_commit = now
            if done:
                break
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


class DirectIO:
    """`streams.processor.StreamIO` over a bare aiokafka consumer and producer (bench only)."""

    def __init__(self, bootstrap: str, topic: str, state_topic: str, consumer: Any, producer: Any) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._state = state_topic
        self._consumer = consumer
        self._producer = producer

    async def load_checkpoint(self, partition: int) -> bytes | None:
        """Latest checkpoint of a partition (the worker's own reader)."""
        from streams.kafka_io import read_latest

        return await read_latest(self._bootstrap, self._state, partition)

    async def write_checkpoint(self, partition: int, data: bytes) -> None:
        """One state record, acknowledged before returning."""
        await self._producer.send_and_wait(self._state, data, key=str(partition).encode(), partition=partition)

    async def publish(self, records: Any) -> None:
        """Send the outbox and wait for every acknowledgement."""
        futures = [await self._producer.send(r.topic, r.value, key=r.key) for r in records]
        for future in futures:
            await future

    async def commit(self, partition: int, next_offset: int) -> None:
        """Commit the group's offset of one source partition."""
        from aiokafka import TopicPartition

        await self._consumer.commit({TopicPartition(self._topic, partition): next_offset})

    async def seek(self, partition: int, offset: int) -> None:
        """Move the read position of one source partition."""
        from aiokafka import TopicPartition

        self._consumer.seek(TopicPartition(self._topic, partition), offset)

    def owns(self, partition: int) -> bool:
        """Whether the consumer is assigned this source partition."""
        return any(tp.topic == self._topic and tp.partition == partition for tp in self._consumer.assignment())


async def run_direct(
    bootstrap: str, topic: str, group: str, state_topic: str, partitions: int, checkpoint_interval_s: float
) -> None:
    """Drive `StreamProcessor` from `getmany(max_records=1000)` until killed; checkpoints on a timer.

    Same window spec and checkpoint interval as the benchmarked worker; the
    parent times it through `group`'s committed offsets like every variant.
    """
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.abc import ConsumerRebalanceListener
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from streams.processor import StreamConfig

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if state_topic not in set(await admin.list_topics()):
            await admin.create_topics([NewTopic(state_topic, partitions, 1)])
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=1, max_request_size=8 * 1024 * 1024)
    await producer.start()
    processor = StreamConfig(topic=topic, checkpoint_interval_s=checkpoint_interval_s).build(
        DirectIO(bootstrap, topic, state_topic, consumer, producer)
    )
    loop = asyncio.get_running_loop()

    class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
        async def on_partitions_revoked(self, revoked: Any) -> None:
            await processor.revoke([tp.partition for tp in revoked])

        async def on_partitions_assigned(self, assigned: Any) -> None:
            await processor.assign([tp.partition for tp in assigned], loop.time())

    async def ticker() -> None:
        while True:
            await asyncio.sleep(checkpoint_interval_s)
            await processor.tick(loop.time())

    consumer.subscribe([topic], listener=Listener())
    await consumer.start()
    timer = asyncio.create_task(ticker())
    on_message = processor.on_message
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=500, max_records=1000)
            now = loop.time()
            for tp, records in batch.items():
                for r in records:
                    await on_message(tp.partition, r.offset, r.value, r.timestamp, now)
    finally:
        timer.cancel()
        await consumer.stop()
        await producer.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of the variant processes (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="_pipeline_variants")
    sub = parser.add_subparsers(dest="variant", required=True)
    p = sub.add_parser("ceiling")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--ends", required=True, help='JSON {"partition": end_offset}')
    p = sub.add_parser("naive")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--app-id", required=True)
    p.add_argument("--partitions", type=int, required=True)
    p.add_argument("--commit-interval-s", type=float, default=COMMIT_EVERY_S)
    p.add_argument("--session-timeout-s", type=float, default=10.0)
    p = sub.add_parser("direct")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--state-topic", required=True)
    p.add_argument("--partitions", type=int, required=True)
    p.add_argument("--checkpoint-interval-s", type=float, default=COMMIT_EVERY_S)
    args = parser.parse_args(argv)
    if args.variant == "direct":
        asyncio.run(
            run_direct(
                args.bootstrap, args.topic, args.group, args.state_topic, args.partitions, args.checkpoint_interval_s
            )
        )
    elif args.variant == "ceiling":
        ends = {int(k): int(v) for k, v in json.loads(args.ends).items()}
        summary = asyncio.run(run_ceiling(args.bootstrap, args.topic, args.group, ends))
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
