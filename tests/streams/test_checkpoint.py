"""Checkpoint codec: a restored aggregator carries on exactly where the old one stopped.

Pure unit tests of `streams.checkpoint` (no broker).  This is the core of
DESIGN.md's effectively-once scheme: state + next offset + outbox in one
record, so a worker that crashes and restores produces what an uninterrupted
one would have produced.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from typing import Any
from unittest import mock

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.decode import decode_message
from schemas.encode import encode_batch
from schemas.errors import DecodeError
from schemas.events import Event
from schemas.metrics import FIELD_INDEX, MetricWindow
from schemas.topics import METRICS
from simulator.synthetic import TrafficGenerator, TrafficSpec, pack
from streams import aggregate
from streams.aggregate import FOLD_EVERY_ROWS, ROW_WIDTH, OutRecord, PartitionAggregator
from streams.checkpoint import (
    CHECKPOINT_VERSION,
    COMPRESS_ABOVE_BYTES,
    Checkpoint,
    decode_checkpoint,
    encode_checkpoint,
    restore,
)
from streams.errors import StateError, StreamsError
from streams.windows import WindowSpec

TOPIC = "rectune.events"
T0 = 1_700_000_000_000
SMALL = TrafficSpec(users=200, items=300, styles=100, surfaces=("home", "search"))
SPEC = WindowSpec(width_ms=1_000, allowed_lateness_ms=200, buckets=16)
FLOAT_ROWS = [FIELD_INDEX[f] for f in ("revenue", "revenue_sq", "latency_ms", "latency_ms_sq")]

# A message is either good events or a payload the decoder refuses (dead-lettered).
Message = list[Event] | bytes


def _messages(seed: int, requests: int, per_message: int, rnd: random.Random) -> list[Message]:
    events = list(TrafficGenerator(SMALL, seed=seed).stream(T0, requests, 100.0))
    messages: list[Message] = list(pack(events, per_message))
    for _ in range(rnd.randrange(3)):  # some refused messages and some envelopes with a bad event
        messages.insert(rnd.randrange(len(messages) + 1), b'{"type":"click","schema_version":1}')
    for i, message in enumerate(messages):
        if isinstance(message, list) and rnd.random() < 0.1:
            doc = msgspec.json.decode(encode_batch("src", i, message))
            doc["events"][0]["event_time_ms"] = -1
            messages[i] = msgspec.json.encode(doc)
    return messages


def _process(agg: PartitionAggregator, offset: int, message: Message, idle: bool) -> None:
    """What the worker does with one message (decode, add, dead-letter, close)."""
    if isinstance(message, list):
        agg.add_message(offset, message)
    else:
        try:
            decoded = decode_message(message)
        except DecodeError as err:
            agg.reject(offset=offset, event_index=None, error=err, payload=message, seen_ms=offset)
            return
        agg.add_message(offset, decoded.events)
        for rejected in decoded.rejected:
            agg.reject(offset=offset, event_index=rejected.index, error=rejected.error, payload=message, seen_ms=offset)
    agg.close_due()
    if idle:
        agg.close_all()


def _run(
    spec: WindowSpec, messages: Sequence[Message], idle: set[int], cuts: set[int], partition: int = 0
) -> PartitionAggregator:
    """Feed everything, checkpointing and restoring (a crash) before each offset in `cuts`."""
    agg = PartitionAggregator(spec, TOPIC, partition)
    for offset, message in enumerate(messages):
        if offset in cuts:
            data = encode_checkpoint(agg)
            agg = restore(data, spec, TOPIC, partition)
            assert agg.next_offset == offset
        _process(agg, offset, message, offset in idle)
    if len(messages) in cuts:
        agg = restore(encode_checkpoint(agg), spec, TOPIC, partition)
    agg.close_all()
    return agg


def _state(agg: PartitionAggregator) -> tuple[Any, ...]:
    return (agg.next_offset, agg.watermark_ms, agg.closed_through_ms, agg.late_seq, agg.counters)


def _assert_same_outbox_up_to_float_rounding(a: PartitionAggregator, b: PartitionAggregator) -> None:
    """Same records in the same order; metric partials equal except for rounding of float sums."""
    assert [(r.topic, r.key) for r in a.outbox] == [(r.topic, r.key) for r in b.outbox]
    for x, y in zip(a.outbox, b.outbox, strict=True):
        if x.topic != METRICS.name:
            assert x.value == y.value
            continue
        wx = msgspec.json.decode(x.value, type=MetricWindow)
        wy = msgspec.json.decode(y.value, type=MetricWindow)
        assert msgspec.structs.replace(wx, sums=()) == msgspec.structs.replace(wy, sums=())
        sx, sy = np.asarray(wx.sums), np.asarray(wy.sums)
        exact = [i for i in range(sx.shape[0]) if i not in FLOAT_ROWS]
        assert np.array_equal(sx[exact], sy[exact])  # counts are exact
        assert np.allclose(sx, sy, rtol=1e-12, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    requests=st.integers(1, 80),
    per_message=st.integers(1, 60),
    lateness=st.sampled_from([0, 200, 3_000]),
    rnd=st.randoms(use_true_random=False),
)
def test_restore_then_continue_equals_uninterrupted_run(
    seed: int, requests: int, per_message: int, lateness: int, rnd: random.Random
) -> None:
    spec = WindowSpec(width_ms=1_000, allowed_lateness_ms=lateness, buckets=16)
    messages = _messages(seed, requests, per_message, rnd)
    idle = {i for i in range(len(messages)) if rnd.random() < 0.1}
    cuts = {i for i in range(len(messages) + 1) if rnd.random() < 0.3} or {rnd.randrange(len(messages) + 1)}

    straight = _run(spec, messages, idle, set())
    crashed = _run(spec, messages, idle, cuts)

    assert _state(crashed) == _state(straight)
    assert straight.counters.messages == len(messages)
    assert crashed.groups == {} == straight.groups
    _assert_same_outbox_up_to_float_rounding(crashed, straight)


def test_restored_partials_are_byte_identical() -> None:
    messages: list[Message] = list(pack(list(TrafficGenerator(SMALL, seed=0).stream(T0, 200, 100.0)), 30))
    straight = _run(SPEC, messages, set(), set())
    crashed = _run(SPEC, messages, set(), {1})
    assert [r.value for r in crashed.outbox] == [r.value for r in straight.outbox]


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    requests=st.integers(1, 80),
    per_message=st.integers(1, 40),
    fold_every=st.integers(1, 50),
    rnd=st.randoms(use_true_random=False),
)
def test_restores_between_folds_publish_byte_identical_partials(
    seed: int, requests: int, per_message: int, fold_every: int, rnd: random.Random
) -> None:
    """Fold points depend only on the input, so checkpoints that carry unfolded rows change no bit."""
    events = list(TrafficGenerator(SMALL, seed=seed).stream(T0, requests, 100.0))
    messages: list[Message] = list(pack(events, per_message))
    cuts = {i for i in range(len(messages) + 1) if rnd.random() < 0.4}
    with mock.patch.object(aggregate, "FOLD_EVERY_ROWS", fold_every):
        straight = _run(SPEC, messages, set(), set())
        crashed = _run(SPEC, messages, set(), cuts)
    assert _state(crashed) == _state(straight)
    assert [(r.topic, r.key, r.value) for r in crashed.outbox] == [(r.topic, r.key, r.value) for r in straight.outbox]


def test_a_busy_partition_checkpoints_uncompressed_and_small() -> None:
    """Unfolded rows are bounded by FOLD_EVERY_ROWS, so the record stays small without zlib."""
    events = list(TrafficGenerator(SMALL, seed=5).stream(T0, 3_000, 1_000.0))
    agg = PartitionAggregator(WindowSpec(width_ms=60_000, allowed_lateness_ms=10_000, buckets=64), TOPIC, 0)
    largest = 0
    for offset, message in enumerate(pack(events, 100)):
        agg.add_message(offset, message)
        agg.close_due()
        data = encode_checkpoint(agg)
        assert data[:1] != b"\x78"  # plain msgpack
        largest = max(largest, len(data))
    assert agg.counters.item_events > 2 * FOLD_EVERY_ROWS  # folds happened on the way
    assert largest < FOLD_EVERY_ROWS * (ROW_WIDTH + 2) * 8 + 64 * 1024 < COMPRESS_ABOVE_BYTES


def test_a_large_record_is_compressed_and_restores_the_same() -> None:
    agg = PartitionAggregator(SPEC, TOPIC, 1)
    agg.add_message(0, list(TrafficGenerator(SMALL, seed=2).stream(T0, 40, 100.0)))
    big = COMPRESS_ABOVE_BYTES // 10_000 + 1
    agg.outbox = [OutRecord("rectune.dlq", b"k%d" % i, b"x" * 10_000) for i in range(big)]
    data = encode_checkpoint(agg)
    assert data[:1] == b"\x78"
    assert len(data) < COMPRESS_ABOVE_BYTES
    again = restore(data, SPEC, TOPIC, 1)
    assert again.outbox == agg.outbox
    assert _state(again) == _state(agg)
    assert encode_checkpoint(again) == data


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    requests=st.integers(1, 60),
    rnd=st.randoms(use_true_random=False),
)
def test_checkpoint_of_a_restored_aggregator_is_identical(seed: int, requests: int, rnd: random.Random) -> None:
    messages = _messages(seed, requests, 25, rnd)
    agg = PartitionAggregator(SPEC, TOPIC, 4)
    for offset, message in enumerate(messages[: rnd.randrange(len(messages) + 1)]):
        _process(agg, offset, message, rnd.random() < 0.1)
    data = encode_checkpoint(agg)
    again = restore(data, SPEC, TOPIC, 4)
    assert encode_checkpoint(again) == data
    assert _state(again) == _state(agg)
    assert again.outbox == agg.outbox
    assert again.has_open_windows() == agg.has_open_windows()
    assert set(again.groups) == set(agg.groups)
    for key, group in agg.groups.items():
        assert np.array_equal(again.groups[key].sums, group.sums)
        assert np.array_equal(again.groups[key].hist, group.hist)
        assert again.groups[key].config_versions == group.config_versions
        assert again.groups[key].item_events == group.item_events


def test_fresh_aggregator_round_trips() -> None:
    agg = PartitionAggregator(SPEC, TOPIC, 0)
    snap = decode_checkpoint(encode_checkpoint(agg))
    assert isinstance(snap, Checkpoint)
    assert snap.version == CHECKPOINT_VERSION
    assert (snap.next_offset, snap.groups, snap.outbox) == (0, [], [])
    restored = restore(encode_checkpoint(agg), SPEC, TOPIC, 0)
    assert _state(restored) == _state(agg)
    assert not restored.has_open_windows()


def test_checkpoint_keeps_the_unpublished_outbox_and_restored_state_resumes_at_next_offset() -> None:
    messages: list[Message] = list(pack(list(TrafficGenerator(SMALL, seed=3).stream(T0, 300, 100.0)), 300))
    agg = PartitionAggregator(SPEC, TOPIC, 0)
    for offset, message in enumerate(messages[:8]):
        _process(agg, offset, message, idle=False)
    assert agg.outbox, "expected some closed windows by now"
    restored = restore(encode_checkpoint(agg), SPEC, TOPIC, 0)
    assert restored.outbox == agg.outbox
    assert restored.next_offset == 8
    # publishing then clearing part of the outbox is also captured
    restored.clear_outbox(1)
    assert restore(encode_checkpoint(restored), SPEC, TOPIC, 0).outbox == agg.outbox[1:]


# -- refusals ------------------------------------------------------------------------


def _checkpoint(*, pending: bool = False) -> bytes:
    agg = PartitionAggregator(SPEC, TOPIC, 2)
    agg.add_message(0, list(TrafficGenerator(SMALL, seed=1).stream(T0, 5, 100.0)))
    agg.fold()  # so the record holds folded groups
    if pending:  # ... and one unfolded row
        agg.add_message(1, list(TrafficGenerator(SMALL, seed=1).stream(T0 + 10, 1, 100.0))[:1])
    return encode_checkpoint(agg)


@pytest.mark.parametrize(
    ("spec", "topic", "partition", "field"),
    [
        (WindowSpec(width_ms=1_000, allowed_lateness_ms=200, buckets=64), TOPIC, 2, "buckets"),
        (WindowSpec(width_ms=60_000, allowed_lateness_ms=200, buckets=16), TOPIC, 2, "width_ms"),
        (WindowSpec(width_ms=1_000, allowed_lateness_ms=0, buckets=16), TOPIC, 2, "allowed_lateness_ms"),
        (SPEC, TOPIC, 3, "partition"),
        (SPEC, "other.events", 2, "topic"),
    ],
)
def test_restore_refuses_a_checkpoint_of_another_layout_naming_the_field(
    spec: WindowSpec, topic: str, partition: int, field: str
) -> None:
    data = _checkpoint()
    with pytest.raises(StateError, match=rf"checkpoint\.{field}:") as info:
        restore(data, spec, topic, partition)
    assert isinstance(info.value, StreamsError)
    assert info.value.message.startswith(f"checkpoint.{field}:")
    assert info.value.hint
    # the same bytes restore fine with the right layout
    assert restore(data, SPEC, TOPIC, 2).next_offset == 1


def _snap(data: bytes) -> Checkpoint:
    return msgspec.msgpack.decode(zlib.decompress(data) if data[:1] == b"\x78" else data[:-4], type=Checkpoint)


def _sealed(body: bytes) -> bytes:
    """A record as the codec writes it: msgpack + CRC-32 (little-endian)."""
    return body + zlib.crc32(body).to_bytes(4, "little")


def _rewrite(data: bytes, **changes: Any) -> bytes:
    return _sealed(msgspec.msgpack.encode(msgspec.structs.replace(_snap(data), **changes)))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"version": CHECKPOINT_VERSION + 1}, "version"),
        ({"fields": ["requests", "clicks"]}, "fields"),
        ({"latency_bins": 7}, "latency_bins"),
        ({"pending_versions": b"\x00" * 16}, "pending_rows"),
        ({"pending_key_ids": b""}, "pending_rows"),
        ({"pending_rows": b"\x00" * 8}, "pending_rows"),
        ({"pending_key_ids": (7).to_bytes(8, "little"), "pending_keys": []}, "pending_key_ids"),
    ],
)
def test_restore_refuses_another_build_naming_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(StateError, match=rf"checkpoint\.{field}:"):
        restore(_rewrite(_checkpoint(pending=True), **changes), SPEC, TOPIC, 2)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"\x00" * 64,
        zlib.compress(b"not msgpack at all"),
        zlib.compress(msgspec.msgpack.encode({"version": 1})),
        zlib.compress(msgspec.msgpack.encode([1, 2, 3])),
        msgspec.msgpack.encode({"version": 1}),  # no checksum
        _sealed(msgspec.msgpack.encode({"version": 1})),
        _sealed(b"not msgpack at all"),
        b"\x78garbage",  # looks compressed, is not
    ],
    ids=[
        "empty",
        "text",
        "zeros",
        "zlib-text",
        "zlib-partial-map",
        "zlib-list",
        "no-checksum",
        "partial-map",
        "sealed-text",
        "fake-zlib",
    ],
)
def test_garbage_is_a_state_error(data: bytes) -> None:
    with pytest.raises(StateError, match=r"^checkpoint"):
        restore(data, SPEC, TOPIC, 2)


def test_truncated_or_corrupted_checkpoint_is_a_state_error() -> None:
    data = _checkpoint()
    with pytest.raises(StateError):
        restore(data[: len(data) // 2], SPEC, TOPIC, 2)
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0xFF
    with pytest.raises(StateError):
        restore(bytes(flipped), SPEC, TOPIC, 2)


def _group_change(field: str, cut: int) -> dict[str, Any]:
    snap = _snap(_checkpoint())
    group = snap.groups[0]
    return {"groups": [msgspec.structs.replace(group, **{field: getattr(group, field)[:-cut]}), *snap.groups[1:]]}


@pytest.mark.parametrize(
    "case", ["nested-unknown-field", "nested-unknown-field-zlib", "short-sums", "short-hist", "short-counters"]
)
def test_malformed_record_is_a_state_error(case: str) -> None:
    if case.startswith("nested-unknown-field"):
        body = b"\x81\xa1x" + b"\x91" * 5000 + b"\xc0"  # {"x": [[[...[nil]...]]]}
        data = zlib.compress(body) if case.endswith("zlib") else _sealed(body)
    elif case == "short-sums":
        data = _rewrite(_checkpoint(), **_group_change("sums", 8))
    elif case == "short-hist":
        data = _rewrite(_checkpoint(), **_group_change("hist", 8))
    else:
        data = _rewrite(_checkpoint(), counters=[1, 2])
    try:
        restore(data, SPEC, TOPIC, 2)
    except Exception as err:  # the point is which exception escapes
        assert isinstance(err, StateError), repr(err)
    else:
        msg = "malformed checkpoint was accepted"
        raise AssertionError(msg)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300))
def test_random_bytes_are_a_state_error(data: bytes) -> None:
    with pytest.raises(StateError):
        restore(data, SPEC, TOPIC, 2)
