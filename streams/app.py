"""The Faust app: a thin wiring of `StreamProcessor` into a Faust worker.

`build_app` is called by `rectune worker`; everything it does is plumbing:
declare the topics, hand each message to the processor, run the processor's
periodic duty on a timer, and pass rebalances on.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, cast

import faust
from faust.types import TP

from schemas.topics import EVENTS, state_topic
from streams.kafka_io import FaustStreamIO
from streams.processor import StreamConfig, StreamProcessor

log = logging.getLogger(__name__)


def build_app(
    config: StreamConfig,
    *,
    bootstrap: str,
    app_id: str = "rectune-streams",
    events_partitions: int = EVENTS.partitions,
    session_timeout_s: float = 10.0,
) -> tuple[faust.App, StreamProcessor]:
    """Make the Faust app and its processor (one per worker process)."""
    app = faust.App(
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
