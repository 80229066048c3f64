"""A second engine for the stream worker: `StreamProcessor` driven by a plain aiokafka consumer.

The Faust app (`streams.app`) pays Faust's delivery path per message.  With
stock Faust that was 220-310 us of CPU per message against 55-65 us here;
after `streams.faust_delivery` removed its per-message task race, two Faust
workers reach 0.8-1.2x two bare consumers (BENCHMARKS.md), and this loop stays
the leaner of the two (fewer threads, less memory).  This engine feeds the
very same processor (same decoding, aggregation, checkpoint -> outbox ->
commit protocol, same checkpoint topic layout) from `getmany()` batches, with
a rebalance listener for assign/revoke and a timer task for `tick`.  Thin
adapter: no aggregation logic lives here.  Chosen with `RECTUNE_ENGINE=direct`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from streams.aggregate import OutRecord
from streams.errors import StreamsError
from streams.kafka_io import read_latest
from streams.processor import StreamConfig, StreamProcessor

log = logging.getLogger(__name__)


class DirectStreamIO:
    """Implements `streams.processor.StreamIO` with one aiokafka consumer and producer."""

    def __init__(
        self,
        bootstrap: str,
        source_topic: str,
        state_topic: str,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
    ) -> None:
        self._bootstrap = bootstrap
        self._source = source_topic
        self._state = state_topic
        self._consumer = consumer
        self._producer = producer

    async def load_checkpoint(self, partition: int) -> bytes | None:
        return await read_latest(self._bootstrap, self._state, partition)

    async def write_checkpoint(self, partition: int, data: bytes) -> None:
        await self._producer.send_and_wait(self._state, data, key=str(partition).encode(), partition=partition)

    async def publish(self, records: Iterable[OutRecord]) -> None:
        futures = [await self._producer.send(r.topic, r.value, key=r.key) for r in records]
        for future in futures:
            await future

    async def commit(self, partition: int, next_offset: int) -> None:
        try:
            await self._consumer.commit({TopicPartition(self._source, partition): next_offset})
        except Exception:  # a failed commit only means more replay, never loss
            log.warning("commit of %s[%d]=%d failed", self._source, partition, next_offset, exc_info=True)

    async def seek(self, partition: int, offset: int) -> None:
        self._consumer.seek(TopicPartition(self._source, partition), offset)

    def owns(self, partition: int) -> bool:
        return TopicPartition(self._source, partition) in self._consumer.assignment()


class CheckpointStalledError(StreamsError):
    """The direct engine's checkpoints kept failing for longer than `run_direct` allows."""


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Hands partition moves to the processor (awaited by aiokafka before it rejoins)."""

    def __init__(self, processor: StreamProcessor, topic: str, loop: asyncio.AbstractEventLoop) -> None:
        self._processor = processor
        self._topic = topic
        self._loop = loop

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._processor.revoke([tp.partition for tp in revoked if tp.topic == self._topic])

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._processor.assign([tp.partition for tp in assigned if tp.topic == self._topic], self._loop.time())


async def run_direct(
    config: StreamConfig,
    *,
    bootstrap: str,
    group_id: str,
    state_topic: str,
    session_timeout_s: float = 10.0,
    checkpoint_failure_limit_s: float = 60.0,
    stop: asyncio.Event | None = None,
) -> None:
    """Run the worker until `stop` is set (or SIGTERM/SIGINT); checkpoints everything on the way out.

    Called by `rectune worker` when `RECTUNE_ENGINE=direct`.  A failed periodic
    checkpoint is logged and retried on the next tick; if ticks keep failing
    for `checkpoint_failure_limit_s` after the first failure (the first is
    always retried at least once), the worker stops and this raises
    `CheckpointStalledError` rather than consume without progress.  Either
    way the final checkpoint is attempted and both Kafka clients are stopped.
    """
    if not checkpoint_failure_limit_s >= 0:  # also refuses NaN
        msg = f"checkpoint_failure_limit_s must be >= 0 seconds, got {checkpoint_failure_limit_s!r}"
        raise StreamsError(msg, hint="pass how long failing checkpoints are retried before the worker stops, e.g. 60")
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    session_ms = int(session_timeout_s * 1000)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=session_ms,
        heartbeat_interval_ms=max(100, session_ms // 3),
        max_poll_interval_ms=max(300_000, session_ms * 3),
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=1, max_request_size=8 * 1024 * 1024)
    await producer.start()
    processor = config.build(DirectStreamIO(bootstrap, config.topic, state_topic, consumer, producer))
    consumer.subscribe([config.topic], listener=_Rebalance(processor, config.topic, loop))
    await consumer.start()

    async def ticker() -> None:
        # A failed tick leaves its partitions dirty (StreamProcessor.checkpoint),
        # so retrying is just the next tick.  Dying here instead would leave the
        # worker consuming without ever checkpointing or committing again.
        failing_since: float | None = None
        failures = 0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), config.checkpoint_interval_s)
            try:
                await processor.tick(loop.time())
            except Exception as err:
                failures += 1
                now = loop.time()
                if failing_since is None:
                    failing_since = now
                if stop.is_set():  # shutting down: the final checkpoint retries it
                    log.warning("checkpoint tick failed during shutdown", exc_info=True)
                    return
                if now - failing_since >= checkpoint_failure_limit_s and failures > 1:
                    stop.set()
                    msg = (
                        f"checkpoints of {config.topic} failed {failures} ticks in a row over "
                        f"{now - failing_since:.1f} s (limit {checkpoint_failure_limit_s:g} s): {err!r}; "
                        "stopping the worker instead of consuming without checkpoints or commits"
                    )
                    raise CheckpointStalledError(
                        msg,
                        hint="check the broker and the state topic; a restarted worker resumes at its last checkpoint",
                    ) from err
                log.warning(
                    "checkpoint tick failed (%d in a row); retrying in %g s",
                    failures,
                    config.checkpoint_interval_s,
                    exc_info=True,
                )
            else:
                if failures:
                    log.warning("checkpoint tick succeeded again after %d failed ticks", failures)
                failing_since = None
                failures = 0

    timer = asyncio.create_task(ticker())
    on_message = processor.on_message
    failure: BaseException | None = None  # what the consuming loop raised, if anything
    stalled: BaseException | None = None  # what the ticker raised, if anything
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=1000)
            now = loop.time()
            for tp, records in batch.items():
                for record in records:
                    # A tombstone (value None) goes on too: it is dead-lettered, as under Faust.
                    await on_message(tp.partition, record.offset, record.value, record.timestamp, now)
    except BaseException as err:
        failure = err
        raise
    finally:
        stop.set()
        for sig in handled:
            loop.remove_signal_handler(sig)
        try:
            await timer
        except asyncio.CancelledError:
            pass
        except Exception as err:  # raised below, once the clients are stopped
            stalled = err
            if failure is not None:  # `failure` propagates instead: do not drop this one silently
                log.error("checkpoint ticker had failed too", exc_info=err)
        try:
            await processor.checkpoint_all()
        except Exception:  # the next owner replays from the last good checkpoint
            log.warning("final checkpoint failed", exc_info=True)
        try:
            await consumer.stop()
        finally:
            await producer.stop()
    if stalled is not None:
        raise stalled
