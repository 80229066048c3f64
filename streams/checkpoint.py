"""Checkpoint codec: one partition's whole state plus its source offset, as bytes (pure).

A checkpoint is the single changelog record of DESIGN.md's effectively-once
scheme: aggregate state, the offset of the next source message, and the outbox
of records still to publish, encoded together so they can never disagree.
msgpack + zlib keeps it compact; the layout (bucket count, field names,
histogram size, window spec) is checked on restore so a worker never folds a
checkpoint of another build into its sums.
"""

from __future__ import annotations

import zlib
from typing import Final

import msgspec
import numpy as np

from schemas.metrics import BUCKET_FIELDS, N_FIELDS, N_LATENCY_BINS
from streams.aggregate import Counters, Group, OutRecord, PartitionAggregator
from streams.errors import StateError
from streams.windows import WindowSpec

CHECKPOINT_VERSION: Final = 1


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


_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(Checkpoint)


def encode_checkpoint(agg: PartitionAggregator) -> bytes:
    """Serialise the aggregator's full state (folding pending rows first).

    Called by the stream worker before it publishes the outbox and commits.
    """
    agg.fold()
    c = agg.counters
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
        counters=[c.messages, c.item_events, c.late_item_events, c.rejected_messages, c.rejected_events, c.windows_closed],
        groups=[
            _GroupSnap(k[0], k[1], k[2], k[3], k[4], sorted(g.config_versions), g.sums.tobytes(), g.hist.tobytes(), g.item_events)
            for k, g in agg.groups.items()
        ],
        outbox=[_OutSnap(r.topic, r.key, r.value) for r in agg.outbox],
    )
    return zlib.compress(_encoder.encode(snap), 1)


def decode_checkpoint(data: bytes) -> Checkpoint:
    """Parse checkpoint bytes; raises `StateError` when they are not a checkpoint."""
    try:
        snap = _decoder.decode(zlib.decompress(data))
    except (zlib.error, msgspec.DecodeError) as err:
        msg = f"checkpoint: not a valid checkpoint record ({err})"
        raise StateError(msg, hint="is something else writing to the state topic?") from err
    if snap.version != CHECKPOINT_VERSION:
        msg = f"checkpoint.version: must be {CHECKPOINT_VERSION}, got {snap.version}"
        raise StateError(msg, hint="a newer worker wrote this state; upgrade this one")
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
    agg = PartitionAggregator(spec, topic, partition)
    agg.next_offset = snap.next_offset
    agg.watermark_ms = snap.watermark_ms
    agg.closed_through_ms = snap.closed_through_ms
    agg.late_seq = snap.late_seq
    agg.counters = Counters(*snap.counters)
    for g in snap.groups:
        sums = np.frombuffer(g.sums, dtype=np.float64).reshape(N_FIELDS, spec.buckets).copy()
        hist = np.frombuffer(g.hist, dtype=np.int64).copy()
        agg.groups[(g.window_start_ms, g.surface, g.arm_id, g.cohort, g.late)] = Group(
            sums, hist, set(g.config_versions), g.item_events
        )
    agg.reopen()
    agg.outbox = [OutRecord(r.topic, r.key, r.value) for r in snap.outbox]
    return agg
