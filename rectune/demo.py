"""`rectune demo` (`make demo`): the whole local stack on one machine, live, in under two minutes.

Starts the embedded broker (tansu) and Redis, one stream worker (`rectune
worker`, a separate process), and a synthetic traffic generator that
publishes requests at a steady rate with real wall-clock event times.  It
reads the closed metric windows back from `rectune.metrics`, prints one row
per arm as each window closes, keeps a status line up to date, writes a
heartbeat to Redis, and ends with a per-arm summary of the whole run
(treatment vs control CTR lift with its interval).  Then it stops everything
it started, in order.  Later issues grow this into the full tuning loop.

This module is the I/O side only: the statistics, the window bookkeeping and
every row format live in `rectune.progress` (pure).  Exit codes: 0 done,
1 a component failed mid-run, 2 start-up failed, 128+N stopped by signal N
(130 for Ctrl-C).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack, ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType, TracebackType
from typing import Final, Self, TextIO

import msgspec
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from rectune.admin import catalogue_for, ensure_topics
from rectune.embedded import ManagedProcess, RedisProcess, TansuProcess, start_redis, start_tansu
from rectune.errors import RectuneError
from rectune.processes import settings_env, start_worker
from rectune.progress import (
    LEGEND,
    ClosedWindow,
    Status,
    WindowBook,
    clock,
    format_arm_row,
    format_duration,
    format_lift,
    format_status,
    format_window,
    pct,
    plural,
    relative_lift,
    table_header,
)
from rectune.settings import Settings
from schemas.encode import encode_batch
from schemas.events import Event, Impression
from schemas.metrics import MetricWindow
from schemas.topics import EVENTS, METRICS
from simulator.synthetic import TrafficGenerator, TrafficSpec, pack

__all__ = ["DemoPlan", "run_demo"]

#: Redis keys the demo writes (later issues put the Skillhub next to them).
HEARTBEAT_KEY: Final = "rectune:demo:heartbeat"
HEARTBEAT_COUNT_KEY: Final = "rectune:demo:windows"
#: Exit codes besides 0 and 128+signal.
EXIT_FAILED: Final = 1
EXIT_START_FAILED: Final = 2
MAX_DURATION_S: Final = 3600.0


@dataclass(frozen=True, slots=True)
class DemoPlan:
    """Shape of the demo run: short windows and a steady request rate, so it is lively.

    `run_demo` uses the defaults; tests may pass another plan to `run_plan`.
    Windows close about `window_s + allowed_lateness_s` after they open; the
    last ones close `idle_close_s` after the generator stops.
    """

    partitions: int = 4
    window_s: float = 5.0
    allowed_lateness_s: float = 1.0
    checkpoint_interval_s: float = 0.5
    idle_close_s: float = 3.0
    requests_per_s: float = 500.0
    item_events_per_message: int = 100
    arms: tuple[str, str] = ("control", "treatment")
    arm_ctr_lift: tuple[float, float] = (1.0, 1.15)
    seed: int = 7
    tick_s: float = 0.05
    status_every_s: float = 0.5
    log_every_s: float = 5.0
    drain_timeout_s: float = 15.0
    worker_stop_timeout_s: float = 8.0


# -- terminal -------------------------------------------------------------------------


class Console:
    """Everything the demo prints: rows and notes, plus a live status line.

    On a terminal the status line is redrawn in place (rows are printed above
    it); otherwise (CI, logs, pipes) it becomes a plain progress line every
    `log_every_s`.  Used only by the demo's main thread.
    """

    def __init__(self, out: TextIO, err: TextIO, *, status_every_s: float, log_every_s: float) -> None:
        self.out = out
        self.err = err
        self.tty = out.isatty()
        self.every_s = status_every_s if self.tty else log_every_s
        self._status = ""
        self._last_s = -math.inf

    def say(self, text: str = "") -> None:
        """Print a line above the status line."""
        self._clear()
        self.out.write(text + "\n")
        self._redraw()

    def error(self, text: str) -> None:
        """Print a line to stderr (status line cleared first so they do not mix)."""
        self._clear()
        self.out.flush()
        self.err.write(text + "\n")
        self.err.flush()
        self._redraw()

    def status(self, render: Callable[[int | None], str], now_s: float, *, force: bool = False) -> None:
        """Show the progress line: redrawn in place every `status_every_s` on a TTY, else a line per `log_every_s`.

        `render(width)` makes the line; `width` is the terminal's (None off a
        terminal), and a line still too wide is cut so the redraw never wraps.
        """
        if not force and now_s - self._last_s < self.every_s:
            return
        self._last_s = now_s
        if self.tty:
            width = shutil.get_terminal_size((120, 24)).columns - 1
            text = render(width)
            self._clear()
            self._status = text if len(text) <= width else text[: max(width - 3, 0)] + "..."
            self._redraw()
        else:
            self.say(render(None))

    def end_status(self) -> None:
        """Remove the live status line (before the summary and on exit)."""
        self._clear()
        self._status = ""
        self.out.flush()

    def _clear(self) -> None:
        if self.tty and self._status:
            self.out.write("\r\x1b[K")

    def _redraw(self) -> None:
        if self.tty and self._status:
            self.out.write(self._status)
        self.out.flush()


class SignalLatch:
    """Turns SIGINT/SIGTERM into a flag the demo polls, so shutdown is always orderly.

    Installed by `run_demo` for the whole run: a Ctrl-C during start-up lets
    the current step finish and then stops what was started; during the run it
    ends generation and skips the drain; during shutdown a repeat only prints
    a note (every stop is bounded).  Previous handlers come back on exit.  Off
    the main thread (where Python cannot install handlers) it does nothing.
    """

    def __init__(self, repeat_note: str) -> None:
        self.signum: int | None = None
        self._repeat_note = repeat_note.encode()
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            return
        # A raw write: the handler may interrupt a buffered print, which must not be re-entered.
        with suppress(OSError, ValueError):
            os.write(sys.stderr.fileno(), self._repeat_note)

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]  # whatever getsignal gave back


class Interrupted(Exception):
    """Raised inside the demo when the latch saw a signal; carries the exit code."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.code = 128 + signum


# -- traffic ------------------------------------------------------------------------


def item_events(events: list[Event]) -> int:
    """Item-level events of a request, counted as DESIGN.md says (12 shown items = 12 events)."""
    return sum(len(e.items) if isinstance(e, Impression) else 1 for e in events)


@dataclass(slots=True)
class Production:
    """What the generator has published (acknowledged by the broker) so far."""

    requests: int = 0
    item_events: int = 0
    messages: int = 0
    first_ms: int | None = None
    last_ms: int | None = None
    started_s: float | None = None
    stopped_s: float | None = None

    def span_ms(self) -> tuple[int, int] | None:
        """Event-time span of what was produced (None before the first request)."""
        if self.first_ms is None or self.last_ms is None:
            return None
        return self.first_ms, self.last_ms

    def elapsed_s(self, now_s: float) -> float:
        """Seconds of generation so far (frozen once generation stopped)."""
        if self.started_s is None:
            return 0.0
        return (self.stopped_s or now_s) - self.started_s


async def generate(
    producer: AIOKafkaProducer,
    generator: TrafficGenerator,
    plan: DemoPlan,
    production: Production,
    stop: asyncio.Event,
) -> None:
    """Publish requests at `plan.requests_per_s` until `stop` is set (the demo's traffic task).

    Each tick publishes the requests due since the last one, with event times
    spread evenly over the wall-clock interval they stand for; envelopes carry
    about `item_events_per_message` item events and are keyed by sequence so
    they spread over the partitions.  Counts only what the broker acknowledged.
    A stalled tick catches up over the next ticks (at most a quarter second of
    traffic at a time), so the average rate holds.
    """
    source = f"demo-{plan.seed}"
    seq = 0
    start_s = time.monotonic()
    production.started_s = start_s
    last_ms = int(time.time() * 1000)
    cap = max(1, int(plan.requests_per_s / 4))
    while not stop.is_set():
        due = min(cap, int((time.monotonic() - start_s) * plan.requests_per_s) - production.requests)
        if due > 0:
            now_ms = int(time.time() * 1000)
            step = max(now_ms - last_ms, 0) / due
            events: list[Event] = []
            for k in range(due):
                events.extend(generator.request(last_ms + round((k + 1) * step)))
            futures = []
            for envelope in pack(events, plan.item_events_per_message):
                key = f"{source}:{seq}".encode()
                futures.append(await producer.send(EVENTS.name, encode_batch(source, seq, envelope), key=key))
                seq += 1
            await asyncio.gather(*futures)
            production.requests += due
            production.item_events += item_events(events)
            production.messages += len(futures)
            production.first_ms = production.first_ms or min(e.event_time_ms for e in events)
            production.last_ms = max(e.event_time_ms for e in events)
            last_ms = now_ms
        await asyncio.sleep(plan.tick_s)
    production.stopped_s = time.monotonic()


async def read_metrics(consumer: AIOKafkaConsumer, book: WindowBook, bad: list[str]) -> None:
    """Feed every closed partial on `rectune.metrics` into `book` (the demo's reader task).

    A record that does not decode is listed in `bad` (shown in the summary)
    instead of stopping the demo.
    """
    decoder = msgspec.json.Decoder(MetricWindow)
    while True:
        batch = await consumer.getmany(timeout_ms=200, max_records=5000)
        now_s = time.monotonic()
        for records in batch.values():
            for record in records:
                try:
                    book.add(decoder.decode(record.value or b""), now_s)
                except (msgspec.DecodeError, ValueError) as err:
                    bad.append(f"{record.topic}[{record.partition}]@{record.offset}: {err}")


# -- the run ------------------------------------------------------------------------


@dataclass(slots=True)
class Services:
    """The processes the demo started, for the run and the final report."""

    broker: TansuProcess
    redis: RedisProcess
    worker: ManagedProcess


@dataclass(slots=True)
class Run:
    """State shared by the demo's steps (one per `run_plan` call)."""

    settings: Settings
    plan: DemoPlan
    duration_s: float
    work_dir: Path
    console: Console
    latch: SignalLatch
    book: WindowBook
    production: Production = field(default_factory=Production)
    bad_partials: list[str] = field(default_factory=list)
    header_printed: bool = False
    stopping_announced: bool = False

    def check_signal(self) -> None:
        """Raise `Interrupted` once a signal arrived (called between steps)."""
        if self.latch.signum is not None:
            raise Interrupted(self.latch.signum)


def start_services(run: Run, stack: ExitStack) -> Services:
    """Start broker, Redis and the worker from the main thread; register their stops on `stack`.

    Called by `run_plan`.  Each stop is registered as soon as its process
    exists, so a failure or Ctrl-C at any step leaves nothing running.
    """
    plan, console = run.plan, run.console
    broker = start_tansu(run.work_dir)
    stack.callback(stop_process, run, "broker", broker, 10.0)
    console.say(f"  broker   tansu on {broker.bootstrap} (memory storage)")
    run.check_signal()
    store = start_redis(run.work_dir)
    stack.callback(stop_process, run, "redis", store, 10.0)
    console.say(f"  redis    {store.url}")
    run.check_signal()
    asyncio.run(ensure_topics(broker.bootstrap, catalogue_for(plan.partitions)))
    run.check_signal()
    env = settings_env(
        bootstrap=broker.bootstrap,
        redis_url=store.url,
        events_partitions=plan.partitions,
        window_s=plan.window_s,
        allowed_lateness_s=plan.allowed_lateness_s,
        checkpoint_interval_s=plan.checkpoint_interval_s,
        idle_close_s=plan.idle_close_s,
        buckets=run.settings.buckets,
        session_timeout_s=run.settings.session_timeout_s,
        app_id=run.settings.app_id,
        log_level=run.settings.log_level,
    )
    worker = start_worker(run.work_dir / "worker.log", env, cwd=run.work_dir)
    stack.callback(stop_process, run, "worker", worker, plan.worker_stop_timeout_s)
    console.say(
        f"  worker   pid {worker.pid}: {plan.partitions} event partitions, {plan.window_s:g} s windows "
        f"(lateness {plan.allowed_lateness_s:g} s, idle close {plan.idle_close_s:g} s), "
        f"{run.settings.buckets} user buckets"
    )
    truth = plan.arm_ctr_lift[1] / plan.arm_ctr_lift[0] - 1.0
    console.say(
        f"  traffic  {plan.requests_per_s:g} requests/s of 12-item lists, {plan.arms[0]} vs {plan.arms[1]} "
        f"(true CTR lift {100 * truth:+.0f}%), seed {plan.seed}"
    )
    return Services(broker, store, worker)


def stop_process(run: Run, name: str, proc: ManagedProcess, timeout_s: float) -> None:
    """Stop one service and say how long it took (registered by `start_services`)."""
    if not run.stopping_announced:
        run.console.say()
        run.console.say("stopping:")
        run.stopping_announced = True
    began = time.monotonic()
    proc.stop(timeout_s)
    run.console.say(f"  stopped {name:<7} {time.monotonic() - began:4.1f} s")


def status_of(run: Run, phase: str, worker: ManagedProcess, now_s: float) -> Status:
    """Snapshot of the progress for the status line (called by the main loop)."""
    prod = run.production
    elapsed = prod.elapsed_s(now_s)
    return Status(
        phase=phase,
        elapsed_s=elapsed,
        duration_s=run.duration_s,
        requests=prod.requests,
        item_events=prod.item_events,
        rate_item_events_s=prod.item_events / elapsed if elapsed > 0 else 0.0,
        windows_closed=run.book.windows_closed,
        windows_pending=run.book.pending_windows(),
        accounted_item_events=run.book.item_events,
        worker_alive=worker.alive(),
    )


async def show_windows(run: Run, windows: list[ClosedWindow], client: aioredis.Redis) -> None:
    """Print the rows of newly closed windows and write the Redis heartbeat for the latest."""
    if not windows:
        return
    if not run.header_printed:
        run.console.say()
        run.console.say(table_header("window"))
        for line in LEGEND:
            run.console.say(line)
        run.header_printed = True
    for window in windows:
        for row in format_window(window, span_ms=run.production.span_ms()):
            run.console.say(row)
    await client.set(HEARTBEAT_KEY, heartbeat_json(windows[-1], int(time.time() * 1000)))
    await client.incrby(HEARTBEAT_COUNT_KEY, len(windows))


def heartbeat_json(window: ClosedWindow, written_ms: int) -> str:
    """The Redis heartbeat value: the latest closed window's per-arm counts and CTR (JSON)."""
    arms = {
        arm: {
            "requests": a.requests,
            "impressions": a.impressions,
            "clicks": a.clicks,
            "ctr": round(a.ctr.value, 6) if math.isfinite(a.ctr.value) else None,
        }
        for arm, a in window.arms.items()
    }
    beat = {"window_start_ms": window.start_ms, "window_end_ms": window.end_ms, "arms": arms, "written_ms": written_ms}
    return json.dumps(beat, sort_keys=True)


async def live(run: Run, services: Services) -> None:
    """Generate, read and print until the duration is over, then drain the last windows.

    The demo's async part (one `asyncio.run`).  Raises `Interrupted` on a
    signal (what was read so far stays in `run.book` for the summary) and
    `RectuneError` when the worker dies.
    """
    plan, console, book = run.plan, run.console, run.book
    bootstrap = services.broker.bootstrap
    traffic = TrafficGenerator(TrafficSpec(arms=plan.arms, arm_ctr_lift=plan.arm_ctr_lift), seed=plan.seed)
    stop = asyncio.Event()
    async with AsyncExitStack() as stack:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_request_size=2_097_152)
        await producer.start()
        stack.push_async_callback(producer.stop)
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
        await consumer.start()
        stack.push_async_callback(consumer.stop)
        partitions = [TopicPartition(METRICS.name, p) for p in range(METRICS.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        client = aioredis.Redis.from_url(services.redis.url)
        stack.push_async_callback(client.aclose)
        await client.delete(HEARTBEAT_KEY, HEARTBEAT_COUNT_KEY)
        tasks = [
            asyncio.create_task(generate(producer, traffic, plan, run.production, stop), name="generate"),
            asyncio.create_task(read_metrics(consumer, book, run.bad_partials), name="read-metrics"),
        ]
        stack.push_async_callback(cancel_tasks, tasks)
        console.say()
        console.say(
            f"generating for {run.duration_s:g} s; a row per arm appears as each {plan.window_s:g} s window closes"
        )
        await main_loop(run, services, tasks, stop, client)


async def main_loop(
    run: Run, services: Services, tasks: list[asyncio.Task[None]], stop: asyncio.Event, client: aioredis.Redis
) -> None:
    """Poll every tick: signals, worker health, task failures, closed windows, phase, status line."""
    plan, console, book, prod = run.plan, run.console, run.book, run.production
    phase = "generating"
    drain_deadline = math.inf
    while True:
        now = time.monotonic()
        run.check_signal()
        if not services.worker.alive():
            worker = services.worker
            tail = "\n".join(worker.log_tail(3000).splitlines()[-12:])
            msg = f"the stream worker exited unexpectedly; its log {worker.log_path} ends with:\n{tail}\n"
            raise RectuneError(msg, hint="see the worker log")
        for task in tasks:
            failure = task.exception() if task.done() and not task.cancelled() else None
            if failure is not None:
                raise failure
        await show_windows(run, book.due(now), client)
        if phase == "generating" and prod.elapsed_s(now) >= run.duration_s:
            stop.set()
            await tasks[0]
            phase = "closing"
            drain_deadline = now + plan.idle_close_s + plan.drain_timeout_s
            snapshot = status_of(run, phase, services.worker, now)
            console.status(partial(format_status, snapshot), now, force=True)
            console.say(
                f"generation stopped after {prod.elapsed_s(now):.1f} s; waiting for the worker to close "
                f"the last windows (idle close {plan.idle_close_s:g} s)"
            )
        if phase == "closing":
            if book.item_events >= prod.item_events:
                await show_windows(run, book.flush(), client)
                return
            if now >= drain_deadline:
                await show_windows(run, book.flush(), client)
                missing = prod.item_events - book.item_events
                console.say(f"warning: {missing:,} item events were not reported back within the drain timeout")
                return
        console.status(partial(format_status, status_of(run, phase, services.worker, now)), now)
        await asyncio.sleep(plan.tick_s * 2)


async def cancel_tasks(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the demo's background tasks and wait for them (registered by `live`)."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def read_heartbeat(url: str) -> tuple[str | None, int]:
    """Read the heartbeat back from Redis (proves the round trip; called by the summary)."""
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        value = await client.get(HEARTBEAT_KEY)
        count = await client.get(HEARTBEAT_COUNT_KEY)
        return (str(value) if value is not None else None), int(count or 0)
    finally:
        await client.aclose()


def print_summary(run: Run, services: Services | None) -> None:
    """The final table over the whole run, the lift, the accounting and the Redis heartbeat."""
    console, book, prod = run.console, run.book, run.production
    console.end_status()
    totals = book.totals()
    console.say()
    if not totals:
        console.say(f"summary: no window closed ({prod.item_events:,} item events produced)")
        return
    span = f"{clock(book.first_start_ms or 0)}-{clock(book.last_end_ms or 0)}"
    windows = max(stats.windows for stats in totals.values())
    console.say(f"summary over {plural(windows, 'window')} ({span}), all partials merged per arm")
    console.say(table_header(""))
    for stats in totals.values():
        console.say(format_arm_row("run", stats))
    control_arm, treatment_arm = run.plan.arms
    if control_arm in totals and treatment_arm in totals:
        lift = relative_lift(totals[treatment_arm].ctr, totals[control_arm].ctr)
        truth = run.plan.arm_ctr_lift[1] / run.plan.arm_ctr_lift[0] - 1.0
        lift_line = format_lift(lift, treatment_arm, control_arm)
        console.say(f"{lift_line}; the generator's true lift is {100 * truth:+.1f}%")
    share = book.item_events / prod.item_events if prod.item_events else math.nan
    console.say(
        f"accounting: {book.item_events:,} of {prod.item_events:,} produced item events aggregated ({pct(share, 2)})"
    )
    console.say(
        f"            {plural(prod.messages, 'envelope')} in, {plural(book.partials, 'partial')} out, "
        f"{plural(book.duplicates, 'duplicate')} ignored, {plural(book.late_partials, 'late partial')}"
    )
    for bad in run.bad_partials[:3]:
        console.say(f"warning: unreadable partial {bad}")
    if services is not None:
        try:
            value, count = asyncio.run(read_heartbeat(services.redis.url))
        except (RedisError, OSError) as err:
            console.say(f"redis: reading the heartbeat back failed: {err}")
        else:
            heartbeat = describe_heartbeat(value)
            console.say(f"redis: {plural(count, 'window')} recorded; GET {HEARTBEAT_KEY} -> {heartbeat}")


def describe_heartbeat(value: str | None) -> str:
    """One readable line for the heartbeat JSON read back from Redis (used by the summary)."""
    if value is None:
        return "(none)"
    beat = json.loads(value)
    ctrs = {arm: a["ctr"] if a["ctr"] is not None else math.nan for arm, a in beat["arms"].items()}
    arms = ", ".join(f"{arm} CTR {pct(ctr)}" for arm, ctr in sorted(ctrs.items()))
    return f"window {clock(beat['window_start_ms'])}-{clock(beat['window_end_ms'])}: {arms}"


def window_book(plan: DemoPlan) -> WindowBook:
    """The demo's `WindowBook`: wait for every partition, but no longer than an idle close takes.

    A partition whose traffic stopped before its watermark passed a window
    closes that window only by idle close (`idle_close_s`, checked every
    `checkpoint_interval_s`), so the grace covers that plus a second of slack.
    """
    grace_s = plan.idle_close_s + 2 * plan.checkpoint_interval_s + 1.0
    return WindowBook(plan.partitions, settle_s=0.3, grace_s=grace_s)


@contextmanager
def quiet_client_logs() -> Iterator[None]:
    """Hold the Kafka client's INFO chatter back while the demo owns the terminal (WARNING still shows)."""
    logger = logging.getLogger("aiokafka")
    previous = logger.level
    logger.setLevel(max(previous, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(previous)


def run_plan(
    settings: Settings, plan: DemoPlan, duration_s: float, work_dir: Path | None, out: TextIO, err: TextIO
) -> int:
    """Run the demo with an explicit plan and output streams (`run_demo` is the CLI's entry)."""
    console = Console(out, err, status_every_s=plan.status_every_s, log_every_s=plan.log_every_s)
    if not 0 < duration_s <= MAX_DURATION_S:
        console.error(f"rectune demo: error: --duration-s must be in (0, {MAX_DURATION_S:g}], got {duration_s:g}")
        return EXIT_START_FAILED
    began = time.monotonic()
    if work_dir is None:
        work_dir = Path(tempfile.mkdtemp(prefix="rectune-demo-"))
    work_dir = work_dir.resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    latch = SignalLatch("\n(shutting down, please wait: every stop is bounded)\n")
    run = Run(settings, plan, duration_s, work_dir, console, latch, window_book(plan))
    console.say(f"rectune demo: synthetic traffic -> stream worker -> per-arm metric windows, {duration_s:g} s")
    console.say(f"  work dir {work_dir} (logs: tansu.log, redis.log, worker.log)")
    code = 0
    services: Services | None = None
    with run.latch, quiet_client_logs(), ExitStack() as stack:
        try:
            services = start_services(run, stack)
            asyncio.run(live(run, services))
        except Interrupted as stop:
            console.end_status()
            console.say(f"\ninterrupted ({stop}): stopping early")
            code = stop.code
        except RectuneError as error:
            code = EXIT_START_FAILED if services is None else EXIT_FAILED
            console.end_status()
            console.error(f"rectune demo: error: {error}")
        except (KafkaError, RedisError, OSError, TimeoutError) as error:
            code = EXIT_FAILED
            console.end_status()
            console.error(f"rectune demo: error: {type(error).__name__}: {error}")
        if code in (0, 128 + signal.SIGINT, 128 + signal.SIGTERM):
            print_summary(run, services)
    if code == 0 and latch.signum is not None:
        code = 128 + latch.signum  # Ctrl-C while shutting down still reports the interruption
    console.say(f"done in {format_duration(time.monotonic() - began)} (exit {code}); logs kept in {work_dir}")
    return code


def run_demo(settings: Settings, duration_s: float = 75.0, work_dir: Path | None = None) -> int:
    """Entry point of `rectune demo` / `make demo` (called by `rectune.cli`); returns the exit code."""
    return run_plan(settings, DemoPlan(), duration_s, work_dir, sys.stdout, sys.stderr)
