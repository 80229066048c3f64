"""The sidecar a ranker embeds: everything of this package behind three calls.

    sidecar = SidecarConfig(bootstrap=..., keyring=..., source_id="ranker-7").build()
    sidecar.start()                                   # LKG from Redis at once, then the topic
    request = sidecar.begin(user_id, surface="home", cohort="returning")
    ...rank with request.config (or sidecar.rank(request, candidates))...
    sidecar.finish(request, shown_items, latency_ms)  # latency per arm + impression event

`begin` is the hot path: one snapshot read, a cached hash assignment, a token;
it takes no lock shared with the config consumer.  `finish` records latency for
the SLO breaker and hands the impression to the background event sink.  A
timer thread runs the breaker once a second.  This module is the one place that
reads the wall clock for the sidecar (it is the edge); the logic it wires
takes time as an argument.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from schemas.alerts import Alert
from schemas.config import CascadeConfig
from schemas.config_log import Keyring
from schemas.events import Click, Conversion, Impression, ShownItem
from schemas.guardrails import Guardrails
from serving_sidecar.assignment import Assignment, Router
from serving_sidecar.breaker import SloBreaker, SloRule
from serving_sidecar.candidates import CandidateSet
from serving_sidecar.cascade import RankedList, rank
from serving_sidecar.config_consumer import ConfigConsumer
from serving_sidecar.errors import SidecarError
from serving_sidecar.holder import ConfigHolder, Snapshot
from serving_sidecar.latency import LatencyMonitor
from serving_sidecar.lkg import LkgStore, RedisLkgStore
from serving_sidecar.loop_thread import LoopThread
from serving_sidecar.replay import ReplayRecorder, ReplaySettings, target_probabilities
from serving_sidecar.sink import EventSink, KafkaAlertSink, KafkaReplaySink
from serving_sidecar.tracking import TrackingToken


@dataclass(frozen=True, slots=True)
class SidecarConfig:
    """Immutable configuration of one sidecar; `build()` makes the stateful `Sidecar`.

    `keyring` verifies config changes (from RECTUNE_CONFIG_KEYS, never from
    code); `redis_url` enables last-known-good; `slo_rules` drive the breaker.
    """

    bootstrap: str
    keyring: Keyring
    source_id: str
    redis_url: str | None = None
    guardrails: Guardrails = field(default_factory=Guardrails)
    slo_rules: tuple[SloRule, ...] = (SloRule(max_ms=50.0),)
    latency_window_s: float = 60.0
    breaker_interval_s: float = 1.0
    breaker_cooldown_s: float | None = None
    envelope_item_events: int = 100
    config_fetch_wait_ms: int = 20
    replay: ReplaySettings = field(default_factory=ReplaySettings)

    def build(self) -> Sidecar:
        """Wire holder, router, monitor, breaker, consumer and sinks (nothing starts yet)."""
        return Sidecar(self)


@dataclass(frozen=True, slots=True)
class Request:
    """One request's view: its assignment, the config to serve (surface resolved) and its token."""

    assignment: Assignment
    config: CascadeConfig
    token: TrackingToken
    started_s: float

    def click(self, item_id: str, position: int, t_ms: int) -> Click:
        """A click on this request's list, attributed to its arm and config version."""
        return self.token.click(item_id, position, t_ms)

    def conversion(self, item_id: str, revenue: float, t_ms: int) -> Conversion:
        """A conversion following a click on this request's list."""
        return self.token.conversion(item_id, revenue, t_ms)


class Sidecar:
    """The running sidecar (built by `SidecarConfig.build`)."""

    def __init__(self, config: SidecarConfig, *, clock_s: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.holder = ConfigHolder()
        self.router = Router()
        self.monitor = LatencyMonitor(config.latency_window_s)
        self._loop = LoopThread(f"rectune-sidecar-{config.source_id}")
        self.events = EventSink(config.bootstrap, config.source_id, max_item_events=config.envelope_item_events)
        self.alerts = KafkaAlertSink(config.bootstrap, config.source_id)
        lkg: LkgStore | None = RedisLkgStore(config.redis_url) if config.redis_url else None
        self.consumer = ConfigConsumer(
            config.bootstrap,
            self.holder,
            config.keyring,
            config.guardrails,
            lkg,
            self.alerts.emit,
            config.source_id,
            fetch_max_wait_ms=config.config_fetch_wait_ms,
        )
        self.breaker = SloBreaker(
            config.slo_rules,
            self.monitor,
            self.holder,
            self.alerts.emit,
            config.source_id,
            cooldown_s=config.breaker_cooldown_s,
        )
        self.replays: KafkaReplaySink | None = None
        self.replay: ReplayRecorder | None = None
        if config.replay.enabled:
            self.replays = KafkaReplaySink(config.bootstrap, config.source_id)
            self.replay = config.replay.build(self.replays.emit)
        self._clock_s = clock_s
        # Request ids: a random per-process prefix and a counter (uuid4 costs ~9 µs a call).
        self._id_prefix = uuid.uuid4().hex[:12]
        self._ids = itertools.count()
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> None:
        """Start background clients; returns once last-known-good (if any) is being served."""
        self._loop.start()
        self.events.start_in_thread(self._loop)
        self.alerts.start_in_thread(self._loop)
        if self.replays is not None:
            self.replays.start_in_thread(self._loop)
        self.consumer.start_in_thread(self._loop, timeout_s)
        self._timer = threading.Thread(target=self._breaker_loop, name="rectune-sidecar-breaker", daemon=True)
        self._timer.start()

    def wait_ready(self, timeout_s: float = 30.0) -> bool:
        """Block until a config is being served (from LKG or the topic)."""
        deadline = time.monotonic() + timeout_s
        while self.holder.snapshot() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.holder.snapshot() is not None

    def stop(self, timeout_s: float = 10.0) -> None:
        """Flush events and alerts, stop the consumer and the timer."""
        self._stop.set()
        if self._timer is not None:
            self._timer.join(timeout_s)
        self.consumer.stop_thread(timeout_s)
        self.events.close(timeout_s)
        self.alerts.close(timeout_s)
        if self.replay is not None and self.replays is not None:
            self.replay.flush(self._clock_s(), everything=True)
            self.replays.close(timeout_s)
        self._loop.stop(timeout_s)

    def __enter__(self) -> Sidecar:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _breaker_loop(self) -> None:
        while not self._stop.wait(self.config.breaker_interval_s):
            self.breaker.check(self._clock_s(), time.time_ns() // 1_000_000)
            if self.replay is not None:
                self.replay.flush(self._clock_s())

    # -- the request path --------------------------------------------------------------

    def begin(self, user_id: str, *, surface: str, cohort: str, request_id: str | None = None) -> Request:
        """Assign the user and fix the config for this request (hot path, no shared lock)."""
        snapshot: Snapshot | None = self.holder.snapshot()
        if snapshot is None:
            msg = "no config to serve yet: the config topic and last-known-good are both empty"
            raise SidecarError(msg, hint="publish a first config with `rectune config propose FILE --activate`")
        request_id = request_id or f"{self._id_prefix}-{next(self._ids)}"
        assignment = self.router.assign(snapshot, user_id, request_id)
        token = TrackingToken(
            request_id,
            user_id,
            cohort,
            surface,
            assignment.arm_id,
            assignment.config_version,
            time.time_ns() // 1_000_000,
        )
        return Request(assignment, assignment.config.for_surface(surface), token, self._clock_s())

    def rank(self, request: Request, candidates: CandidateSet, rng: np.random.Generator) -> RankedList:
        """Run the reference cascade with this request's config (rankers may use their own).

        A sampled request served the control config also gets replayed under
        every pending candidate (`serving_sidecar.replay`): the Critic's
        off-policy rows.  Only sampled requests pay for that.
        """
        ranked = rank(candidates, request.config, rng)
        recorder = self.replay
        if recorder is not None and ranked.indices.size and recorder.wants(request.token.request_id):
            try:
                self._replay(recorder, request, candidates, ranked)
            except Exception as err:  # a candidate that cannot rank this set must never fail the request
                recorder.failed(f"{type(err).__name__}: {err}")
        return ranked

    def _replay(self, recorder: ReplayRecorder, request: Request, candidates: CandidateSet, ranked: RankedList) -> None:
        snapshot = self.holder.snapshot()
        if snapshot is None or not snapshot.pending:
            return
        if request.assignment.config_version != snapshot.control.config_version:
            return  # only the incumbent's requests log the policy the candidates are compared with
        surface = request.token.surface
        targets = [
            (version, target_probabilities(candidates, config.for_surface(surface), ranked.indices))
            for version, config in snapshot.pending
        ]
        item_ids = [str(item) for item in candidates.item_ids[ranked.indices].tolist()]
        recorder.record(request.token, item_ids, ranked.propensities.tolist(), targets, self._clock_s())

    def finish(self, request: Request, items: tuple[ShownItem, ...], latency_ms: float | None = None) -> Impression:
        """Record the request's latency under its arm and emit its impression (never blocks)."""
        if latency_ms is None:
            latency_ms = (self._clock_s() - request.started_s) * 1000.0
        self.monitor.record(request.assignment.arm_id, latency_ms, self._clock_s())
        impression = request.token.impression(items, ranker_latency_ms=latency_ms)
        self.events.emit(impression)
        return impression

    def emit(self, event: Click | Conversion) -> None:
        """Hand a click or conversion (built from a request's token) to the event sink."""
        self.events.emit(event)
        if self.replay is not None and isinstance(event, Click):
            self.replay.click(event)

    def alert(self, alert: Alert) -> None:
        """Publish an alert from the host (e.g. its own health checks)."""
        self.alerts.emit(alert)
