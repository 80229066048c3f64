"""The Faust app: a thin wiring of `StreamProcessor` into a Faust worker.

`build_app` is called by `rectune worker`; everything it does is plumbing:
declare the topics, hand each message to the processor, run the processor's
periodic duty on a timer, and pass rebalances on.

Settings that matter for throughput (bench/pipeline.py): `topic_disable_leader`
keeps Faust's empty leader-election topic out of the consumer's fetches.  Once
every events partition holds fetched-but-unread records, the next fetch asks
for that empty partition alone; the broker parks it for Faust's fixed 1.5 s
`fetch_max_wait`, and aiokafka starts no other fetch to that broker meanwhile,
so the stream stalled for up to 1.5 s at a time.  `_QuietMonitor` drops Faust's
per-message and per-event bookkeeping (~11 us per message), which only feeds
the web stats we disable.  `RectuneFaustApp` (`streams.faust_delivery`) hands
messages from consumer to stream without Faust's per-message task race.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, cast

import faust
from faust.sensors import Monitor
from faust.types import TP
from faust.types.streams import StreamT
from faust.types.tuples import Message

from schemas.topics import EVENTS, state_topic
from streams.faust_delivery import RectuneFaustApp
from streams.kafka_io import FaustStreamIO
from streams.processor import StreamConfig, StreamProcessor

log = logging.getLogger(__name__)


class _QuietMonitor(Monitor):
    """Faust's monitor without its per-message and per-event hooks (kept: commits, sends, rebalances)."""

    def on_message_in(self, tp: TP, offset: int, message: Message) -> None:
        return None

    def on_stream_event_in(self, tp: TP, offset: int, stream: StreamT[Any], event: Any) -> dict[str, Any] | None:
        return None

    def on_stream_event_out(
        self, tp: TP, offset: int, stream: StreamT[Any], event: Any, state: dict[str, Any] | None = None
    ) -> None:
        return None

    def on_message_out(self, tp: TP, offset: int, message: Message) -> None:
        return None

    def track_tp_end_offset(self, tp: TP, offset: int) -> None:
        return None


def build_app(
    config: StreamConfig,
    *,
    bootstrap: str,
    app_id: str = "rectune-streams",
    events_partitions: int = EVENTS.partitions,
    session_timeout_s: float = 10.0,
) -> tuple[faust.App, StreamProcessor]:
    """Make the Faust app and its processor (one per worker process)."""
    app = RectuneFaustApp(
        app_id,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        web_enabled=False,
        topic_partitions=events_partitions,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=session_timeout_s,
        broker_heartbeat_interval=min(3.0, session_timeout_s / 3),
        broker_commit_livelock_soft_timeout=24 * 3600.0,
        stream_buffer_maxsize=4096,
        producer_linger_ms=1,
        # Checkpoints are compressed only above 512 KB (streams.checkpoint): leave room.
        producer_max_request_size=8 * 1024 * 1024,
        topic_disable_leader=True,  # we use no on_leader timers/tasks; see the module docstring
        Monitor=_QuietMonitor,
    )
    io = FaustStreamIO(app, bootstrap, config.topic, state_topic(app_id, events_partitions).name, TP)
    processor = config.build(io)
    source = app.topic(
        config.topic,
        value_type=bytes,
        key_type=bytes,
        value_serializer="raw",
        key_serializer="raw",
        acks=False,
        partitions=events_partitions,
    )
    loop_time = app.loop.time

    @app.agent(source, name="rectune-aggregate")
    async def aggregate(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        on_message = processor.on_message
        async for event in stream.events():
            message = event.message
            await on_message(
                message.partition, message.offset, message.value, int(message.timestamp * 1000), loop_time()
            )
        yield None

    async def tick() -> None:
        await processor.tick(loop_time())

    app.timer(interval=config.checkpoint_interval_s)(tick)

    async def on_assigned(sender: Any, assigned: set[TP], **_: Any) -> None:
        await processor.assign([tp.partition for tp in assigned if tp.topic == config.topic], loop_time())

    async def on_revoked(sender: Any, revoked: set[TP], **_: Any) -> None:
        await processor.revoke([tp.partition for tp in revoked if tp.topic == config.topic])

    async def on_shutdown(sender: Any, **_: Any) -> None:
        try:
            await processor.checkpoint_all()
        except Exception:  # the next owner replays from the last good checkpoint
            log.warning("final checkpoint failed", exc_info=True)

    # Faust's signal stubs expect a `signal` keyword our handlers swallow in **_.
    app.on_partitions_assigned.connect(cast(Any, on_assigned))
    app.on_partitions_revoked.connect(cast(Any, on_revoked))
    app.on_before_shutdown.connect(cast(Any, on_shutdown))
    return app, processor
