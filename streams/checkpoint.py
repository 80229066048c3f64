"""Checkpoint codec: one partition's whole state plus its source offset, as bytes (pure).

A checkpoint is the single changelog record of DESIGN.md's effectively-once
scheme: aggregate state, the offset of the next source message, and the outbox
of records still to publish, encoded together so they can never disagree.
The record is msgpack followed by its CRC-32, or, above
`COMPRESS_ABOVE_BYTES`, a zlib stream of the msgpack (which carries its own
checksum; a zlib stream starts with 0x78, a msgpack map never does).  Most
records are not compressed: unfolded rows are bounded by the aggregator's
`FOLD_EVERY_ROWS` (~120 bytes each), and zlib cost milliseconds per checkpoint
of the worker's one busy core.  The layout (bucket count, field names, histogram
size, window spec) is checked on restore so a worker never folds a checkpoint
of another build into its sums.
"""

from __future__ import annotations

import zlib
from typing import Final

import msgspec
import numpy as np

from schemas.metrics import BUCKET_FIELDS, N_FIELDS, N_LATENCY_BINS
from streams.aggregate import ROW_WIDTH, SEQ_WINDOW, Counters, Group, OutRecord, PartitionAggregator, Pending
from streams.errors import StateError
from streams.windows import WindowSpec

CHECKPOINT_VERSION: Final = 2
#: Records larger than this are zlib-compressed (a burst of dead letters, many open
#: groups), keeping them well below brokers' default 1 MB message limit.
COMPRESS_ABOVE_BYTES: Final = 512 * 1024
_ZLIB_MAGIC: Final = b"\x78"
_CRC_BYTES: Final = 4
_MASK_BYTES: Final = SEQ_WINDOW // 8 + 1


class _GroupSnap(msgspec.Struct, frozen=True, array_like=True):
    window_start_ms: int
    surface: str
    arm_id: str
    cohort: str
    late: bool
    config_versions: list[int]
    sums: bytes
    hist: bytes
    item_events: int


class _OutSnap(msgspec.Struct, frozen=True, array_like=True):
    topic: str
    key: bytes
    value: bytes


class _KeySnap(msgspec.Struct, frozen=True, array_like=True):
    window_start_ms: int
    surface: str
    arm_id: str
    cohort: str
    late: bool


class Checkpoint(msgspec.Struct, frozen=True):
    """Decoded checkpoint record (also what `rectune` tools print for debugging)."""

    version: int
    topic: str
    partition: int
    next_offset: int
    watermark_ms: int
    closed_through_ms: int
    late_seq: int
    width_ms: int
    allowed_lateness_ms: int
    buckets: int
    fields: list[str]
    latency_bins: int
    counters: list[int]
    groups: list[_GroupSnap]
    outbox: list[_OutSnap]
    # Rows not yet folded into the sums, kept as they are: folding them here
    # would change the order of float additions, so a restored worker would
    # publish partials that differ in the last bits from an uninterrupted one.
    # Flat native-order arrays (as the group sums): float64 x ROW_WIDTH per row, int64 key index
    # (into pending_keys) and int64 config version per row.
    pending_rows: bytes
    pending_key_ids: bytes
    pending_versions: bytes
    pending_keys: list[_KeySnap]
    # Envelope de-duplication memory: (source_id, highest seq, seen-bitmask bytes).
    sources: list[tuple[str, int, bytes]]


_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(Checkpoint)


def encode_checkpoint(agg: PartitionAggregator) -> bytes:
    """Serialise the aggregator's full state, unfolded rows included.

    Called by the stream worker before it publishes the outbox and commits.
    """
    c = agg.counters
    pending = agg.pending()
    snap = Checkpoint(
        version=CHECKPOINT_VERSION,
        topic=agg.topic,
        partition=agg.partition,
        next_offset=agg.next_offset,
        watermark_ms=agg.watermark_ms,
        closed_through_ms=agg.closed_through_ms,
        late_seq=agg.late_seq,
        width_ms=agg.spec.width_ms,
        allowed_lateness_ms=agg.spec.allowed_lateness_ms,
        buckets=agg.spec.buckets,
        fields=list(BUCKET_FIELDS),
        latency_bins=N_LATENCY_BINS,
        counters=[getattr(c, name) for name in Counters.__slots__],
        groups=[
            _GroupSnap(
                k[0],
                k[1],
                k[2],
                k[3],
                k[4],
                sorted(g.config_versions),
                g.sums.tobytes(),
                g.hist.tobytes(),
                g.item_events,
            )
            for k, g in agg.groups.items()
        ],
        outbox=[_OutSnap(r.topic, r.key, r.value) for r in agg.outbox],
        pending_rows=pending.rows,
        pending_key_ids=pending.key_ids,
        pending_versions=pending.versions,
        pending_keys=[_KeySnap(*k) for k in pending.keys],
        sources=[(src, high, mask.to_bytes(_MASK_BYTES, "little")) for src, (high, mask) in agg.sources.items()],
    )
    body = _encoder.encode(snap)
    if len(body) > COMPRESS_ABOVE_BYTES:
        return zlib.compress(body, 1)
    return body + zlib.crc32(body).to_bytes(_CRC_BYTES, "little")


def _body(data: bytes) -> bytes:
    """The msgpack body of a record, its checksum verified (zlib verifies its own)."""
    if data[:1] == _ZLIB_MAGIC:
        return zlib.decompress(data)
    body, crc = data[:-_CRC_BYTES], data[-_CRC_BYTES:]
    if len(data) <= _CRC_BYTES or zlib.crc32(body).to_bytes(_CRC_BYTES, "little") != crc:
        msg = "checkpoint: checksum mismatch (a truncated or corrupted record)"
        raise StateError(msg, hint="is something else writing to the state topic?")
    return body


def decode_checkpoint(data: bytes) -> Checkpoint:
    """Parse checkpoint bytes; raises `StateError` when they are not a checkpoint."""
    try:
        snap = _decoder.decode(_body(data))
    except (zlib.error, msgspec.DecodeError, RecursionError) as err:
        msg = f"checkpoint: not a valid checkpoint record ({err})"
        raise StateError(msg, hint="is something else writing to the state topic?") from err
    if snap.version != CHECKPOINT_VERSION:
        msg = f"checkpoint.version: must be {CHECKPOINT_VERSION}, got {snap.version}"
        raise StateError(msg, hint="another build of the worker wrote this state: run that build, or use a new app id")
    return snap


def restore(data: bytes, spec: WindowSpec, topic: str, partition: int) -> PartitionAggregator:
    """Rebuild a partition's aggregator from its latest checkpoint.

    Called by the worker when a partition is assigned.  Refuses a checkpoint
    whose layout differs from `spec` and this build, naming the field.
    """
    snap = decode_checkpoint(data)
    expected = {
        "topic": (snap.topic, topic),
        "partition": (snap.partition, partition),
        "width_ms": (snap.width_ms, spec.width_ms),
        "allowed_lateness_ms": (snap.allowed_lateness_ms, spec.allowed_lateness_ms),
        "buckets": (snap.buckets, spec.buckets),
        "fields": (tuple(snap.fields), BUCKET_FIELDS),
        "latency_bins": (snap.latency_bins, N_LATENCY_BINS),
    }
    for name, (got, want) in expected.items():
        if got != want:
            msg = f"checkpoint.{name}: must equal this worker's {want!r}, got {got!r}"
            raise StateError(msg, hint="changing the window layout needs a new state topic or a reset")
    if len(snap.counters) != len(Counters.__slots__):
        msg = f"checkpoint.counters: must hold {len(Counters.__slots__)} values, got {len(snap.counters)}"
        raise StateError(msg, hint="the record is corrupt")
    agg = PartitionAggregator(spec, topic, partition)
    agg.next_offset = snap.next_offset
    agg.watermark_ms = snap.watermark_ms
    agg.closed_through_ms = snap.closed_through_ms
    agg.late_seq = snap.late_seq
    agg.counters = Counters(*snap.counters)
    sums_bytes = N_FIELDS * spec.buckets * 8
    for g in snap.groups:
        if len(g.sums) != sums_bytes or len(g.hist) != N_LATENCY_BINS * 8:
            msg = "checkpoint.groups: sums or histogram buffer has the wrong size"
            raise StateError(msg, hint="the record is corrupt")
        sums = np.frombuffer(g.sums, dtype=np.float64).reshape(N_FIELDS, spec.buckets).copy()
        hist = np.frombuffer(g.hist, dtype=np.int64).copy()
        agg.groups[(g.window_start_ms, g.surface, g.arm_id, g.cohort, g.late)] = Group(
            sums, hist, set(g.config_versions), g.item_events
        )
    n_rows, extra = divmod(len(snap.pending_rows), ROW_WIDTH * 8)
    if extra or len(snap.pending_key_ids) != n_rows * 8 or len(snap.pending_versions) != n_rows * 8:
        msg = "checkpoint.pending_rows: must hold one row, one key index and one version per pending row"
        raise StateError(msg, hint="the record is corrupt")
    key_ids = np.frombuffer(snap.pending_key_ids, dtype=np.int64)
    if n_rows and (int(key_ids.min()) < 0 or int(key_ids.max()) >= len(snap.pending_keys)):
        msg = f"checkpoint.pending_key_ids: must index pending_keys (0..{len(snap.pending_keys) - 1})"
        raise StateError(msg, hint="the record is corrupt")
    agg.load_pending(
        Pending(
            snap.pending_rows,
            snap.pending_key_ids,
            snap.pending_versions,
            [(k.window_start_ms, k.surface, k.arm_id, k.cohort, k.late) for k in snap.pending_keys],
        )
    )
    agg.outbox = [OutRecord(r.topic, r.key, r.value) for r in snap.outbox]
    agg.sources = {src: (high, int.from_bytes(mask, "little")) for src, high, mask in snap.sources}
    agg.reopen()
    return agg
