"""`StreamIO` over Kafka: checkpoints in the state topic, records via the Faust producer.

Thin adapter: no aggregation logic lives here.  Checkpoints go to
`rectune.streams.state.<app_id>`, partition = source partition, one record per
checkpoint, each awaited on its own so it forms its own record batch.
Reading the latest one does not trust ListOffsets(LATEST) alone (the embedded
broker can report less than the high watermark): it reads on from there until
a fetch comes back empty.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.aggregate import OutRecord

log = logging.getLogger(__name__)


async def read_latest(bootstrap: str, topic: str, partition: int, *, settle_ms: int = 300) -> bytes | None:
    """Value of the last record in one partition, or None if it is empty.

    Used to restore a checkpoint on assignment; also by `rectune` tools.
    """
    tp = TopicPartition(topic, partition)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        if end == 0:
            # Still poll once: the embedded broker may report 0 for a non-empty log.
            await consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, end - 1)
        latest: bytes | None = None
        # Done when the position reached the reported end AND a fetch came back
        # empty (the reported end can be short on the embedded broker; the first
        # fetch can be slow on a real one).
        while True:
            batch = await consumer.getmany(tp, timeout_ms=settle_ms, max_records=10_000)
            records = batch.get(tp, [])
            if records:
                latest = records[-1].value
            elif await consumer.position(tp) >= end:
                return latest
    finally:
        await consumer.stop()


class FaustStreamIO:
    """Implements `streams.processor.StreamIO` with a Faust app's producer and consumer."""

    def __init__(
        self, app: Any, bootstrap: str, source_topic: str, state_topic: str, tp_factory: Callable[[str, int], Any]
    ) -> None:
        self._app = app
        self._bootstrap = bootstrap
        self._source = source_topic
        self._state = state_topic
        self._tp = tp_factory

    async def load_checkpoint(self, partition: int) -> bytes | None:
        return await read_latest(self._bootstrap, self._state, partition)

    async def write_checkpoint(self, partition: int, data: bytes) -> None:
        producer = self._app.producer
        await producer.send_and_wait(self._state, str(partition).encode(), data, partition, None, None)

    async def publish(self, records: Iterable[OutRecord]) -> None:
        producer = self._app.producer
        futures = [await producer.send(r.topic, r.key, r.value, None, None, None) for r in records]
        for future in futures:
            await future

    async def commit(self, partition: int, next_offset: int) -> None:
        consumer = self._app.consumer
        try:
            # The events topic is declared with acks=False, so Faust never commits it
            # itself: the offset only moves once a checkpoint holding it is durable.
            await consumer._commit({self._tp(self._source, partition): next_offset})
        except Exception:  # a failed commit only means more replay, never loss
            log.warning("commit of %s[%d]=%d failed", self._source, partition, next_offset, exc_info=True)

    async def seek(self, partition: int, offset: int) -> None:
        await self._app.consumer.seek(self._tp(self._source, partition), offset)

    def owns(self, partition: int) -> bool:
        return any(tp.topic == self._source and tp.partition == partition for tp in self._app.consumer.assignment())
