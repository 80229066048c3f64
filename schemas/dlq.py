"""The dead-letter record: what failed, why, and where it came from."""

from __future__ import annotations

import base64
import hashlib

import msgspec

#: Payloads up to this size are kept whole in the dead letter; larger ones are
#: truncated (their source topic/partition/offset still locate the original).
MAX_DLQ_PAYLOAD_BYTES = 262_144


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="dead_letter"):
    """A rejected message or event, published to `rectune.dlq`.

    `event_index` is the event's index within its envelope, or None when the
    message as a whole was refused.  `payload_b64` holds the offending bytes.
    """

    schema_version: int
    source_topic: str
    source_partition: int
    source_offset: int
    event_index: int | None
    field: str
    rule: str
    reason: str
    payload_b64: str
    payload_bytes: int
    payload_sha256: str
    truncated: bool
    seen_ms: int


def dead_letter(
    *,
    topic: str,
    partition: int,
    offset: int,
    event_index: int | None,
    field: str,
    rule: str,
    reason: str,
    payload: bytes,
    seen_ms: int,
) -> DeadLetter:
    """Build the dead letter for a refused payload (called by the stream worker)."""
    kept = payload[:MAX_DLQ_PAYLOAD_BYTES]
    return DeadLetter(
        schema_version=1,
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        event_index=event_index,
        field=field,
        rule=rule,
        reason=reason,
        payload_b64=base64.b64encode(kept).decode(),
        payload_bytes=len(payload),
        payload_sha256=hashlib.sha256(payload).hexdigest(),
        truncated=len(kept) < len(payload),
        seen_ms=seen_ms,
    )
