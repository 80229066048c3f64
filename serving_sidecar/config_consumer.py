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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import OffsetOutOfRangeError

from schemas.alerts import Alert, AlertKind, Detail
from schemas.config import ConfigError
from schemas.config_log import ConfigChange, Keyring, ServingState, apply, decode_change
from schemas.errors import SignatureError
from schemas.guardrails import Guardrails
from schemas.topics import CONFIG
from serving_sidecar.holder import ConfigHolder, Snapshot
from serving_sidecar.lkg import LkgStore, encode_lkg, make_lkg, restore
from serving_sidecar.loop_thread import LoopThread, cancel_requested

log = logging.getLogger(__name__)

_MAX_MESSAGE: Final = 4000
_KEEP_REFUSALS: Final = 100


@dataclass(frozen=True, slots=True)
class RefusedRecord:
    """One config-topic record the consumer refused, and why (kept for inspection, newest last)."""

    offset: int
    version: int | None
    author: str | None
    field: str
    rule: str
    error: str


@dataclass(frozen=True, slots=True)
class ConsumerStats:
    """Counters of a config consumer (read from any thread)."""

    records: int
    accepted: int
    refused: int
    applied_version: int
    served_version: int | None
    next_offset: int
    errors: int
    reconnects: int
    resets: int
    lkg_saves: int
    lkg_failures: int
    caught_up: bool


def carried_open_arms(old: Snapshot, new: Snapshot) -> frozenset[str]:
    """Breaker-opened arms of `old` that stay open in `new`.

    An arm stays open while it is the same arm of the same experiment serving
    the same config version; a new experiment, or an arm re-pointed at another
    config, starts closed (the breaker judges it afresh).
    """
    if old.allocation is None or new.allocation is None:
        return frozenset()
    if old.allocation.experiment_id != new.allocation.experiment_id:
        return frozenset()
    return frozenset(
        arm
        for arm in old.open_arms
        if arm in new.arms and arm in old.arms and new.arms[arm].config_version == old.arms[arm].config_version
    )


class ConfigConsumer:
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
        self.bootstrap = bootstrap
        self.topic = topic
        self.source_id = source_id
        self._holder = holder
        self._keyring = keyring
        self._guardrails = guardrails
        self._lkg = lkg
        self._alerts = alert_sink
        self._poll_ms = poll_ms
        # How long the broker may hold an empty fetch: the floor of propagation
        # latency (aiokafka's 500 ms default made a change take ~140 ms to arrive).
        self._fetch_max_wait_ms = fetch_max_wait_ms
        self._verify_interval_s = verify_interval_s
        self._request_timeout_ms = request_timeout_ms
        self._backoff_max_s = backoff_max_s
        self._clock = clock
        self._state = ServingState()
        self._next_offset = 0
        self._last_value: bytes | None = None  # value of the record at _next_offset - 1
        self._alert_from_offset = 0
        self._lkg_version = 0
        self._stale_alerted: tuple[int, int] | None = None
        self.caught_up = threading.Event()
        self.refusals: deque[RefusedRecord] = deque(maxlen=_KEEP_REFUSALS)
        self._records = 0
        self._accepted = 0
        self._refused = 0
        self._errors = 0
        self._reconnects = 0
        self._resets = 0
        self._lkg_saves = 0
        self._lkg_failures = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._thread: LoopThread | None = None
        self._owns_thread = False

    # -- observation (any thread) ------------------------------------------------------

    @property
    def state(self) -> ServingState:
        """The folded state (it may trail the served snapshot while catching up after an LKG restore)."""
        return self._state

    @property
    def applied_version(self) -> int:
        """Version of the last accepted change in this consumer's fold."""
        return self._state.version

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

    # -- the fold (pure apart from the holder, alerts and the LKG) ---------------------------

    def apply_record(self, offset: int, value: bytes | None) -> bool:
        """Apply one config-topic record; True if accepted.  Called by the loop, and by tests directly."""
        self._records += 1
        change: ConfigChange | None = None
        try:
            if value is None:
                msg = "$"
                raise ConfigError(msg, "a config record must have a value", hint="see schemas/config_log.py")
            change = decode_change(value)
            new = apply(self._state, change, self._keyring, self._guardrails)
        except (ConfigError, SignatureError) as err:
            self._on_refused(offset, change, err.field, err.rule, err)
            return False
        except Exception as err:  # a hostile record must never stop the fold
            self._on_refused(offset, change, "$", f"could not be applied ({type(err).__name__}: {err})", err)
            return False
        self._state = new
        self._accepted += 1
        self._serve(new)
        return True

    def _serve(self, state: ServingState) -> None:
        fresh = Snapshot.from_state(state)

        def build(current: Snapshot) -> Snapshot:
            if current.version > state.version:
                return current  # catching up behind last-known-good: never regress serving
            return fresh.with_open_arms(carried_open_arms(current, fresh))

        if self._holder.update(build) is None:
            self._holder.swap(fresh)

    def _on_refused(self, offset: int, change: ConfigChange | None, field: str, rule: str, err: BaseException) -> None:
        self._refused += 1
        version = change.version if change is not None else None
        author = change.author if change is not None else None
        self.refusals.append(RefusedRecord(offset, version, author, field, rule, type(err).__name__))
        if offset < self._alert_from_offset:
            # Already alerted by whoever saved the last-known-good we started from.
            log.info("config record at offset %d (version %s) refused again on replay: %s", offset, version, err)
            return
        log.error("config record at offset %d (version %s) refused: %s", offset, version, err)
        details = [
            Detail("version", "" if version is None else str(version)),
            Detail("offset", str(offset)),
            Detail("field", field),
            Detail("rule", rule),
            Detail("error", type(err).__name__),
            Detail("head_version", str(self._state.version)),
        ]
        if author is not None:
            details.append(Detail("author", author))
        what = f"version {version}" if version is not None else f"record at offset {offset}"
        self._alert("config_refused", "critical", f"config change {what} refused: {field}: {rule}", version, details)

    def _alert(
        self,
        kind: AlertKind,
        severity: Literal["warning", "critical"],
        message: str,
        version: int | None,
        details: list[Detail],
    ) -> None:
        if self._alerts is None:
            return
        alert = Alert(
            schema_version=1,
            kind=kind,
            severity=severity,
            source=self.source_id,
            message=message[:_MAX_MESSAGE],
            at_ms=int(self._clock() * 1000),
            config_version=version,
            details=tuple(details),
        )
        try:
            self._alerts(alert)
        except Exception:  # alerting must never stop the fold
            log.exception("could not hand an alert to the alert sink")

    def _reset(self, why: str) -> None:
        log.warning("config topic %s: %s; folding again from offset 0 (serving is kept)", self.topic, why)
        self._state = ServingState()
        self._next_offset = 0
        self._last_value = None
        self._resets += 1
        self.caught_up.clear()

    def _check_stale(self) -> None:
        served = self._holder.snapshot()
        if served is None or self._state.version >= served.version:
            return
        pair = (self._state.version, served.version)
        if self._stale_alerted == pair:
            return
        self._stale_alerted = pair
        message = (
            f"config topic head is version {self._state.version}, behind the served version {served.version};"
            " keeping the served config"
        )
        log.warning(message)
        details = [Detail("topic_head", str(self._state.version)), Detail("served_version", str(served.version))]
        self._alert("stale_config", "warning", message, served.version, details)

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
                    if record.offset < self._next_offset:
                        continue  # already folded (re-delivery after a reconnect or a verification)
                    self.apply_record(record.offset, record.value)
                    self._next_offset = record.offset + 1
                    self._last_value = record.value
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
            first = records[0]
            return bool(first.offset != self._next_offset - 1 or first.value != self._last_value)
        end: int = (await consumer.end_offsets([tp]))[tp]
        consumer.seek(tp, self._next_offset)
        # Nothing came back: replaced if the log is now shorter than what we folded (on the
        # embedded broker the reported end can be short, which errs towards a harmless refold).
        return end < self._next_offset
