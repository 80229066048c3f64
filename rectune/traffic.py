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

Layout: this module is the process edge: the wall clock (`wall_ms`), the
stats file (`write_stats`), the world and the sidecar it builds
(`load_world`, `sidecar_for`), `run_traffic` and the CLI
(`register_traffic_command`, called by `rectune.cli`).  The pure parts live
in `rectune.traffic_world` (the world's Protocols), `rectune.traffic_plan`
(`TrafficPlan`, `TrafficCounts`, `Served`, `Holdout`, `HOLDOUT_ARM`) and
`rectune.traffic_loop` (`serve_request`, `TrafficLoop`); this module
re-exports their public names (`__all__`), so callers import from
`rectune.traffic`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from rectune.demo_view import holdout_surface
from rectune.errors import RectuneError
from rectune.settings import Settings
from rectune.traffic_loop import TrafficLoop, serve_request
from rectune.traffic_plan import (
    ASSIGNMENT_SPACE,
    HOLDOUT_ARM,
    Holdout,
    Latency,
    Served,
    TrafficCounts,
    TrafficPlan,
)
from rectune.traffic_world import ResponseLike, ScenarioLike, UserLike, WorldLike
from schemas.config_log import Keyring
from serving_sidecar.breaker import SloRule
from serving_sidecar.replay import ReplaySettings
from serving_sidecar.sidecar import Sidecar, SidecarConfig

__all__ = [
    "ASSIGNMENT_SPACE",
    "HOLDOUT_ARM",
    "Holdout",
    "Latency",
    "ResponseLike",
    "ScenarioLike",
    "Served",
    "TrafficCounts",
    "TrafficLoop",
    "TrafficPlan",
    "UserLike",
    "WorldLike",
    "holdout_surface",
    "load_world",
    "register_traffic_command",
    "run_traffic",
    "serve_request",
    "sidecar_for",
    "wall_ms",
    "write_stats",
]


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
        replay=ReplaySettings(sample_rate=plan.replay_rate, attribution_s=plan.replay_attribution_s),
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
        replay_rate=args.replay_rate,
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
    p.add_argument(
        "--replay-rate",
        type=float,
        default=0.0,
        help="share of control requests replayed under the registered candidates (the Critic's off-policy rows)",
    )
    p.set_defaults(handler=_cmd_traffic)
