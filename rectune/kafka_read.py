"""Reading whole partitions from the start to their end (thin aiokafka I/O).

Shared by `rectune metrics` (every metrics partition) and the config-log tools
(partition 0 of `rectune.config`).  "The end" is judged twice: the position
must have reached the reported end offset AND a fetch must have come back
empty.  The first alone can stop short on the embedded broker, whose
ListOffsets(LATEST) may be below the high watermark; the second alone can stop
before the first fetch of a slow broker returns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition


async def read_to_end(
    bootstrap: str,
    tps: Sequence[TopicPartition],
    *,
    settle_ms: int,
    min_ends: Mapping[TopicPartition, int] | None = None,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of `tps` from the beginning, in offset order per partition.

    `min_ends` makes it read on until at least those offsets (a record the
    caller just wrote).  Callers wrap it in their own timeout and errors.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        consumer.assign(list(tps))
        await consumer.seek_to_beginning(*tps)
        ends = dict(await consumer.end_offsets(list(tps)))
        for tp, end in (min_ends or {}).items():
            ends[tp] = max(ends.get(tp, 0), end)
        out: list[ConsumerRecord[bytes, bytes]] = []
        while True:
            batch = await consumer.getmany(*tps, timeout_ms=settle_ms, max_records=10_000)
            for records in batch.values():
                out.extend(records)
            if not batch and all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                return out
    finally:
        await consumer.stop()
