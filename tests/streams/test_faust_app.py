"""The Faust wiring keeps the settings the throughput of `rectune worker` depends on (no broker needed)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from faust.sensors import Monitor
from faust.types import TP

from streams.app import build_app
from streams.faust_delivery import DeliveryConsumer
from streams.processor import StreamConfig


async def test_app_keeps_the_leader_topic_out_of_fetches_and_quiets_per_message_sensors() -> None:
    app, processor = build_app(StreamConfig(topic="rectune.events"), bootstrap="127.0.0.1:1", app_id="t-app")
    # The leader-election topic, when subscribed, parks fetches for 1.5 s (streams/app.py docstring).
    assert app.conf.topic_disable_leader is True
    monitor = app.monitor
    assert isinstance(monitor, Monitor)
    before = (monitor.messages_received_total, monitor.events_total, monitor.messages_active)
    nothing: Any = object()  # the quiet hooks must not even look at their arguments
    monitor.on_message_in(nothing, 1, nothing)
    assert monitor.on_stream_event_in(nothing, 1, nothing, nothing) is None
    monitor.on_stream_event_out(nothing, 1, nothing, nothing, None)
    monitor.on_message_out(nothing, 1, nothing)
    monitor.track_tp_end_offset(nothing, 5)
    assert (monitor.messages_received_total, monitor.events_total, monitor.messages_active) == before
    # ... while everything else Faust reports (commits, sends, rebalances) is the stock monitor's.
    assert type(monitor).on_commit_completed is Monitor.on_commit_completed
    assert processor.assigned() == []


class _Msg:
    """The fields of a Faust `Message` the drain loop reads."""

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.topic = "rectune.events"


class _Fetcher:
    def __init__(self) -> None:
        self._stopped = asyncio.Event()


async def _drain(app: Any, offsets: list[int], deliver: Any) -> _Fetcher:
    """Run the app consumer's drain loop over one fetched batch, then stop it."""
    consumer = app.consumer
    fetcher = _Fetcher()
    tp = TP("rectune.events", 0)

    async def getmany(timeout: float) -> AsyncIterator[tuple[TP, _Msg]]:
        if fetcher._stopped.is_set():
            return
        for offset in offsets:
            yield tp, _Msg(offset)
        fetcher._stopped.set()  # one batch, then the loop ends

    consumer.getmany = getmany
    consumer.callback = deliver
    await asyncio.wait_for(consumer._drain_messages(fetcher), timeout=5)
    return fetcher


async def test_the_faust_consumer_delivers_inline_in_offset_order_and_drops_reread_offsets() -> None:
    app, _ = build_app(StreamConfig(topic="rectune.events"), bootstrap="127.0.0.1:1", app_id="t-drain")
    assert isinstance(app.consumer, DeliveryConsumer)
    seen: list[int] = []

    async def deliver(message: _Msg) -> None:
        seen.append(message.offset)

    await _drain(app, [5, 6, 4, 7, 7, 9], deliver)
    # 4 arrives after 6 was read: dropped, as Faust drops it; 7 twice: delivered again (offset >= read offset).
    assert seen == [5, 6, 7, 7, 9]
    assert app.consumer._read_offset[TP("rectune.events", 0)] == 9


async def test_a_suspended_flow_does_not_wedge_the_drain_loop_on_a_blocked_delivery() -> None:
    app, _ = build_app(StreamConfig(topic="rectune.events"), bootstrap="127.0.0.1:1", app_id="t-drain-s")
    app.consumer.suspend_flow.set()  # a rebalance is under way
    started: list[int] = []

    async def deliver(message: _Msg) -> None:
        started.append(message.offset)
        await asyncio.Event().wait()  # a full stream buffer that never drains

    # Inline, the first delivery would hang the loop (and this wait_for would time out);
    # raced against the suspension, each delivery is cancelled and the loop reads on.
    fetcher = await _drain(app, [1, 2, 3], deliver)
    assert fetcher._stopped.is_set()
    assert app.consumer._read_offset[TP("rectune.events", 0)] == 3
