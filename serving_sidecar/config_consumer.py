"""The sidecar's config consumer: a background fold of `rectune.config` into the config holder.

Inside every ranker replica one `ConfigConsumer` reads the single partition
of `rectune.config` from offset 0 (no consumer group: every replica folds the
whole log) and applies each record with `schemas.config_log.apply`, in offset
order, which is version order.  For each record:

- accepted (signature, version chain, schema, cross-field rules and
  guardrails all pass): the next `ServingState` becomes a `Snapshot` that is
  swapped into the `ConfigHolder` (breaker-opened arms carry over while the
  arm keeps its experiment and config version), and after the batch the
  last-known-good record is saved to Redis;
- refused (undecodable, unsigned, forged, unknown key, out of order, out of
  bounds, guardrail breach): a critical `config_refused` alert names the
  version, field and rule, and nothing changes: the head does not move and
  the holder keeps the very same snapshot object.

On start the consumer first restores last-known-good from Redis (so serving
begins at once, broker or not), then folds the topic from the beginning; it
never swaps in a snapshot older than the one being served, so catching up
after an LKG restore cannot flap serving back through old versions.  If the
broker goes away the holder keeps serving what it has; aiokafka reconnects by
itself, and if the consumer fails outright it is recreated and resumes at the
next offset after a backoff.  If the topic turns out shorter than our position
or its last folded record changed (recreated, or the embedded broker restarted
empty: see `_log_replaced`) the fold restarts from offset 0, again without
regressing serving; a topic head behind the served version raises one
`stale_config` alert.

Hosting: an asyncio ranker awaits `start()` / `stop()`; a sync ranker calls
`start_in_thread()` / `stop_thread()` (a private event loop on a daemon thread,
`serving_sidecar.sink.LoopThread`, which may be shared with the sinks).

Layout.  This module is the I/O edge: `ConfigConsumer` (the aiokafka loop,
the Redis last-known-good restore and saves, the hosting on an event loop or
a thread, the counters of those).  The fold itself, with no I/O, lives in
`serving_sidecar.config_fold`: `ConfigFold` (the base `ConfigConsumer`
extends: what to do with a record, refusals and their alerts, restarting the
fold, stale-config detection), `carried_open_arms`, `RefusedRecord` and
`ConsumerStats`; they are re-exported from here (`__all__`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import OffsetOutOfRangeError

from schemas.alerts import Alert
from schemas.config_log import Keyring
from schemas.guardrails import Guardrails
from schemas.topics import CONFIG
from serving_sidecar.config_fold import ConfigFold, ConsumerStats, RefusedRecord, carried_open_arms
from serving_sidecar.holder import ConfigHolder, Snapshot
from serving_sidecar.lkg import LkgStore, encode_lkg, make_lkg, restore
from serving_sidecar.loop_thread import LoopThread, cancel_requested

__all__ = ["ConfigConsumer", "ConfigFold", "ConsumerStats", "RefusedRecord", "carried_open_arms"]

log = logging.getLogger(__name__)


class ConfigConsumer(ConfigFold):
    """Folds `rectune.config` into `holder` in the background (see the module docstring).

    `keyring` verifies signatures (built from RECTUNE_CONFIG_KEYS by the
    composition root); `guardrails` are enforced again on apply; `lkg` (may be
    None) persists last-known-good; `alert_sink` (may be None, e.g.
    `KafkaAlertSink(...).emit`, the same callable the SLO breaker takes)
    receives refusal and staleness alerts and must not block; `source_id` names this
    replica in alerts and LKG records.
    """

    def __init__(
        self,
        bootstrap: str,
        holder: ConfigHolder,
        keyring: Keyring,
        guardrails: Guardrails | None = None,
        lkg: LkgStore | None = None,
        alert_sink: Callable[[Alert], None] | None = None,
        source_id: str = "sidecar",
        *,
        topic: str = CONFIG.name,
        poll_ms: int = 200,
        fetch_max_wait_ms: int = 20,
        verify_interval_s: float = 2.0,
        request_timeout_ms: int = 5_000,
        backoff_max_s: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(holder, keyring, guardrails, alert_sink, source_id, topic=topic, clock=clock)
        self.bootstrap = bootstrap
        self._lkg = lkg
        self._poll_ms = poll_ms
        # How long the broker may hold an empty fetch: the floor of propagation
        # latency (aiokafka's 500 ms default made a change take ~140 ms to arrive).
        self._fetch_max_wait_ms = fetch_max_wait_ms
        self._verify_interval_s = verify_interval_s
        self._request_timeout_ms = request_timeout_ms
        self._backoff_max_s = backoff_max_s
        self._lkg_version = 0
        self._errors = 0
        self._reconnects = 0
        self._lkg_saves = 0
        self._lkg_failures = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._thread: LoopThread | None = None
        self._owns_thread = False

    # -- observation (any thread) ------------------------------------------------------

    def stats(self) -> ConsumerStats:
        """A copy of the counters."""
        served = self._holder.snapshot()
        return ConsumerStats(
            records=self._records,
            accepted=self._accepted,
            refused=self._refused,
            applied_version=self._state.version,
            served_version=served.version if served else None,
            next_offset=self._next_offset,
            errors=self._errors,
            reconnects=self._reconnects,
            resets=self._resets,
            lkg_saves=self._lkg_saves,
            lkg_failures=self._lkg_failures,
            caught_up=self.caught_up.is_set(),
        )

    def wait_for(self, predicate: Callable[[ConfigConsumer], bool], timeout_s: float) -> bool:
        """Poll `predicate(self)` until true or `timeout_s` passes (sync hosts, tests)."""
        deadline = time.monotonic() + timeout_s
        while not predicate(self):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    # -- hosting -----------------------------------------------------------------------

    async def start(self) -> None:
        """Restore last-known-good into the holder, then start the background fold; idempotent."""
        if self._task is not None:
            return
        self._stopping = False
        if self._lkg is not None:
            record = await asyncio.to_thread(restore, self._holder, self._lkg, self._keyring, self._guardrails)
            if record is not None:
                self._lkg_version = record.version
                self._alert_from_offset = record.next_offset
                log.info("serving last-known-good config version %d from %s", record.version, record.source)
        self._task = asyncio.create_task(self._run(), name="rectune-config-consumer")
        self._task.add_done_callback(self._on_task_done)

    async def stop(self) -> None:
        """Stop the background fold (serving keeps the current snapshot); idempotent."""
        task = self._task
        if task is None:
            return
        self._stopping = True
        self._task = None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def start_in_thread(self, loop_thread: LoopThread | None = None, timeout_s: float = 30.0) -> None:
        """`start()` on a loop thread (a private one if None); returns once LKG is restored."""
        if self._thread is not None:
            return
        self._owns_thread = loop_thread is None
        self._thread = (loop_thread or LoopThread("rectune-config-consumer")).start()
        self._thread.run(self.start(), timeout_s)

    def stop_thread(self, timeout_s: float = 30.0) -> None:
        """`stop()` for sync hosts; stops the private loop thread if the consumer owns it."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        thread.run(self.stop(), timeout_s)
        if self._owns_thread:
            thread.stop()

    # -- last-known-good (Redis) ---------------------------------------------------------

    async def _persist(self) -> None:
        store = self._lkg
        served = self._holder.snapshot()
        state = self._state
        if store is None or served is None or served.version != state.version or state.version <= self._lkg_version:
            return
        record = make_lkg(
            Snapshot.from_state(state),
            next_offset=self._next_offset,
            source=self.source_id,
            saved_ms=int(self._clock() * 1000),
            keyring=self._keyring,
        )
        result = await asyncio.to_thread(store.save, record.version, encode_lkg(record))
        if result == "failed":
            self._lkg_failures += 1  # retried on the next batch or idle tick
            return
        if result == "written":
            self._lkg_saves += 1
        # Written, or the same or a newer one is there: nothing older needs saving.
        self._lkg_version = record.version

    # -- I/O loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = 0.1
        while not self._stopping:
            consumer: AIOKafkaConsumer | None = None
            try:
                consumer = AIOKafkaConsumer(
                    bootstrap_servers=self.bootstrap,
                    client_id=f"rectune-config-{self.source_id}",
                    group_id=None,
                    enable_auto_commit=False,
                    auto_offset_reset="none",
                    request_timeout_ms=self._request_timeout_ms,
                    fetch_max_wait_ms=self._fetch_max_wait_ms,
                    retry_backoff_ms=100,
                    max_partition_fetch_bytes=4 * 1024 * 1024,
                )
                await consumer.start()
                backoff = 0.1
                await self._consume(consumer)
            except asyncio.CancelledError:
                if self._stopping or cancel_requested():
                    raise
                # Seen with aiokafka 0.14 and a stopped broker: a CancelledError can
                # escape the client although nobody cancelled us.  Not a stop: go on.
                self._errors += 1
                log.warning("config consumer: the Kafka client raised CancelledError; serving continues, reconnecting")
            except Exception as err:
                self._errors += 1
                log.warning("config consumer error (%s: %s); serving continues, reconnecting", type(err).__name__, err)
            finally:
                if consumer is not None:
                    await self._close(consumer)
            if not self._stopping:
                self._reconnects += 1
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._backoff_max_s)

    async def _close(self, consumer: AIOKafkaConsumer) -> None:
        # With the broker stopped, aiokafka 0.14's stop() was measured to raise
        # CancelledError (nobody cancelled us): that ended the loop for good
        # before this guard, so only our own stop() may cancel here.
        try:
            await asyncio.wait_for(consumer.stop(), 5.0)
        except asyncio.CancelledError:
            if self._stopping or cancel_requested():
                raise
        except Exception:  # a dead broker must not break the loop
            log.debug("config consumer: stopping the Kafka client failed", exc_info=True)

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        """Last line of defence: if the fold loop ever ends while not stopping, start it again."""
        if self._stopping or self._task is not task:
            return
        reason = "cancelled" if task.cancelled() else repr(task.exception())
        self._errors += 1
        log.error("config consumer loop ended unexpectedly (%s); restarting it", reason)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="rectune-config-consumer")
        self._task.add_done_callback(self._on_task_done)

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        tp = TopicPartition(self.topic, 0)
        consumer.assign([tp])
        if self._next_offset == 0:
            await consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, self._next_offset)
        # The embedded broker may report an end short of the high watermark, so
        # "caught up" also needs an empty fetch at or past it (as streams.kafka_io).
        end = (await consumer.end_offsets([tp]))[tp]
        verified = time.monotonic()
        while not self._stopping:
            try:
                batch = await consumer.getmany(tp, timeout_ms=self._poll_ms, max_records=500)
            except OffsetOutOfRangeError:
                self._reset(f"offset {self._next_offset} is past the end (topic recreated or truncated)")
                await consumer.seek_to_beginning(tp)
                end = (await consumer.end_offsets([tp]))[tp]
                continue
            records = batch.get(tp, [])
            if records:
                for record in records:
                    self._fold_next(record.offset, record.value)
                await self._persist()
                continue
            if not self.caught_up.is_set() and self._next_offset >= end:
                self.caught_up.set()
                self._check_stale()
                log.info("config consumer caught up at version %d (offset %d)", self._state.version, end)
            if time.monotonic() - verified >= self._verify_interval_s:
                verified = time.monotonic()
                await self._persist()  # retries a save that failed while Redis was away
                if await self._log_replaced(consumer, tp):
                    self._reset(
                        "the last folded record is gone or changed (topic recreated, or broker restarted empty)"
                    )
                    await consumer.seek_to_beginning(tp)
                    end = (await consumer.end_offsets([tp]))[tp]

    async def _log_replaced(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> bool:
        """True if the record at next_offset - 1 is no longer the one we folded.

        Apache Kafka answers a fetch past the end with OFFSET_OUT_OF_RANGE, but
        the embedded broker answers with an empty fetch, so a topic that was
        recreated (or a memory-only broker that restarted empty) would go
        unnoticed.  When idle, re-read the last folded record: its absence or a
        different value means the log was replaced.  `end_offsets` first, so an
        unreachable broker raises (and reconnects) instead of looking empty.
        """
        if self._next_offset == 0:
            return False
        await consumer.end_offsets([tp])
        consumer.seek(tp, self._next_offset - 1)
        records = (await consumer.getmany(tp, timeout_ms=1_000, max_records=1)).get(tp, [])
        if records:
            # When it is the same, the position is back at next_offset and later records come as usual.
            return self._differs_from_folded(records[0].offset, records[0].value)
        end: int = (await consumer.end_offsets([tp]))[tp]
        consumer.seek(tp, self._next_offset)
        # Nothing came back: replaced if the log is now shorter than what we folded (on the
        # embedded broker the reported end can be short, which errs towards a harmless refold).
        return end < self._next_offset
