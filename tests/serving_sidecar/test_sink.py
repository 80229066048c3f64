"""Tracking tokens (pure) and the event sink (real broker): attribution rides on every event.

The sink must never block the ranker, pack envelopes of about 100 item events
with an increasing seq per source, survive a broker that is down at start,
and drop the *oldest* events (counted) when its buffer is full.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from rectune.admin import ensure_topics
from rectune.embedded import free_port, start_tansu
from schemas.decode import decode_batch
from schemas.events import Click, Conversion, Event, EventBatch, Impression, ShownItem, item_events
from schemas.topics import EVENTS
from serving_sidecar.loop_thread import LoopThread
from serving_sidecar.sink import EventSink, pack_events
from serving_sidecar.tracking import TrackingError, TrackingToken

T0 = 1_767_225_600_000


def token(request: int = 1, arm: str = "t1", version: int = 7) -> TrackingToken:
    return TrackingToken.for_arm(
        request_id=f"req-{request}",
        user_id=f"user-{request % 13}",
        cohort="new",
        surface="home",
        arm_id=arm,
        config_version=version,
        event_time_ms=T0 + request,
    )


def items(n: int = 12) -> list[ShownItem]:
    return [ShownItem(item_id=f"i{k}", position=k, category="shoes", scores=(1.0, 0.5, 0.25)) for k in range(n)]


# -- tracking tokens (pure) --------------------------------------------------------------


def test_token_stamps_arm_and_config_version_into_every_event() -> None:
    tok = token()
    imp = tok.impression(items(), ranker_latency_ms=12.5)
    text = tok.encode()
    assert text.isascii() and "=" not in text and len(text) < 200
    back = TrackingToken.decode(text)  # what the page sends back with a click
    click = back.click("i3", 3, T0 + 5_000)
    conv = back.conversion("i3", 49.9, T0 + 60_000)
    for event in (imp, click, conv):
        assert (event.arm_id, event.config_version, event.request_id, event.user_id) == ("t1", 7, "req-1", "user-1")
        assert (event.cohort, event.surface, event.schema_version) == ("new", "home", 1)
    assert isinstance(imp, Impression) and imp.event_time_ms == T0 + 1 and item_events(imp) == 12
    assert isinstance(click, Click) and click.position == 3
    assert isinstance(conv, Conversion) and conv.revenue == 49.9
    # Deterministic ids: a click reported twice is recognisable downstream.
    assert back.click("i3", 3, T0 + 5_000).event_id == click.event_id != conv.event_id


@pytest.mark.parametrize(
    "text",
    ["", "not base64 !!", "W10", "WzEsInIiXQ", "x" * 5000],  # W10 = "[]", WzEsInIiXQ = '[1,"r"]'
)
def test_bad_tokens_are_refused(text: str) -> None:
    with pytest.raises(TrackingError):
        TrackingToken.decode(text)


def test_token_bounds_are_checked_when_created() -> None:
    with pytest.raises(TrackingError):
        token(version=-1)
    with pytest.raises(TrackingError):
        TrackingToken.for_arm(
            request_id="r" * 300, user_id="u", cohort="c", surface="s", arm_id="a", config_version=1, event_time_ms=T0
        )
    long_request = TrackingToken.for_arm(
        request_id="r" * 256, user_id="u", cohort="c", surface="s", arm_id="a", config_version=1, event_time_ms=T0
    )
    assert len(long_request.click("item", 0, T0).event_id) <= 256  # hashed, still within the id limit


def test_pack_events_closes_envelopes_at_the_target() -> None:
    events: list[Event] = [token(i).impression(items(12), 1.0) for i in range(20)]
    groups = pack_events(events, 100)
    assert [sum(item_events(e) for e in g) for g in groups] == [108, 108, 24]
    assert [e for g in groups for e in g] == events


# -- the sink on a real broker ---------------------------------------------------------------


async def read_envelopes(bootstrap: str, topic: str = EVENTS.name) -> list[EventBatch]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or set())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[EventBatch] = []
        while True:
            batch = await consumer.getmany(*tps, timeout_ms=300)
            for records in batch.values():
                out.extend(decode_batch(r.value) for r in records if r.value is not None)
            if not batch and all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                return out
    finally:
        await consumer.stop()


def request_events(n_requests: int, arm: str = "t1") -> list[Event]:
    out: list[Event] = []
    for i in range(n_requests):
        tok = token(i, arm=arm)
        out.append(tok.impression(items(12), 3.0))
        if i % 3 == 0:
            out.append(tok.click(f"i{i % 12}", i % 12, T0 + i + 1_000))
        if i % 9 == 0:
            out.append(tok.conversion(f"i{i % 12}", 10.0, T0 + i + 9_000))
    return out


def check_envelopes(envelopes: list[EventBatch], source_id: str, expected: list[Event], max_items: int) -> None:
    assert {e.source_id for e in envelopes} == {source_id}
    seqs = sorted(e.seq for e in envelopes)
    assert len(set(seqs)) == len(seqs) and seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    for env in envelopes:
        assert sum(item_events(e) for e in env.events) < max_items + 12
    got = sorted((e.event_id for env in envelopes for e in env.events), key=str)
    assert got == sorted((e.event_id for e in expected), key=str)


def test_thread_hosted_sink_publishes_envelopes_from_many_threads(tansu_broker: str) -> None:
    asyncio.run(ensure_topics(tansu_broker, [EVENTS]))
    sink = EventSink(tansu_broker, "ranker-a", max_item_events=100)
    sink.start_in_thread()
    per_thread = [request_events(50, arm=f"arm{t}") for t in range(4)]
    slowest: list[float] = []

    def ranker(events: list[Event]) -> None:
        worst = 0.0
        for event in events:
            t = time.perf_counter()
            sink.emit(event)
            worst = max(worst, time.perf_counter() - t)
        slowest.append(worst)

    threads = [threading.Thread(target=ranker, args=(ev,)) for ev in per_thread]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sink.flush(30)
    stats = sink.stats()
    sink.close()
    expected = [e for ev in per_thread for e in ev]
    assert (stats.emitted, stats.sent, stats.dropped, stats.pending) == (len(expected), len(expected), 0, 0)
    assert max(slowest) < 0.05  # emit never waits for the broker
    envelopes = asyncio.run(read_envelopes(tansu_broker))
    check_envelopes(envelopes, "ranker-a", expected, 100)
    assert stats.messages_sent == len(envelopes) and stats.last_seq == max(e.seq for e in envelopes)


async def test_asyncio_hosted_sink_drains_and_stops(tansu_broker: str) -> None:
    await ensure_topics(tansu_broker, [EVENTS])
    sink = EventSink(tansu_broker, "ranker-b", max_item_events=50, start_seq=1_000)
    await sink.start()
    events = request_events(30)
    for event in events:
        sink.emit(event)
    assert await sink.drain(30)
    await sink.stop()
    envelopes = await read_envelopes(tansu_broker)
    check_envelopes(envelopes, "ranker-b", events, 50)
    assert min(e.seq for e in envelopes) == 1_000


def test_broker_down_at_start_then_up_delivers_everything(tmp_path: Path) -> None:
    port = free_port()
    sink = EventSink(f"127.0.0.1:{port}", "ranker-c", request_timeout_ms=3_000)
    loop = LoopThread().start()
    try:
        sink.start_in_thread(loop)
        events = request_events(20)
        t = time.perf_counter()
        for event in events:
            sink.emit(event)
        assert time.perf_counter() - t < 0.1  # nothing listens on the port: emit still returns at once
        time.sleep(1.0)
        assert sink.stats().sent == 0 and sink.stats().pending == len(events)
        with start_tansu(tmp_path / "tansu", port=port) as broker:
            asyncio.run(ensure_topics(broker.bootstrap, [EVENTS]))
            assert sink.flush(30)
            sink.close()
            assert sink.stats().sent == len(events) and sink.stats().send_errors > 0
            check_envelopes(asyncio.run(read_envelopes(broker.bootstrap)), "ranker-c", events, 100)
    finally:
        loop.stop()


def test_full_buffer_drops_the_oldest_and_counts_them(tansu_broker: str) -> None:
    asyncio.run(ensure_topics(tansu_broker, [EVENTS]))
    sink = EventSink(tansu_broker, "ranker-d", max_buffered_events=10)
    events = request_events(25)[:25]
    for event in events:  # not started yet: everything waits in the buffer
        sink.emit(event)
    assert (sink.stats().dropped, sink.stats().pending) == (15, 10)
    sink.start_in_thread()
    assert sink.flush(30)
    sink.close()
    delivered = [e for env in asyncio.run(read_envelopes(tansu_broker)) for e in env.events]
    assert sorted(e.event_id for e in delivered) == sorted(e.event_id for e in events[-10:])


def test_close_with_the_broker_gone_gives_up_and_counts_the_loss() -> None:
    sink = EventSink(f"127.0.0.1:{free_port()}", "ranker-e", request_timeout_ms=1_000)
    sink.start_in_thread()
    for event in request_events(5):
        sink.emit(event)
    t = time.perf_counter()
    sink.close(timeout_s=0.5)
    assert time.perf_counter() - t < 8
    stats = sink.stats()
    assert stats.sent == 0 and stats.lost == stats.emitted > 0 and stats.pending == 0
