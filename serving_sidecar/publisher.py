"""The machinery under the sidecar's sinks: a bounded drop-oldest buffer drained by a background task.

`BackgroundPublisher` packs buffered items into messages, stamps each with the
replica's `source_id` and a monotonically increasing `seq`, produces them with
aiokafka and retries an unacknowledged message with the same seq; `EventSink`
and `KafkaAlertSink` (serving_sidecar.sink) only say how items are packed.
See serving_sidecar/sink.py for the back-pressure policy and hosting modes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from aiokafka import AIOKafkaProducer

from schemas.limits import MAX_MESSAGE_BYTES
from serving_sidecar.errors import SidecarError
from serving_sidecar.loop_thread import LoopThread, cancel_requested, in_loop_thread

log = logging.getLogger(__name__)

T = TypeVar("T")
_BACKOFF_MIN_S: Final = 0.1
_BACKOFF_MAX_S: Final = 2.0


@dataclass(frozen=True, slots=True)
class SinkStats:
    """Counters of a sink, in items (events or alerts) and messages.

    `emitted` = accepted by `emit`; `sent` = acknowledged by the broker;
    `dropped` = evicted by the drop-oldest policy; `lost` = still undelivered
    when `close()`/`stop()` gave up; `pending` = buffered or in flight now.
    `send_errors` counts failed send rounds (each is retried).
    """

    emitted: int
    sent: int
    dropped: int
    lost: int
    pending: int
    messages_sent: int
    send_errors: int
    last_seq: int | None


@dataclass(frozen=True, slots=True)
class _Message:
    seq: int
    key: bytes
    payload: bytes
    items: int


class BackgroundPublisher(Generic[T]):
    """Bounded drop-oldest buffer + a background task that packs and produces it (shared machinery)."""

    def __init__(
        self,
        bootstrap: str,
        source_id: str,
        topic: str,
        *,
        max_buffered: int,
        linger_ms: float,
        max_in_flight: int,
        wake_at: int,
        start_seq: int | None,
        request_timeout_ms: int,
    ) -> None:
        if max_buffered < 1 or max_in_flight < 1:
            msg = "sink: max_buffered and max_in_flight must be >= 1"
            raise SidecarError(msg)
        self.bootstrap = bootstrap
        self.source_id = source_id
        self.topic = topic
        self._max_buffered = max_buffered
        self._linger_s = linger_ms / 1000.0
        self._max_in_flight = max_in_flight
        self._wake_at = wake_at
        self._request_timeout_ms = request_timeout_ms
        # Microseconds since the epoch: a restarted replica with the same
        # source_id keeps counting upwards instead of reusing old seqs.
        self._next_seq = time.time_ns() // 1000 if start_seq is None else start_seq
        self._lock = threading.Lock()
        self._buffer: deque[T] = deque()
        self._buffered_weight = 0
        self._outbox: deque[_Message] = deque()
        self._staged = 0  # taken from the buffer, not yet in the outbox
        self._emitted = 0
        self._sent = 0
        self._dropped = 0
        self._lost = 0
        self._messages_sent = 0
        self._send_errors = 0
        self._last_seq: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._wake_requested = False
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._thread: LoopThread | None = None
        self._owns_thread = False
        self._producer: AIOKafkaProducer | None = None

    # -- what subclasses define --------------------------------------------------

    def _weight(self, item: T) -> int:
        return 1

    def _group(self, items: list[T]) -> list[list[T]]:
        """Split buffered items, in order, into the groups that become one message each."""
        return [[item] for item in items]

    def _encode(self, group: list[T], seq: int) -> tuple[bytes, bytes]:
        """(key, value) of the message carrying `group` with sequence number `seq`."""
        raise NotImplementedError

    # -- any thread ----------------------------------------------------------------

    def emit(self, item: T) -> None:
        """Buffer one item for publishing; never blocks, never raises for I/O (drop-oldest when full)."""
        weight = self._weight(item)
        with self._lock:
            if self._closing:
                self._dropped += 1
                return
            if len(self._buffer) >= self._max_buffered:
                old = self._buffer.popleft()
                self._buffered_weight -= self._weight(old)
                self._dropped += 1
            was_empty = not self._buffer
            self._buffer.append(item)
            self._buffered_weight += weight
            self._emitted += 1
            # Wake the publisher when an envelope is full, or when the first item arrives
            # while it sleeps untimed on an empty buffer (it then lingers for company).
            wake = (self._buffered_weight >= self._wake_at or was_empty) and not self._wake_requested
            if wake:
                self._wake_requested = True
        if wake:
            self._signal()

    def _signal(self) -> None:
        loop, event = self._loop, self._wake
        if loop is None or event is None:
            return
        with contextlib.suppress(RuntimeError):  # loop closed during shutdown
            loop.call_soon_threadsafe(event.set)

    def stats(self) -> SinkStats:
        """A consistent copy of the counters."""
        with self._lock:
            pending = len(self._buffer) + self._staged + sum(m.items for m in self._outbox)
            return SinkStats(
                emitted=self._emitted,
                sent=self._sent,
                dropped=self._dropped,
                lost=self._lost,
                pending=pending,
                messages_sent=self._messages_sent,
                send_errors=self._send_errors,
                last_seq=self._last_seq,
            )

    # -- asyncio host ----------------------------------------------------------------

    async def start(self) -> None:
        """Start the background task in the running loop (asyncio rankers); idempotent."""
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._closing = False
        self._task = asyncio.create_task(self._run(), name=f"rectune-sink-{self.topic}")
        self._task.add_done_callback(self._on_task_done)

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        """Last line of defence: if the send loop ever ends before stop(), start it again."""
        if self._task is not task or self._closing:
            return
        reason = "cancelled" if task.cancelled() else repr(task.exception())
        self._send_errors += 1
        log.error("%s sink %s: send loop ended unexpectedly (%s); restarting it", self.topic, self.source_id, reason)
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"rectune-sink-{self.topic}")
        self._task.add_done_callback(self._on_task_done)

    async def drain(self, timeout_s: float = 30.0) -> bool:
        """Wait until everything emitted so far is acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout_s
        self._signal()
        while True:
            with self._lock:
                if not self._buffer and not self._outbox and not self._staged:
                    return True
            if time.monotonic() >= deadline or self._task is None or self._task.done():
                return False
            self._signal()
            await asyncio.sleep(0.005)

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Drain for up to `timeout_s`, then stop; what is left is counted as `lost`.  Idempotent."""
        task = self._task
        if task is None:
            return
        with self._lock:
            self._closing = True
        self._signal()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        except Exception:  # the task never raises by design; log if it ever does
            log.exception("%s sink %s: background task failed", self.topic, self.source_id)
        self._task = None
        await self._close_producer()
        with self._lock:
            left = len(self._buffer) + sum(m.items for m in self._outbox)
            self._buffer.clear()
            self._outbox.clear()
            self._buffered_weight = 0
            self._lost += left
        if left:
            log.warning("%s sink %s: %d item(s) undelivered at stop", self.topic, self.source_id, left)

    # -- sync host -------------------------------------------------------------------

    def start_in_thread(self, loop_thread: LoopThread | None = None) -> None:
        """Start the background task on `loop_thread` (a private one if None): sync rankers."""
        if self._thread is not None:
            return
        self._owns_thread = loop_thread is None
        self._thread = (loop_thread or LoopThread(f"rectune-sink-{self.topic}")).start()
        self._thread.run(self.start())

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Blocking `drain` for sync hosts (and for other threads of an asyncio host)."""
        if self._thread is not None:
            return self._thread.run(self.drain(timeout_s))
        loop = self._loop
        if loop is None:
            return not self.stats().pending
        if loop.is_running() and in_loop_thread(loop):
            msg = "sink.flush() called on the sink's own event loop would deadlock"
            raise SidecarError(msg, hint="use `await sink.drain()` in asyncio code")
        return asyncio.run_coroutine_threadsafe(self.drain(timeout_s), loop).result()

    def close(self, timeout_s: float = 10.0) -> None:
        """Blocking `stop` for sync hosts; stops the private loop thread if the sink owns it."""
        thread = self._thread
        if thread is None:
            loop = self._loop
            if loop is not None and self._task is not None and not in_loop_thread(loop):
                asyncio.run_coroutine_threadsafe(self.stop(timeout_s), loop).result()
            return
        thread.run(self.stop(timeout_s))
        if self._owns_thread:
            thread.stop()
        self._thread = None

    # -- the background task -----------------------------------------------------------

    def _take_messages(self) -> None:
        """Move buffered items into numbered messages (the outbox holds at most max_in_flight)."""
        with self._lock:
            room = self._max_in_flight - len(self._outbox)
            self._wake_requested = False
            if room <= 0 or not self._buffer:
                return
            items = list(self._buffer)
            self._buffer.clear()
            self._buffered_weight = 0
            self._staged = len(items)
        groups = deque(self._group(items))
        messages: list[_Message] = []
        seq = self._next_seq
        while groups and len(messages) < room:
            group = groups.popleft()
            key, payload = self._encode(group, seq)
            if len(payload) > MAX_MESSAGE_BYTES and len(group) > 1:
                half = len(group) // 2
                groups.extendleft([group[half:], group[:half]])
                continue
            messages.append(_Message(seq, key, payload, len(group)))
            seq += 1
        with self._lock:
            self._staged = 0
            self._next_seq = seq
            self._outbox.extend(messages)
            # Groups beyond the outbox room go back to the head of the buffer
            # (still subject to drop-oldest).
            rest = [item for group in groups for item in group]
            if rest:
                self._buffer.extendleft(reversed(rest))
                self._buffered_weight = sum(self._weight(i) for i in self._buffer)
                while len(self._buffer) > self._max_buffered:
                    old = self._buffer.popleft()
                    self._buffered_weight -= self._weight(old)
                    self._dropped += 1

    async def _connect(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id=f"rectune-sink-{self.source_id}",
            linger_ms=0,
            acks=1,
            max_request_size=MAX_MESSAGE_BYTES + 65_536,
            request_timeout_ms=self._request_timeout_ms,
            retry_backoff_ms=100,
        )
        try:
            await producer.start()
        except BaseException:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(producer.stop(), 5.0)
            raise
        return producer

    async def _close_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await asyncio.wait_for(producer.stop(), 5.0)
            except asyncio.CancelledError:
                if cancel_requested():
                    raise
            except Exception:  # a dead broker must not hang or break shutdown
                log.warning("%s sink: producer stop failed", self.topic, exc_info=True)

    async def _send_round(self, producer: AIOKafkaProducer) -> bool:
        """Send up to max_in_flight outbox messages and await their acks; True if all succeeded."""
        window = list(itertools.islice(self._outbox, self._max_in_flight))
        futures: list[asyncio.Future[Any]] = []
        error: BaseException | None = None
        try:
            for message in window:
                # A loop, not a comprehension: futures queued before a failure must still be awaited.
                futures.append(await producer.send(self.topic, message.payload, key=message.key))  # noqa: PERF401
        except asyncio.CancelledError as err:
            if cancel_requested():
                raise
            error = err
        except Exception as err:
            error = err
        results = await asyncio.gather(*futures, return_exceptions=True)
        delivered = {id(m) for m, r in zip(window, results, strict=False) if not isinstance(r, BaseException)}
        with self._lock:
            self._outbox = deque(m for m in self._outbox if id(m) not in delivered)
            for message in window:
                if id(message) in delivered:
                    self._sent += message.items
                    self._messages_sent += 1
                    self._last_seq = message.seq if self._last_seq is None else max(self._last_seq, message.seq)
        failures = [r for r in results if isinstance(r, BaseException)]
        if error is not None or failures:
            self._send_errors += 1
            log.warning(
                "%s sink %s: send failed, will retry (%s)",
                self.topic,
                self.source_id,
                error or failures[0],
            )
            return False
        return True

    async def _run(self) -> None:
        backoff = _BACKOFF_MIN_S
        wake = self._wake
        assert wake is not None  # noqa: S101 (set by start())
        while True:
            with self._lock:
                closing = self._closing
                idle = not self._buffer and not self._outbox
                full = self._buffered_weight >= self._wake_at
            if idle and closing:
                return
            if not closing and not full and not self._outbox:
                if idle:
                    # Nothing buffered: sleep until emit() wakes us (no periodic wake-ups,
                    # which would cost an idle ranker GIL time every few milliseconds).
                    await wake.wait()
                    self._wake_requested = False
                    wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), self._linger_s)
                wake.clear()
            self._take_messages()
            if not self._outbox:
                continue
            try:
                if self._producer is None:
                    self._producer = await self._connect()
                ok = await self._send_round(self._producer)
            except asyncio.CancelledError as err:
                if cancel_requested():
                    raise
                self._send_errors += 1
                log.warning("%s sink %s: client raised CancelledError (%s), retrying", self.topic, self.source_id, err)
                await self._close_producer()
                ok = False
            except Exception as err:
                self._send_errors += 1
                log.warning("%s sink %s: broker unavailable (%s), retrying", self.topic, self.source_id, err)
                await self._close_producer()
                ok = False
            if ok:
                backoff = _BACKOFF_MIN_S
            else:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
