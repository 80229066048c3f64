"""Strict decoding of wire messages on `rectune.events` (pure, no I/O).

Called by the stream worker for every Kafka message and by tools that read
events back.  A message is an `EventBatch` envelope or one bare event.  The
envelope must be sound as a whole (otherwise the entire message is rejected);
each event inside is checked on its own, so one bad event is dead-lettered
without losing its good neighbours.  Every rejection is a `DecodeError` whose
`field` is a path such as ``events[3].items[2].position`` and whose `rule` says
what the value must be.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta

from schemas.errors import DecodeError
from schemas.events import (
    Event,
    EventBatch,
    Id,
    Impression,
    Version,
)
from schemas.limits import MAX_EVENTS_PER_BATCH, MAX_MESSAGE_BYTES

_HINT: Final = "see schemas/events.py for the wire contract"
_ROOT: Final = "$"
_TOO_DEEP: Final = "must not nest deeper than the schema"
_NULL_RULE: Final = "a null record (tombstone) is not an event"
_EMPTY_RULE: Final = "an empty record is not an event"
_NO_VALUE_HINT: Final = "rectune.events is a delete-policy log: produce events, never tombstones or empty values"
_PATH = re.compile(r"^(?P<rule>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
# msgspec names a missing or unknown key in its text, not its path: move it to the path.
_KEYED = re.compile(r"^Object (?P<what>missing required|contains unknown) field `(?P<key>[^`]*)`$")
_LEAF_RULES: Final = {
    "type": "must be one of 'batch', 'impression', 'click', 'conversion'",
    "schema_version": "must be 1, the only supported schema version",
}
_KEYED_RULES: Final = {"missing required": "is required", "contains unknown": "is not a field of this schema (v1)"}


class _RawBatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="type", tag="batch"):
    """Envelope with events left raw, so each event is judged on its own."""

    schema_version: Literal[1]
    source_id: Id
    seq: Version
    events: Annotated[list[msgspec.Raw], Meta(min_length=1, max_length=MAX_EVENTS_PER_BATCH)]


_event_decoder: Final = msgspec.json.Decoder(Event)
# Fast path: a wholly valid envelope (or bare event) decodes in one C call.
_fast_decoder: Final = msgspec.json.Decoder(EventBatch | Event)
# Slow path, only after the fast one failed: events left raw, judged one by one.
_raw_decoder: Final = msgspec.json.Decoder(_RawBatch | Event)


@dataclass(frozen=True, slots=True)
class Rejected:
    """One event that failed decoding: its index in the envelope and the error."""

    index: int
    error: DecodeError


@dataclass(frozen=True, slots=True)
class DecodedMessage:
    """What one Kafka message yielded: the good events and the rejected ones."""

    events: tuple[Event, ...]
    rejected: tuple[Rejected, ...]
    source_id: str | None
    seq: int | None


def _to_error(err: msgspec.DecodeError, prefix: str) -> DecodeError:
    """Turn msgspec's "rule - at `$.path`" text into field + rule."""
    match = _PATH.match(str(err))
    rule = str(err)
    path = ""
    if match is not None:
        rule = match.group("rule")
        path = (match.group("path") or "").lstrip(".")
        keyed = _KEYED.match(rule)
        if keyed is not None:
            path = f"{path}.{keyed.group('key')}".lstrip(".")
            rule = _KEYED_RULES[keyed.group("what")]
        leaf = path.rsplit(".", 1)[-1]
        if leaf in _LEAF_RULES:
            rule = f"{_LEAF_RULES[leaf]} ({rule})"
    field = (prefix + ("." + path if path and not path.startswith("[") else path)).lstrip(".")
    return DecodeError(field or "$", rule, hint=_HINT)


def _check_event(event: Event, prefix: str) -> None:
    """Rules a schema cannot state: distinct positions within one list."""
    if isinstance(event, Impression):
        positions = {item.position for item in event.items}
        if len(positions) != len(event.items):
            field = f"{prefix}.items".lstrip(".")
            raise DecodeError(field, "positions must be distinct within one impression", hint=_HINT)


def decode_event(payload: bytes | msgspec.Raw, prefix: str = "") -> Event:
    """Decode one event (bare message or one raw member of an envelope).

    Raises `DecodeError` naming the field and the rule.
    """
    try:
        event: Event = _event_decoder.decode(payload)
    except msgspec.DecodeError as err:
        raise _to_error(err, prefix) from err
    except RecursionError as err:
        raise DecodeError(prefix or _ROOT, _TOO_DEEP, hint=_HINT) from err
    _check_event(event, prefix)
    return event


def decode_message(payload: bytes | None) -> DecodedMessage:
    """Decode one Kafka message value (envelope or bare event).

    Called by the stream worker per message.  Raises `DecodeError` when the
    message as a whole is unusable (a null value, i.e. a tombstone, or an
    empty one; oversize, not JSON, bad envelope), so the worker dead-letters
    it like any other malformed message; returns the good events plus
    per-event rejections otherwise.
    """
    if not payload:
        rule = _NULL_RULE if payload is None else _EMPTY_RULE
        raise DecodeError(_ROOT, rule, hint=_NO_VALUE_HINT)
    if len(payload) > MAX_MESSAGE_BYTES:
        rule = f"payload must be at most {MAX_MESSAGE_BYTES} bytes, got {len(payload)}"
        raise DecodeError(_ROOT, rule, hint=_HINT)
    try:
        fast = _fast_decoder.decode(payload)
    except (msgspec.DecodeError, RecursionError):
        pass
    else:
        if isinstance(fast, EventBatch):
            try:
                for index, event in enumerate(fast.events):
                    _check_event(event, f"events[{index}]")
            except DecodeError:
                pass  # fall through to the per-event path to isolate the bad one
            else:
                return DecodedMessage(fast.events, (), fast.source_id, fast.seq)
        else:
            _check_event(fast, "")
            return DecodedMessage((fast,), (), None, None)
    try:
        batch = _raw_decoder.decode(payload)
    except msgspec.DecodeError as err:
        raise _to_error(err, "") from err
    except RecursionError as err:
        raise DecodeError(_ROOT, _TOO_DEEP, hint=_HINT) from err
    if not isinstance(batch, _RawBatch):
        _check_event(batch, "")
        return DecodedMessage((batch,), (), None, None)
    events: list[Event] = []
    rejected: list[Rejected] = []
    for index, raw in enumerate(batch.events):
        try:
            events.append(decode_event(raw, f"events[{index}]"))
        except DecodeError as err:
            rejected.append(Rejected(index, err))
    return DecodedMessage(tuple(events), tuple(rejected), batch.source_id, batch.seq)


def decode_batch(payload: bytes) -> EventBatch:
    """Decode a message that must be a wholly valid envelope (tests, replay tools)."""
    decoded = decode_message(payload)
    if decoded.rejected:
        raise decoded.rejected[0].error
    if decoded.source_id is None or decoded.seq is None:
        field = "type"
        raise DecodeError(field, "must be 'batch' for an envelope", hint=_HINT)
    return EventBatch(schema_version=1, source_id=decoded.source_id, seq=decoded.seq, events=decoded.events)
