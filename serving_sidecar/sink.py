"""The sidecar's outgoing streams: events to `rectune.events`, alerts to `rectune.alerts`.

`EventSink.emit(event)` is what the ranker calls on its hot path: it never
blocks and never raises for I/O reasons.  It appends to a bounded in-memory
buffer; a background asyncio task packs the buffered events into envelopes of
about `max_item_events` item-level events (`schemas.encode.encode_batch`),
stamps each with this replica's `source_id` and a monotonically increasing
`seq`, and produces them with aiokafka.  `KafkaAlertSink` does the same for
alerts, one message per alert.

Back-pressure policy (never block the ranker): when the buffer is full, the
*oldest* buffered item is dropped and counted (`stats().dropped`).  Old events
are the least useful ones: past the stream's allowed lateness their windows
are closed anyway, while recent events feed the live tests and the SLO
breaker.  Envelopes already built are kept (at most `max_in_flight` of them)
and retried with the *same* seq until the broker acknowledges them, so a
consumer can recognise a retried envelope by `(source_id, seq)`.  Delivery is
at-least-once while the sink runs; what is still buffered when `close()` gives
up is counted as `lost`.

Hosting: an asyncio ranker calls `await sink.start()` / `await sink.drain()` /
`await sink.stop()` and the task runs in its loop; a sync ranker calls
`sink.start_in_thread()` / `sink.flush()` / `sink.close()` and the task runs in
a private event loop on a daemon thread (`LoopThread`, which several sidecar
clients may share).  `emit` is safe from any thread in both modes.

Imports only `schemas` (and aiokafka): the sidecar never imports `streams`,
`agents` or `simulator`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, TypeVar

from schemas.alerts import Alert, encode_alert
from schemas.encode import encode_batch
from schemas.events import Event, item_events
from schemas.limits import MAX_EVENTS_PER_BATCH
from schemas.replay import ReplayRecord, encode_replay
from schemas.topics import ALERTS, EVENTS, REPLAY
from serving_sidecar.errors import SidecarError
from serving_sidecar.publisher import BackgroundPublisher, SinkStats

T = TypeVar("T")

__all__ = ["EventSink", "KafkaAlertSink", "KafkaReplaySink", "SinkStats", "pack_events"]


class EventSink(BackgroundPublisher[Event]):
    """Publishes the ranker's events to `rectune.events` in envelopes, in the background.

    Built once per ranker replica by the composition root; `source_id` names
    the replica (envelopes carry it with their `seq`).  `max_item_events` is
    the envelope size in item-level events (an impression of 12 items counts
    12); `linger_ms` bounds how long an event waits for its envelope to fill.
    `max_buffered_events` bounds memory while the broker is slow or gone
    (drop-oldest beyond it).
    """

    def __init__(
        self,
        bootstrap: str,
        source_id: str,
        topic: str = EVENTS.name,
        *,
        max_item_events: int = 100,
        linger_ms: float = 5.0,
        max_buffered_events: int = 100_000,
        max_in_flight: int = 32,
        start_seq: int | None = None,
        request_timeout_ms: int = 10_000,
    ) -> None:
        if not 1 <= max_item_events <= MAX_EVENTS_PER_BATCH:
            msg = f"EventSink: max_item_events must be in [1, {MAX_EVENTS_PER_BATCH}], got {max_item_events}"
            raise SidecarError(msg)
        super().__init__(
            bootstrap,
            source_id,
            topic,
            max_buffered=max_buffered_events,
            linger_ms=linger_ms,
            max_in_flight=max_in_flight,
            wake_at=max_item_events,
            start_seq=start_seq,
            request_timeout_ms=request_timeout_ms,
        )
        self.max_item_events = max_item_events

    def _weight(self, item: Event) -> int:
        return item_events(item)

    def _group(self, items: list[Event]) -> list[list[Event]]:
        return pack_events(items, self.max_item_events)

    def _encode(self, group: list[Event], seq: int) -> tuple[bytes, bytes]:
        # Keyed by source and seq so envelopes spread over the partitions.
        return f"{self.source_id}:{seq}".encode(), encode_batch(self.source_id, seq, group)


def pack_events(events: Sequence[Event], max_item_events: int) -> list[list[Event]]:
    """Group events, in order, into envelopes of about `max_item_events` item-level events.

    An envelope closes as soon as it reaches the target, so it may exceed it
    by at most one impression; it never holds more than MAX_EVENTS_PER_BATCH events.
    """
    out: list[list[Event]] = []
    current: list[Event] = []
    count = 0
    for event in events:
        current.append(event)
        count += item_events(event)
        if count >= max_item_events or len(current) >= MAX_EVENTS_PER_BATCH:
            out.append(current)
            current, count = [], 0
    if current:
        out.append(current)
    return out


class _PerItemSink(BackgroundPublisher[T]):
    """One message per item, published in the background: the alert and replay sinks.

    Subclasses set the topic, how soon a lone item goes out (`LINGER_MS`,
    `WAKE_AT` items wake the sender at once) and `_encode`.
    """

    TOPIC: ClassVar[str]
    LINGER_MS: ClassVar[float]
    WAKE_AT: ClassVar[int]

    def __init__(
        self,
        bootstrap: str,
        source_id: str,
        topic: str | None = None,
        *,
        max_buffered: int = 10_000,
        request_timeout_ms: int = 10_000,
    ) -> None:
        super().__init__(
            bootstrap,
            source_id,
            topic or self.TOPIC,
            max_buffered=max_buffered,
            linger_ms=self.LINGER_MS,
            max_in_flight=64,
            wake_at=self.WAKE_AT,
            start_seq=0,
            request_timeout_ms=request_timeout_ms,
        )


class KafkaAlertSink(_PerItemSink[Alert]):
    """Publishes alerts to `rectune.alerts` in the background, one message per alert, each at once.

    Used by the config consumer (refused changes, stale config) and the SLO
    breaker; `emit` never blocks, so raising an alert can never stall serving
    or the config fold, even with the broker gone.
    """

    TOPIC = ALERTS.name
    LINGER_MS = 5.0
    WAKE_AT = 1

    def _encode(self, group: list[Alert], seq: int) -> tuple[bytes, bytes]:
        (alert,) = group
        return alert.kind.encode(), encode_alert(alert)


class KafkaReplaySink(_PerItemSink[ReplayRecord]):
    """Publishes exploration replay records to `rectune.replay` in the background, one message per record.

    Used by the sidecar's `ReplayRecorder` (`serving_sidecar.replay`); `emit`
    never blocks, and a full buffer drops the oldest like the event sink.
    """

    TOPIC = REPLAY.name
    LINGER_MS = 50.0
    WAKE_AT = 64

    def _encode(self, group: list[ReplayRecord], seq: int) -> tuple[bytes, bytes]:
        (record,) = group
        return record.surface.encode(), encode_replay(record)
