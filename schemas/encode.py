"""Encoding of events and envelopes to the JSON wire form (pure, no I/O).

Called by the sidecar's event sink, the simulator, `rectune ingest` and the
benchmarks; the exact inverse of `schemas.decode`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import msgspec

from schemas.events import SCHEMA_VERSION, Event, EventBatch

_encoder: Final = msgspec.json.Encoder()


def encode_event(event: Event) -> bytes:
    """One bare event as a message value."""
    return _encoder.encode(event)


def encode_batch(source_id: str, seq: int, events: Iterable[Event]) -> bytes:
    """An `EventBatch` envelope as a message value."""
    return _encoder.encode(
        EventBatch(schema_version=SCHEMA_VERSION, source_id=source_id, seq=seq, events=tuple(events))
    )
