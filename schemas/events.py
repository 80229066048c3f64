"""Event types of the contract: what the ranker emits and the pipeline consumes.

These are frozen `msgspec` structs: the same classes are the in-memory values
and the strict wire schema (JSON), so the decoder validates types, bounds and
unknown fields in C at ~1M item events/s instead of field by field in Python.
Times travel as epoch milliseconds (UTC) in fields named `*_ms`.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Final, Literal, TypedDict

import msgspec
from msgspec import Meta

from schemas.limits import (
    MAX_EVENT_TIME_MS,
    MAX_EVENTS_PER_BATCH,
    MAX_INT64,
    MAX_ITEMS_PER_IMPRESSION,
    MAX_LATENCY_MS,
    MAX_REVENUE,
    MAX_STR_LEN,
    MIN_EVENT_TIME_MS,
)

SCHEMA_VERSION: Final = 1
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

Id = Annotated[str, Meta(min_length=1, max_length=MAX_STR_LEN)]
EventTimeMs = Annotated[int, Meta(ge=MIN_EVENT_TIME_MS, lt=MAX_EVENT_TIME_MS)]
Version = Annotated[int, Meta(ge=0, le=MAX_INT64)]
Position = Annotated[int, Meta(ge=0, lt=MAX_ITEMS_PER_IMPRESSION)]
Score = Annotated[float, Meta(ge=-1e12, le=1e12)]
Propensity = Annotated[float, Meta(gt=0.0, le=1.0)]
LatencyMs = Annotated[float, Meta(ge=0.0, le=MAX_LATENCY_MS)]
Revenue = Annotated[float, Meta(ge=0.0, le=MAX_REVENUE)]

#: Stage scores carried per shown item, in cascade order.
STAGES: Final = ("pre_rank", "rank", "re_rank")


class ShownItem(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    """One item in a served list: one item-level impression event.

    `style_id` groups near-duplicates (colourways of one style); absent means
    the item is its own style.  `propensity` is the probability that the
    logging policy showed this item at this position (for off-policy reads).
    """

    item_id: Id
    position: Position
    category: Id
    scores: tuple[Score, Score, Score]
    style_id: Id | None = None
    propensity: Propensity | None = None
    fresh: bool = False
    long_tail: bool = False


class _EventBase(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="type", gc=False):
    schema_version: Literal[1]
    event_id: Id
    event_time_ms: EventTimeMs
    request_id: Id
    user_id: Id
    cohort: Id
    surface: Id
    arm_id: Id
    config_version: Version


class Impression(_EventBase, frozen=True, kw_only=True, tag="impression"):
    """A served list: `len(items)` item-level impression events."""

    items: Annotated[tuple[ShownItem, ...], Meta(min_length=1, max_length=MAX_ITEMS_PER_IMPRESSION)]
    ranker_latency_ms: LatencyMs


class Click(_EventBase, frozen=True, kw_only=True, tag="click"):
    """A click on one shown item, attributed through the impression's tracking token."""

    item_id: Id
    position: Position


class Conversion(_EventBase, frozen=True, kw_only=True, tag="conversion"):
    """A purchase following a click, with its revenue in the shop's currency unit."""

    item_id: Id
    revenue: Revenue


Event = Impression | Click | Conversion


class Attribution(TypedDict):
    """The fields every event of one request shares (`Impression(**attribution, ...)`).

    Producers build it once per request so clicks and conversions carry the
    impression's arm and config version: no join is needed downstream.
    """

    schema_version: Literal[1]
    request_id: str
    user_id: str
    cohort: str
    surface: str
    arm_id: str
    config_version: int


class EventBatch(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="type", tag="batch"):
    """The envelope producers send: many events in one Kafka message.

    `source_id` + `seq` identify the envelope (one sidecar replica and its send
    counter) so duplicates from producer retries can be recognised.
    """

    schema_version: Literal[1]
    source_id: Id
    seq: Version
    events: Annotated[tuple[Event, ...], Meta(min_length=1, max_length=MAX_EVENTS_PER_BATCH)]


def item_events(event: Event) -> int:
    """Item-level event count of one event: how throughput is counted (DESIGN.md)."""
    if isinstance(event, Impression):
        return len(event.items)
    return 1


def ms_to_datetime(epoch_ms: int) -> dt.datetime:
    """Turn wire epoch milliseconds into an aware UTC datetime (for display and logs)."""
    return dt.datetime.fromtimestamp(epoch_ms / 1000.0, tz=dt.UTC)


def datetime_to_ms(when: dt.datetime) -> int:
    """Turn an aware datetime into wire epoch milliseconds (floored, exact); naive ones are refused."""
    if when.tzinfo is None:
        msg = "datetime must be timezone-aware"
        raise ValueError(msg)
    return (when - _EPOCH) // dt.timedelta(milliseconds=1)
