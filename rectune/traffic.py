"""`rectune traffic`: simulated shoppers served through the REAL sidecar (the demo's ranker process).

Each request: a user drawn from the simulator's world, `sidecar.begin` (arm
assignment and one config snapshot), the world's candidate set at the
simulated time, `sidecar.rank` (the reference cascade with the arm's
config), `sidecar.finish` (latency under the arm, impression event), then the
world's response turned into click and conversion events built from the
request's token.  So a config the agents promote really changes what users
see, and the events carry the arm and config version that served them.

Two clocks.  Events carry wall-clock event times (the stream worker windows
on them and the agents tick on wall time); the world's clock, which only
ages the catalogue (weekly turnover, drift), runs `time_scale` times faster
(3600: one wall second is one simulated hour).

Holdout.  A fixed share of users (chosen by a salted hash independent of
the sidecar's assignment and of the metric buckets) is served the config
that was live when this process started, under arm `holdout` on surface
`<surface>.holdout`.  The agents of `<surface>` never see it (their metrics
feed filters by surface), so it is an untouched, concurrent, randomised
reference for "final incumbent vs starting config" in the demo's report.

Latency.  By default the latency recorded for a request is the world's
modelled ranker latency for the served config (`World.latency_ms`: grows
with the candidate cuts), so the SLO guardrail reacts to the config rather
than to CPU contention on a shared laptop; `--latency measured` records the
sidecar's own wall-clock measurement instead.

The core (`serve_request`, `TrafficLoop.step`) takes time as arguments; the
edge (`run_traffic`, `_cmd_traffic`) reads the clocks and signals.  Counters
go to a JSON stats file (atomic rename) that the demo reads.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Generic, Literal, Protocol, TypeVar

import numpy as np

from rectune.demo_view import HOLDOUT, holdout_surface
from rectune.errors import RectuneError
from rectune.settings import Settings
from schemas.config import CascadeConfig
from schemas.config_log import Keyring
from schemas.events import Impression
from serving_sidecar.assignment import assignment_bucket
from serving_sidecar.breaker import SloRule
from serving_sidecar.candidates import CandidateSet
from serving_sidecar.cascade import RankedList, rank
from serving_sidecar.sidecar import Sidecar, SidecarConfig
from serving_sidecar.tracking import TrackingToken

__all__ = [
    "HOLDOUT_ARM",
    "Holdout",
    "TrafficCounts",
    "TrafficLoop",
    "TrafficPlan",
    "holdout_surface",
    "register_traffic_command",
    "run_traffic",
    "serve_request",
]

HOLDOUT_ARM: Final = HOLDOUT
ASSIGNMENT_SPACE: Final = 10_000
Latency = Literal["model", "measured"]


# -- the world, as this module uses it (simulator/world.py implements it) ----------------


class UserLike(Protocol):
    """A simulated user: what the sidecar needs to assign and stamp a request."""

    @property
    def user_id(self) -> str:
        """Stable user id (the randomisation unit)."""
        ...

    @property
    def cohort(self) -> str:
        """Cohort label stamped into the events."""
        ...


class ResponseLike(Protocol):
    """What a user did with a shown list."""

    @property
    def clicks(self) -> Sequence[tuple[str, int]]:
        """(item id, position) of each click."""
        ...

    @property
    def conversions(self) -> Sequence[tuple[str, float]]:
        """(item id, revenue) of each purchase."""
        ...


class ScenarioLike(Protocol):
    """The scenario fields this process reads."""

    @property
    def name(self) -> str:
        """Scenario name."""
        ...

    @property
    def latency_slo_ms(self) -> float:
        """The p99 latency SLO (the sidecar's breaker uses it)."""
        ...


U = TypeVar("U", bound=UserLike)


class WorldLike(Protocol[U]):
    """The demo path of `simulator.world.World` (the contract this process is written against)."""

    @property
    def scenario(self) -> ScenarioLike:
        """The world's parameters."""
        ...

    def draw_user(self, rng: np.random.Generator) -> U:
        """A user, drawn by activity."""
        ...

    def candidates(self, user: U, *, at_s: float) -> CandidateSet:
        """The candidate set (noisy model predictions) for `user` at simulated time `at_s`."""
        ...

    def respond(
        self, user: U, shown: RankedList, candidates: CandidateSet, *, at_s: float, rng: np.random.Generator
    ) -> ResponseLike:
        """Clicks and conversions on the shown list."""
        ...

    def latency_ms(self, config: CascadeConfig, rng: np.random.Generator) -> float:
        """Modelled ranker latency of `config`."""
        ...


# -- plan and counters ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrafficPlan:
    """What `rectune traffic` runs: scenario, surface, rate, clocks, holdout, latency source.

    Built by the CLI from flags; the demo passes the same flags.
    """

    scenario: str = "apparel_core"
    surface: str = "home"
    requests_per_s: float = 300.0
    time_scale: float = 3600.0
    holdout_share: float = 0.1
    holdout_salt: str = "rectune-demo-holdout"
    latency: Latency = "model"
    seed: int = 7
    duration_s: float | None = None
    stats_path: Path | None = None
    stats_every_s: float = 1.0
    ready_timeout_s: float = 30.0
    source_id: str = "demo-ranker"

    def __post_init__(self) -> None:
        """Refuse a plan that cannot run (names the field and the rule)."""
        bad = []
        if not 0.0 < self.requests_per_s <= 100_000.0:
            bad.append(f"requests_per_s: must be in (0, 100000], got {self.requests_per_s}")
        if not 0.0 < self.time_scale <= 1e7:
            bad.append(f"time_scale: must be in (0, 1e7] simulated seconds per wall second, got {self.time_scale}")
        if not 0.0 <= self.holdout_share < 0.5:
            bad.append(f"holdout_share: must be in [0, 0.5), got {self.holdout_share}")
        if self.duration_s is not None and not self.duration_s > 0.0:
            bad.append(f"duration_s: must be > 0 when given, got {self.duration_s}")
        if self.latency not in ("model", "measured"):
            bad.append(f"latency: must be 'model' or 'measured', got {self.latency!r}")
        if bad:
            msg = "traffic plan: " + "; ".join(bad)
            raise RectuneError(msg, hint="see `rectune traffic --help`")


@dataclass(slots=True)
class TrafficCounts:
    """What the traffic process has handed to the sidecar so far (written to the stats file)."""

    requests: int = 0
    holdout_requests: int = 0
    item_events: int = 0
    clicks: int = 0
    conversions: int = 0
    first_ms: int | None = None
    last_ms: int | None = None
    sim_s: float = 0.0
    wall_s: float = 0.0
    by_arm: dict[str, int] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)

    def add(self, served: Served) -> None:
        """Count one served request."""
        self.requests += 1
        self.holdout_requests += served.arm_id == HOLDOUT_ARM
        self.item_events += served.item_events
        self.clicks += served.clicks
        self.conversions += served.conversions
        self.first_ms = served.event_time_ms if self.first_ms is None else self.first_ms
        self.last_ms = served.event_time_ms
        self.by_arm[served.arm_id] = self.by_arm.get(served.arm_id, 0) + 1
        key = str(served.config_version)
        self.versions[key] = self.versions.get(key, 0) + 1

    def to_json(self, **extra: Any) -> dict[str, Any]:
        """The stats file's body."""
        body: dict[str, Any] = {
            "requests": self.requests,
            "holdout_requests": self.holdout_requests,
            "item_events": self.item_events,
            "clicks": self.clicks,
            "conversions": self.conversions,
            "first_ms": self.first_ms,
            "last_ms": self.last_ms,
            "sim_s": round(self.sim_s, 3),
            "wall_s": round(self.wall_s, 3),
            "by_arm": dict(sorted(self.by_arm.items())),
            "config_versions": dict(sorted(self.versions.items())),
        }
        body.update(extra)
        return body


@dataclass(frozen=True, slots=True)
class Served:
    """One request as served: its arm and version, and how many item-level events it produced."""

    arm_id: str
    config_version: int
    item_events: int
    clicks: int
    conversions: int
    event_time_ms: int


@dataclass(frozen=True, slots=True)
class Holdout:
    """The holdout arm: who is in it (salted hash) and the frozen config it is served."""

    share: float
    salt: str
    surface: str
    config: CascadeConfig
    config_version: int

    def contains(self, user_id: str) -> bool:
        """True for users in the holdout (independent of the sidecar's salt and the metric buckets)."""
        return self.share > 0.0 and assignment_bucket(self.salt, user_id) < round(self.share * ASSIGNMENT_SPACE)


# -- one request --------------------------------------------------------------------------


def _emit_response(sidecar: Sidecar, token: TrackingToken, response: ResponseLike, now_ms: int) -> tuple[int, int]:
    for item_id, position in response.clicks:
        sidecar.emit(token.click(str(item_id), int(position), now_ms))
    for item_id, revenue in response.conversions:
        sidecar.emit(token.conversion(str(item_id), float(revenue), now_ms))
    return len(response.clicks), len(response.conversions)


def serve_request(
    world: WorldLike[U],
    sidecar: Sidecar,
    user: U,
    *,
    surface: str,
    at_s: float,
    now_ms: int,
    rng: np.random.Generator,
    holdout: Holdout | None = None,
    latency: Latency = "model",
    request_id: str = "",
) -> Served:
    """Serve one request of `user` through the sidecar and emit its events (called by `TrafficLoop.step`).

    `at_s` is the world's simulated time (catalogue, drift).  A holdout user
    is ranked with the holdout's frozen config by the same reference cascade
    and its events are stamped `arm_id="holdout"` on the holdout surface at
    `now_ms`; everyone else goes through `begin` / `rank` / `finish`, and
    their events carry the time the sidecar stamped in `begin`.
    """
    cands = world.candidates(user, at_s=at_s)
    if holdout is not None and holdout.contains(user.user_id):
        config = holdout.config.for_surface(surface)
        token = TrackingToken.for_arm(
            request_id=request_id or f"holdout-{user.user_id}-{now_ms}",
            user_id=user.user_id,
            cohort=user.cohort,
            surface=holdout.surface,
            arm_id=HOLDOUT_ARM,
            config_version=holdout.config_version,
            event_time_ms=now_ms,
        )
        started = time.perf_counter()
        ranked = rank(cands, config, rng)
        spent_ms = (time.perf_counter() - started) * 1000.0
        items = ranked.to_shown_items(cands)
        latency_ms = world.latency_ms(config, rng) if latency == "model" else spent_ms
        impression: Impression = token.impression(items, ranker_latency_ms=latency_ms)
        sidecar.events.emit(impression)
        response = world.respond(user, ranked, cands, at_s=at_s, rng=rng)
        clicks, conversions = _emit_response(sidecar, token, response, now_ms)
        return Served(
            HOLDOUT_ARM, holdout.config_version, len(items) + clicks + conversions, clicks, conversions, now_ms
        )
    request = sidecar.begin(user.user_id, surface=surface, cohort=user.cohort, request_id=request_id or None)
    ranked = sidecar.rank(request, cands, rng)
    model_ms = world.latency_ms(request.config, rng) if latency == "model" else None
    items = ranked.to_shown_items(cands)
    sidecar.finish(request, items, model_ms)
    response = world.respond(user, ranked, cands, at_s=at_s, rng=rng)
    at_ms = request.token.event_time_ms
    clicks, conversions = _emit_response(sidecar, request.token, response, at_ms)
    return Served(
        request.assignment.arm_id,
        request.assignment.config_version,
        len(items) + clicks + conversions,
        clicks,
        conversions,
        at_ms,
    )


# -- the loop -----------------------------------------------------------------------------


class TrafficLoop(Generic[U]):
    """Paces requests at `plan.requests_per_s` and serves the ones due (the core of `rectune traffic`).

    `step(elapsed_s)` serves every request due by `elapsed_s` wall seconds
    since the start (at most a quarter second's worth per call, so a stall
    catches up gradually) and returns how many it served.  The world's clock
    is `elapsed_s * time_scale`; `clock_ms` stamps holdout events (the
    sidecar stamps the others itself).
    """

    def __init__(
        self,
        plan: TrafficPlan,
        world: WorldLike[U],
        sidecar: Sidecar,
        holdout: Holdout | None,
        clock_ms: Callable[[], int],
    ) -> None:
        """Keep the parts; the random stream is seeded from `plan.seed`."""
        self.plan, self.world, self.sidecar, self.holdout = plan, world, sidecar, holdout
        self.clock_ms = clock_ms
        self.rng = np.random.default_rng(plan.seed)
        self.counts = TrafficCounts()
        self._cap = max(1, int(plan.requests_per_s / 4))
        self._ids = 0

    def due(self, elapsed_s: float) -> int:
        """Requests due by `elapsed_s` and not yet served (capped at a quarter second's worth)."""
        return max(0, min(self._cap, int(elapsed_s * self.plan.requests_per_s) - self.counts.requests))

    def step(self, elapsed_s: float) -> int:
        """Serve the requests due by `elapsed_s`; returns how many."""
        due = self.due(elapsed_s)
        at_s = elapsed_s * self.plan.time_scale
        for _ in range(due):
            user = self.world.draw_user(self.rng)
            self._ids += 1
            served = serve_request(
                self.world,
                self.sidecar,
                user,
                surface=self.plan.surface,
                at_s=at_s,
                now_ms=self.clock_ms(),
                rng=self.rng,
                holdout=self.holdout,
                latency=self.plan.latency,
                request_id=f"{self.plan.source_id}-{self.plan.seed}-{self._ids}",
            )
            self.counts.add(served)
        self.counts.sim_s = at_s
        self.counts.wall_s = elapsed_s
        return due


# -- the process edge ---------------------------------------------------------------------


def wall_ms() -> int:
    """Wall-clock milliseconds (the event-time source of this edge process)."""
    return time.time_ns() // 1_000_000


def write_stats(path: Path, body: dict[str, Any]) -> None:
    """Write the stats file atomically (the demo may read it at any moment)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(body, sort_keys=True))
    os.replace(tmp, path)


def load_world(scenario: str, seed: int) -> WorldLike[Any]:
    """The simulator's world for `scenario` (a shipped name or a JSON path)."""
    from simulator.scenario import SimulatorError, load_scenario
    from simulator.world import World

    try:
        return World(load_scenario(scenario), seed=seed)
    except SimulatorError as err:
        msg = f"--scenario {scenario}: {err}"
        raise RectuneError(msg, hint="a shipped name (e.g. apparel_core) or a path to a scenario JSON") from err


def sidecar_for(plan: TrafficPlan, settings: Settings, slo_ms: float) -> Sidecar:
    """The real sidecar of this ranker process (signed config log, last-known-good in Redis, SLO breaker)."""
    keys = Keyring.parse(settings.config_keys, settings.config_key_id)
    return SidecarConfig(
        bootstrap=settings.bootstrap,
        keyring=keys,
        source_id=f"{plan.source_id}-{plan.seed}",
        redis_url=settings.redis_url,
        slo_rules=(SloRule(max_ms=slo_ms, quantile=0.99, window_s=30.0, min_samples=500),),
    ).build()


def run_traffic(
    plan: TrafficPlan, settings: Settings, stop: threading.Event, *, world: WorldLike[Any] | None = None
) -> TrafficCounts:
    """Serve traffic until `stop` is set or `plan.duration_s` passed; returns the counts (the command's body).

    Waits for the sidecar to serve a config first (the demo publishes the
    starting config before it starts this process).  The holdout is frozen on
    the config served at that moment.  The sidecar is stopped (events
    flushed) before the final stats are written, so the demo's accounting can
    compare them with what the stream worker aggregated.
    """
    world = world if world is not None else load_world(plan.scenario, plan.seed)
    sidecar = sidecar_for(plan, settings, float(world.scenario.latency_slo_ms))
    counts = TrafficCounts()
    finished = False
    holdout_version: int | None = None
    sidecar.start()
    try:
        if not sidecar.wait_ready(plan.ready_timeout_s):
            msg = f"no config to serve after {plan.ready_timeout_s:g} s (rectune.config and last-known-good empty)"
            raise RectuneError(msg, hint="publish a first config with `rectune config propose FILE --activate`")
        snapshot = sidecar.holder.snapshot()
        assert snapshot is not None  # noqa: S101 - wait_ready said so
        holdout = Holdout(
            plan.holdout_share,
            plan.holdout_salt,
            holdout_surface(plan.surface),
            snapshot.control.config,
            snapshot.control.config_version,
        )
        holdout_version = holdout.config_version
        loop = TrafficLoop(plan, world, sidecar, holdout if plan.holdout_share > 0 else None, wall_ms)
        counts = loop.counts
        started = time.monotonic()
        next_stats = started
        while not stop.is_set():
            elapsed = time.monotonic() - started
            if plan.duration_s is not None and elapsed >= plan.duration_s:
                break
            if loop.step(elapsed) == 0:
                stop.wait(0.005)
            if plan.stats_path is not None and time.monotonic() >= next_stats:
                next_stats += plan.stats_every_s
                write_stats(plan.stats_path, counts.to_json(done=False, holdout_version=holdout_version))
        finished = True
    finally:
        sidecar.stop()
        stats = sidecar.events.stats()
        sink = {"emitted": stats.emitted, "sent": stats.sent, "dropped": stats.dropped, "lost": stats.lost}
        if plan.stats_path is not None:
            body = counts.to_json(done=finished, holdout_version=holdout_version, sink=sink)
            write_stats(plan.stats_path, body)
    return counts


def _cmd_traffic(args: argparse.Namespace, settings: Settings) -> int:
    plan = TrafficPlan(
        scenario=args.scenario,
        surface=args.surface,
        requests_per_s=args.rate,
        time_scale=args.time_scale,
        holdout_share=args.holdout_share,
        latency=args.latency,
        seed=args.seed,
        duration_s=args.duration_s,
        stats_path=Path(args.stats_file) if args.stats_file else None,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _sig, _frame: stop.set())
    counts = run_traffic(plan, settings, stop)
    print(json.dumps(counts.to_json()), flush=True)
    return 0


def register_traffic_command(sub: Any) -> None:
    """Add `rectune traffic` to the main parser's subcommands (called by `rectune.cli.build_parser`)."""
    p = sub.add_parser(
        "traffic",
        help="serve simulated shoppers through the real sidecar (the demo's ranker process)",
        description="Simulated users from the scenario's world, ranked by the sidecar's cascade with the "
        "arm's config; impressions, clicks and conversions go to rectune.events.  Stops on SIGTERM/SIGINT.",
    )
    p.add_argument("--scenario", default="apparel_core", help="shipped scenario name or path to a scenario JSON")
    p.add_argument("--surface", default="home", help="surface the requests are served on")
    p.add_argument("--rate", type=float, default=300.0, help="requests per wall-clock second")
    p.add_argument(
        "--time-scale", type=float, default=3600.0, help="simulated seconds per wall second (catalogue ageing)"
    )
    p.add_argument("--holdout-share", type=float, default=0.1, help="share of users kept on the starting config")
    p.add_argument("--latency", choices=["model", "measured"], default="model", help="latency recorded per request")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--duration-s", type=float, default=None, help="stop after this many seconds (default: a signal)")
    p.add_argument("--stats-file", default=None, help="write counters to this JSON file every second and at exit")
    p.set_defaults(handler=_cmd_traffic)
