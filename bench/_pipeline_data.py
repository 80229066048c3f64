"""The message sets of the pipeline benchmark: envelopes and one-event messages, generated before any timing.

`bench/pipeline.py` (`run`) calls `batched_set` and `single_set` once, before
the broker starts, so generation is never inside a timed window; the sets are
then sent by `_pipeline_groups.produce`.  Envelopes hold ~100 item events of
the realistic mix (`simulator.synthetic`), a pool of generated requests
repeated with new ids and later event times; one-event messages hold one
item-level event each (or one bare wire event).  Pure: nothing here touches
the broker or the file system.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

import msgspec

from schemas.encode import encode_batch, encode_event
from schemas.events import Event, Impression, item_events
from simulator.synthetic import TrafficGenerator, TrafficSpec, pack

ENVELOPE_ITEMS: Final = 100
START_MS: Final = 1_767_225_600_000  # 2026-01-01T00:00:00Z
#: Requests per second of *event time*: 2M item events span ~5 min, so ~5 windows close per partition.
EVENT_TIME_RATE: Final = 500.0
#: Requests generated for real; larger sets repeat this pool with new ids and later times.
POOL_REQUESTS: Final = 20_000


@dataclass(slots=True)
class MessageSet:
    """Encoded messages and the item-level events each one holds, in send order."""

    payloads: list[bytes] = field(default_factory=list)
    items: list[int] = field(default_factory=list)

    @property
    def item_events(self) -> int:
        """Item-level events in the whole set."""
        return sum(self.items)

    @property
    def nbytes(self) -> int:
        """Bytes of all message values."""
        return sum(map(len, self.payloads))


def _shifted(events: list[Event], copy: int, shift_ms: int) -> Iterator[Event]:
    """The pool's events with unique ids and event times `copy` spans later."""
    if copy == 0:
        yield from events
        return
    tag = f"~{copy}"
    replace = msgspec.structs.replace
    for e in events:
        yield replace(
            e, event_id=e.event_id + tag, request_id=e.request_id + tag, event_time_ms=e.event_time_ms + shift_ms
        )


def batched_set(target_items: int, seed: int) -> tuple[MessageSet, int]:
    """Envelopes of ~100 item events, at least `target_items` in all; returns them and the last event time.

    A pool of `POOL_REQUESTS` generated requests is repeated with new ids and
    later event times (generation costs ~6 µs per item event, the rewrite
    ~1 µs per event), so every message is a valid envelope and windows close.
    """
    gen = TrafficGenerator(TrafficSpec(), seed)
    pool = list(gen.stream(START_MS, POOL_REQUESTS, EVENT_TIME_RATE))
    span_ms = int(POOL_REQUESTS * 1000 / EVENT_TIME_RATE)
    out = MessageSet()
    total = 0
    copy = 0
    last_ms = START_MS
    while total < target_items:
        events = list(_shifted(pool, copy, copy * span_ms))
        for envelope in pack(events, ENVELOPE_ITEMS):
            n = sum(item_events(e) for e in envelope)
            out.payloads.append(encode_batch(f"bench-{seed}-{copy}", len(out.payloads), envelope))
            out.items.append(n)
            last_ms = max(last_ms, max(e.event_time_ms for e in envelope))
            total += n
            if total >= target_items:
                break
        copy += 1
    return out, last_ms


def single_set(target_items: int, seed: int, start_ms: int, shape: str) -> MessageSet:
    """Bare one-event messages, at least `target_items` item-level events in all.

    `shape="item"` (default): one item-level event per message: each 12-item
    impression becomes 12 one-item impressions (same request, user, arm, time
    and positions), clicks and conversions stay as they are.  `shape="wire"`:
    the bare events as a sidecar would send them unbatched (an impression
    message then holds 12 item events).
    """
    gen = TrafficGenerator(TrafficSpec(), seed)
    out = MessageSet()
    total = 0
    request = 0
    replace = msgspec.structs.replace
    while total < target_items:
        for event in gen.request(start_ms + int(request * 1000 / EVENT_TIME_RATE)):
            if shape == "item" and isinstance(event, Impression):
                parts: list[Event] = [
                    replace(event, event_id=f"{event.event_id}.{item.position}", items=(item,)) for item in event.items
                ]
            else:
                parts = [event]
            for part in parts:
                out.payloads.append(encode_event(part))
                out.items.append(item_events(part))
                total += out.items[-1]
        request += 1
    return out
