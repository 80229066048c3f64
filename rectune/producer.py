"""Publishing events to `rectune.events` in envelopes (thin aiokafka adapter)."""

from __future__ import annotations

from collections.abc import Iterable

from aiokafka import AIOKafkaProducer

from schemas.encode import encode_batch
from schemas.events import Event
from schemas.topics import EVENTS
from simulator.synthetic import pack


async def publish_events(
    bootstrap: str,
    events: Iterable[Event],
    *,
    source_id: str,
    item_events_per_message: int = 100,
    topic: str = EVENTS.name,
) -> tuple[int, int]:
    """Pack events into envelopes and publish them; returns (messages, events) sent.

    Envelopes are keyed by source id and sequence so they spread over the
    partitions; each partition still receives its envelopes in send order.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_request_size=2_097_152)
    await producer.start()
    try:
        messages = 0
        count = 0
        futures = []
        for seq, envelope in enumerate(pack(list(events), item_events_per_message)):
            payload = encode_batch(source_id, seq, envelope)
            futures.append(await producer.send(topic, payload, key=f"{source_id}:{seq}".encode()))
            messages += 1
            count += len(envelope)
        for future in futures:
            await future
        return messages, count
    finally:
        await producer.stop()
