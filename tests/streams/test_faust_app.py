"""The Faust wiring keeps the settings the throughput of `rectune worker` depends on (no broker needed)."""

from __future__ import annotations

from typing import Any

from faust.sensors import Monitor

from streams.app import build_app
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
