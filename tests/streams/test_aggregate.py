"""Per-partition aggregation: additivity, windowing, lateness, diversity counters, dead letters.

Pure unit tests of `streams.aggregate.PartitionAggregator` (no broker).  The
contract (DESIGN.md): partials are additive, so however events are split into
messages and partitions, merging all published partials gives exactly the
totals of the events; nothing is ever dropped, late events included.
"""

from __future__ import annotations

import base64
import hashlib
import random
from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.decode import decode_message
from schemas.dlq import MAX_DLQ_PAYLOAD_BYTES, DeadLetter
from schemas.encode import encode_batch
from schemas.errors import DecodeError
from schemas.events import Click, Conversion, Event, Impression, ShownItem, item_events
from schemas.metrics import (
    BUCKET_FIELDS,
    FIELD_INDEX,
    N_FIELDS,
    N_LATENCY_BINS,
    ArmTotals,
    MetricWindow,
    latency_bins,
    merge_by_arm,
    user_bucket,
    window_arrays,
)
from schemas.topics import DLQ, METRICS
from simulator.synthetic import TrafficGenerator, TrafficSpec
from streams.aggregate import OutRecord, PartitionAggregator
from streams.windows import WindowSpec

TOPIC = "rectune.events"
T0 = 1_700_000_000_000
SMALL = TrafficSpec(users=300, items=500, styles=150, surfaces=("home", "search", "pdp"), cohorts=("new", "returning"))
INTEGER_FIELDS = tuple(f for f in BUCKET_FIELDS if f not in ("revenue", "revenue_sq", "latency_ms", "latency_ms_sq"))


def _windows(outbox: Sequence[OutRecord]) -> list[MetricWindow]:
    return [msgspec.json.decode(r.value, type=MetricWindow) for r in outbox if r.topic == METRICS.name]


def _by_partial_id(windows: Sequence[MetricWindow]) -> dict[str, MetricWindow]:
    keyed = {w.partial_id: w for w in windows}
    assert len(keyed) == len(windows), "two different partials share a partial_id: one would be lost"
    return keyed


def _expected(events: Sequence[Event], buckets: int) -> dict[tuple[str, str], dict[str, Any]]:
    """Per-(surface, arm) sums computed straight from the events, per user bucket."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for e in events:
        acc = out.setdefault(
            (e.surface, e.arm_id),
            {"sums": np.zeros((N_FIELDS, buckets)), "hist": np.zeros(N_LATENCY_BINS, np.int64), "item_events": 0},
        )
        col = user_bucket(e.user_id, buckets)
        sums = acc["sums"]
        acc["item_events"] += item_events(e)
        if isinstance(e, Impression):
            sums[FIELD_INDEX["requests"], col] += 1
            sums[FIELD_INDEX["impressions"], col] += len(e.items)
            sums[FIELD_INDEX["latency_ms"], col] += e.ranker_latency_ms
            sums[FIELD_INDEX["latency_ms_sq"], col] += e.ranker_latency_ms**2
            sums[FIELD_INDEX["distinct_categories"], col] += len({i.category for i in e.items})
            sums[FIELD_INDEX["near_duplicates"], col] += len(e.items) - len({i.style_id or i.item_id for i in e.items})
            sums[FIELD_INDEX["long_tail"], col] += sum(i.long_tail for i in e.items)
            sums[FIELD_INDEX["fresh"], col] += sum(i.fresh for i in e.items)
            acc["hist"][latency_bins([e.ranker_latency_ms])[0]] += 1
        elif isinstance(e, Click):
            sums[FIELD_INDEX["clicks"], col] += 1
        else:
            sums[FIELD_INDEX["conversions"], col] += 1
            sums[FIELD_INDEX["revenue"], col] += e.revenue
            sums[FIELD_INDEX["revenue_sq"], col] += e.revenue**2
    return out


def _assert_totals_match(
    merged: dict[tuple[str, str], ArmTotals], expected: dict[tuple[str, str], dict[str, Any]]
) -> None:
    assert set(merged) == set(expected)
    for key, want in expected.items():
        got = merged[key]
        for name in INTEGER_FIELDS:  # counts are exact, bucket by bucket
            row = FIELD_INDEX[name]
            assert np.array_equal(got.sums[row], want["sums"][row]), (key, name)
        for name in ("revenue", "revenue_sq", "latency_ms", "latency_ms_sq"):
            row = FIELD_INDEX[name]
            assert np.allclose(got.sums[row], want["sums"][row], rtol=1e-9, atol=1e-9), (key, name)
        assert np.array_equal(got.latency_hist, want["hist"]), key
        assert got.item_events == want["item_events"], key


def _feed(
    agg: PartitionAggregator, messages: Sequence[Sequence[Event]], idle_after: frozenset[int] | set[int] = frozenset()
) -> None:
    """Feed messages the way the worker does: add, then close what is due; idle-close when told."""
    for offset, message in enumerate(messages, start=agg.next_offset):
        agg.add_message(offset, message)
        agg.close_due()
        if offset in idle_after:
            agg.close_all()


# -- additivity ---------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    requests=st.integers(1, 60),
    partitions=st.integers(1, 4),
    spec=st.builds(
        WindowSpec,
        width_ms=st.sampled_from([200, 1_000, 5_000, 60_000]),
        allowed_lateness_ms=st.sampled_from([0, 150, 2_000]),
        buckets=st.sampled_from([1, 7, 64]),
    ),
    rnd=st.randoms(use_true_random=False),
)
def test_merged_partials_equal_event_totals_however_split(
    seed: int, requests: int, partitions: int, spec: WindowSpec, rnd: random.Random
) -> None:
    events = list(TrafficGenerator(SMALL, seed=seed).stream(T0 + rnd.randrange(60_000), requests, 40.0))
    per_partition: list[list[Event]] = [[] for _ in range(partitions)]
    for event in events:  # any assignment; each partition keeps time order
        per_partition[rnd.randrange(partitions)].append(event)

    outbox: list[OutRecord] = []
    late_items = 0
    for p, part in enumerate(per_partition):
        messages: list[list[Event]] = []
        for event in part:  # any cut into messages
            if not messages or rnd.random() < 0.3:
                messages.append([])
            messages[-1].append(event)
        if rnd.random() < 0.2:
            messages.append([])  # a message whose events were all rejected
        idle_after = {i for i in range(len(messages)) if rnd.random() < 0.15}  # idle closes make late events
        agg = PartitionAggregator(spec, TOPIC, p)
        _feed(agg, messages, idle_after)
        agg.close_all()
        assert not agg.has_open_windows()
        assert agg.groups == {}
        assert agg.counters.item_events == sum(item_events(e) for e in part)
        assert agg.counters.messages == len(messages)
        late_items += agg.counters.late_item_events
        outbox.extend(agg.outbox)

    assert {r.topic for r in outbox} <= {METRICS.name}
    windows = _windows(outbox)
    merged = merge_by_arm(_by_partial_id(windows))

    _assert_totals_match(merged, _expected(events, spec.buckets))
    assert sum(t.late_item_events for t in merged.values()) == late_items
    for w in windows:
        assert w.window_end_ms - w.window_start_ms == spec.width_ms
        assert w.window_start_ms % spec.width_ms == 0
        assert w.buckets == spec.buckets
        assert w.config_versions == (SMALL.config_version,)
        assert w.item_events > 0


# -- windowing ----------------------------------------------------------------------

COMMON: dict[str, Any] = {
    "schema_version": 1,
    "request_id": "r1",
    "cohort": "new",
    "surface": "home",
    "arm_id": "control",
    "config_version": 3,
}


def _item(
    pos: int, category: str = "tops", style: str | None = None, *, tail: bool = False, fresh: bool = False
) -> ShownItem:
    return ShownItem(
        item_id=f"i{pos}",
        position=pos,
        category=category,
        scores=(0.1, 0.2, 0.3),
        style_id=style,
        long_tail=tail,
        fresh=fresh,
    )


def _imp(
    t: int, user: str = "u1", *, items: tuple[ShownItem, ...] | None = None, latency: float = 20.0, **kw: Any
) -> Impression:
    fields = {**COMMON, **kw}
    return Impression(
        event_id=f"e{t}",
        event_time_ms=t,
        user_id=user,
        items=items or (_item(0), _item(1), _item(2)),
        ranker_latency_ms=latency,
        **fields,
    )


def _click(t: int, user: str = "u1", **kw: Any) -> Click:
    return Click(event_id=f"c{t}", event_time_ms=t, user_id=user, item_id="i0", position=0, **{**COMMON, **kw})


def _conv(t: int, revenue: float, user: str = "u1", **kw: Any) -> Conversion:
    fields = {**COMMON, **kw}
    return Conversion(event_id=f"v{t}", event_time_ms=t, user_id=user, item_id="i0", revenue=revenue, **fields)


SPEC = WindowSpec(width_ms=1_000, allowed_lateness_ms=200, buckets=16)
W0 = SPEC.start_of(T0)


def test_events_in_adjacent_windows_make_separate_partials() -> None:
    agg = PartitionAggregator(SPEC, TOPIC, 3)
    agg.add_message(0, [_imp(W0), _imp(W0 + 999, "u2")])
    agg.add_message(1, [_imp(W0 + 1_000), _click(W0 + 1_999)])
    assert agg.close_all() == 2
    windows = _windows(agg.outbox)

    assert [(w.window_start_ms, w.window_end_ms) for w in windows] == [(W0, W0 + 1_000), (W0 + 1_000, W0 + 2_000)]
    assert [w.item_events for w in windows] == [6, 4]
    first, second = (window_arrays(w)[0] for w in windows)
    assert first[FIELD_INDEX["requests"]].sum() == 2
    assert second[FIELD_INDEX["requests"]].sum() == 1
    assert second[FIELD_INDEX["clicks"]].sum() == 1
    assert all(not w.late for w in windows)
    assert all(w.source_partition == 3 and w.source_topic == TOPIC for w in windows)
    assert windows[0].partial_id != windows[1].partial_id
    assert all(r.key == b"home|control" for r in agg.outbox)
    assert agg.counters.windows_closed == 2


def test_groups_split_by_surface_arm_and_cohort() -> None:
    agg = PartitionAggregator(SPEC, TOPIC, 0)
    agg.add_message(
        0,
        [
            _imp(W0, arm_id="control"),
            _imp(W0, arm_id="treatment"),
            _imp(W0, surface="search"),
            _imp(W0, cohort="returning"),
            _imp(W0 + 1),
        ],
    )
    agg.close_all()
    windows = _windows(agg.outbox)
    keys = sorted((w.surface, w.arm_id, w.cohort) for w in windows)
    assert keys == [
        ("home", "control", "new"),
        ("home", "control", "returning"),
        ("home", "treatment", "new"),
        ("search", "control", "new"),
    ]
    assert len({w.partial_id for w in windows}) == 4
    assert {(w.surface, w.arm_id, w.cohort): w.item_events for w in windows} == {
        ("home", "control", "new"): 6,
        ("home", "control", "returning"): 3,
        ("home", "treatment", "new"): 3,
        ("search", "control", "new"): 3,
    }


@pytest.mark.parametrize("lateness", [0, 200, 5_000])
def test_window_closes_only_once_watermark_passes_end_plus_lateness(lateness: int) -> None:
    spec = WindowSpec(width_ms=1_000, allowed_lateness_ms=lateness, buckets=16)
    agg = PartitionAggregator(spec, TOPIC, 0)
    agg.add_message(0, [_imp(W0 + 10)])
    assert agg.close_due() == 0
    end = W0 + 1_000
    # watermark one millisecond short: still open (even though later windows started)
    agg.add_message(1, [_imp(end + lateness - 1, "u2")])
    assert agg.close_due() == 0
    assert agg.outbox == []
    assert agg.has_open_windows()
    # watermark reaches end + lateness: the first window closes, the newer one stays open
    agg.add_message(2, [_imp(end + lateness, "u3")])
    assert agg.close_due() == 1
    (window,) = _windows(agg.outbox)
    assert window.window_start_ms == W0
    # with no lateness the second event (end - 1) still fell into the first window
    assert window.item_events == (6 if lateness == 0 else 3)
    assert agg.watermark_ms == end + lateness
    assert agg.closed_through_ms >= end
    assert agg.has_open_windows()
    assert agg.close_due() == 0  # nothing more is due


def test_watermark_is_the_newest_event_time_and_never_goes_back() -> None:
    agg = PartitionAggregator(SPEC, TOPIC, 0)
    agg.add_message(0, [_imp(W0 + 5_000), _imp(W0 + 100)])
    assert agg.watermark_ms == W0 + 5_000
    agg.add_message(1, [_imp(W0 + 4_000)])
    assert agg.watermark_ms == W0 + 5_000
    assert agg.next_offset == 2


def test_late_event_is_counted_published_as_late_and_never_dropped() -> None:
    agg = PartitionAggregator(SPEC, TOPIC, 0)
    agg.add_message(0, [_imp(W0 + 100), _conv(W0 + 101, 30.0)])
    agg.add_message(1, [_imp(W0 + 1_300, "u2")])  # watermark passes W0+1000+200: window W0 closes
    assert agg.close_due() == 1
    assert agg.counters.late_item_events == 0

    late: list[Event] = [_imp(W0 + 500, "u3"), _click(W0 + 999, "u3"), _conv(W0 + 999, 12.5, "u3")]
    agg.add_message(2, late)
    assert agg.counters.late_item_events == 5
    assert agg.counters.item_events == 4 + 3 + 5
    assert agg.close_due() == 0  # nothing on time is due; the late group waits for the next close

    # a second batch of late events for the same window, after the first late partial
    agg.close_all()
    agg.add_message(3, [_click(W0 + 10, "u4")])
    assert agg.counters.late_item_events == 6
    agg.close_all()

    windows = _windows(agg.outbox)
    late_windows = [w for w in windows if w.late]
    assert [(w.window_start_ms, w.item_events) for w in late_windows] == [(W0, 5), (W0, 1)]
    assert len({w.partial_id for w in late_windows}) == 2
    on_time_ids = {w.partial_id for w in windows if not w.late}
    assert not on_time_ids & {w.partial_id for w in late_windows}

    merged = merge_by_arm(_by_partial_id(windows))
    totals = merged[("home", "control")]
    assert totals.total("requests") == 3
    assert totals.total("clicks") == 2
    assert totals.total("conversions") == 2
    assert totals.total("revenue") == pytest.approx(42.5)
    assert totals.item_events == agg.counters.item_events == 13
    assert totals.late_item_events == 6
    assert totals.windows == 2


def test_close_all_closes_everything_and_later_events_in_those_windows_are_late() -> None:
    agg = PartitionAggregator(SPEC, TOPIC, 0)
    agg.add_message(0, [_imp(W0), _imp(W0 + 2_500, "u2")])
    assert agg.close_all() == 2
    assert not agg.has_open_windows()
    assert agg.close_all() == 0
    agg.add_message(1, [_imp(W0 + 2_999, "u3")])
    assert agg.counters.late_item_events == 3
    agg.add_message(2, [_imp(W0 + 3_000, "u3")])  # next window: on time again
    assert agg.counters.late_item_events == 3
    assert agg.close_all() == 2
    assert [(w.window_start_ms, w.late) for w in _windows(agg.outbox)[2:]] == [(W0 + 2_000, True), (W0 + 3_000, False)]


# -- diversity, latency, revenue counters ---------------------------------------------


def test_diversity_latency_and_revenue_counters_are_exact() -> None:
    items = (
        _item(0, "dresses", "s1", tail=True),
        _item(1, "dresses", "s1"),  # same style as item 0: a near-duplicate
        _item(2, "tops", None, tail=True),  # own style (its item id)
        _item(3, "shoes", "s2", fresh=True),
        _item(4, "tops", "s2", fresh=True),  # same style as item 3
    )
    spec = WindowSpec(width_ms=60_000, allowed_lateness_ms=0, buckets=32)
    start = spec.start_of(T0)
    agg = PartitionAggregator(spec, TOPIC, 0)
    agg.add_message(
        0,
        [
            _imp(start + 1, "alice", items=items, latency=25.0),
            _imp(start + 2, "alice", items=(_item(0, "bags"),), latency=40.5),
            _click(start + 3, "alice"),
            _conv(start + 4, 50.0, "alice"),
            _conv(start + 5, 20.0, "alice"),
        ],
    )
    agg.close_all()
    (window,) = _windows(agg.outbox)
    sums, hist = window_arrays(window)

    col = user_bucket("alice", 32)
    assert window.bucket_ids == (col,)
    expected = {
        "requests": 2,
        "impressions": 6,
        "clicks": 1,
        "conversions": 2,
        "revenue": 70.0,
        "revenue_sq": 2_500.0 + 400.0,
        "latency_ms": 65.5,
        "latency_ms_sq": 625.0 + 40.5**2,
        "distinct_categories": 3 + 1,
        "near_duplicates": 2 + 0,
        "long_tail": 2,
        "fresh": 2,
    }
    assert {name: sums[FIELD_INDEX[name], col] for name in BUCKET_FIELDS} == pytest.approx(expected)
    assert np.count_nonzero(sums[:, np.arange(32) != col]) == 0
    # one histogram entry per request; clicks and conversions carry no latency
    assert hist.sum() == 2
    assert hist[latency_bins([25.0])[0]] == 1
    assert hist[latency_bins([40.5])[0]] == 1
    assert window.item_events == 6 + 1 + 2
    assert window.config_versions == (3,)


@settings(max_examples=50, deadline=None)
@given(
    latencies=st.lists(st.floats(0.0, 600_000.0), min_size=1, max_size=20),
    clicks=st.integers(0, 20),
    fold_every=st.integers(1, 5),
)
def test_latency_sums_ignore_clicks_and_conversions(latencies: list[float], clicks: int, fold_every: int) -> None:
    agg = PartitionAggregator(SPEC, TOPIC, 0)
    events: list[Event] = [_imp(W0 + i, f"u{i}", latency=lat) for i, lat in enumerate(latencies)]
    events += [_click(W0 + i, f"u{i}") for i in range(clicks)]
    events += [_conv(W0 + i, 10.0, f"u{i}") for i in range(clicks // 2)]
    random.Random(clicks).shuffle(events)
    for offset in range(0, len(events), fold_every):
        agg.add_message(offset, events[offset : offset + fold_every])
        agg.fold()
    agg.close_all()
    totals = merge_by_arm(_by_partial_id(_windows(agg.outbox)))[("home", "control")]
    assert totals.total("latency_ms") == pytest.approx(sum(latencies), rel=1e-9, abs=1e-6)
    assert totals.total("latency_ms_sq") == pytest.approx(sum(x * x for x in latencies), rel=1e-9, abs=1e-6)
    assert int(totals.latency_hist.sum()) == len(latencies)
    assert np.array_equal(totals.latency_hist, np.bincount(latency_bins(latencies), minlength=N_LATENCY_BINS))


# -- dead letters ---------------------------------------------------------------------


def _letters(agg: PartitionAggregator) -> list[DeadLetter]:
    return [msgspec.json.decode(r.value, type=DeadLetter) for r in agg.outbox if r.topic == DLQ.name]


def test_rejected_event_becomes_a_dead_letter_with_its_coordinates() -> None:
    good = [_imp(W0), _imp(W0 + 1, "u2")]
    envelope = msgspec.json.decode(encode_batch("s", 9, good))
    envelope["events"].insert(1, {**msgspec.to_builtins(good[0]), "config_version": -4})
    payload = msgspec.json.encode(envelope)
    decoded = decode_message(payload)
    assert len(decoded.rejected) == 1

    agg = PartitionAggregator(SPEC, TOPIC, 5)
    agg.add_message(17, decoded.events)
    for rejected in decoded.rejected:
        agg.reject(offset=17, event_index=rejected.index, error=rejected.error, payload=payload, seen_ms=T0 + 99)

    (record,) = [r for r in agg.outbox if r.topic == DLQ.name]
    assert record.topic == "rectune.dlq"
    assert record.key == f"{TOPIC}:5:17:1".encode()
    (letter,) = _letters(agg)
    assert letter.source_topic == TOPIC
    assert letter.source_partition == 5
    assert letter.source_offset == 17
    assert letter.event_index == 1
    assert letter.field == "events[1].config_version"
    assert letter.rule == decoded.rejected[0].error.rule
    assert letter.rule
    assert "events[1].config_version" in letter.reason
    assert base64.b64decode(letter.payload_b64) == payload
    assert letter.payload_bytes == len(payload)
    assert letter.payload_sha256 == hashlib.sha256(payload).hexdigest()
    assert letter.truncated is False
    assert letter.seen_ms == T0 + 99
    c = agg.counters
    assert (c.messages, c.rejected_messages, c.rejected_events, c.item_events) == (1, 0, 1, 6)
    assert agg.next_offset == 18


def test_refused_message_becomes_a_dead_letter_and_advances_the_offset() -> None:
    agg = PartitionAggregator(SPEC, TOPIC, 0)
    payload = b"{not json"
    with pytest.raises(DecodeError) as info:
        decode_message(payload)
    agg.reject(offset=41, event_index=None, error=info.value, payload=payload, seen_ms=1)
    (letter,) = _letters(agg)
    assert letter.event_index is None
    assert letter.source_offset == 41
    assert letter.field == "$"
    assert letter.rule == info.value.rule
    assert base64.b64decode(letter.payload_b64) == payload
    assert agg.outbox[0].key == f"{TOPIC}:0:41:None".encode()
    c = agg.counters
    assert (c.messages, c.rejected_messages, c.rejected_events) == (1, 1, 0)
    assert agg.next_offset == 42
    assert agg.close_all() == 0  # a dead letter opens no window


def test_big_payload_is_truncated_in_the_dead_letter_but_located_and_hashed() -> None:
    payload = bytes(range(256)) * (MAX_DLQ_PAYLOAD_BYTES // 256 + 3)
    agg = PartitionAggregator(SPEC, TOPIC, 2)
    agg.reject(offset=0, event_index=None, error=DecodeError("$", "too big"), payload=payload, seen_ms=0)
    (letter,) = _letters(agg)
    assert letter.truncated is True
    assert base64.b64decode(letter.payload_b64) == payload[:MAX_DLQ_PAYLOAD_BYTES]
    assert letter.payload_bytes == len(payload)
    assert letter.payload_sha256 == hashlib.sha256(payload).hexdigest()
    assert (letter.field, letter.rule) == ("$", "too big")
