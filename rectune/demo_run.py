"""A demo run's state and what it leaves behind: the summary it prints and the report it writes.

`Run` is shared by the steps of `rectune.demo.run_plan`.  At the end,
`print_summary` prints the per-arm table, the lift of the final incumbent
over the starting config (the same `rectune.report.final_lift` the report
uses), the agents' tally, the accounting and the Redis heartbeat;
`write_run_report` builds the report from what the run captured (plus the
world's oracle figures) and writes it under `runs/<UTC time>/`.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from rectune.demo_console import Console, Interrupted, SignalLatch
from rectune.demo_feed import Capture
from rectune.demo_services import DemoPlan, Services
from rectune.demo_view import HOLDOUT, ArmLabels
from rectune.progress import clock, pct, plural
from rectune.report import OracleFigures, RunRecords, build_report, final_lift, format_lift_line
from rectune.report_writer import run_directory, write_report
from rectune.settings import Settings

HEARTBEAT_KEY: Final = "rectune:demo:heartbeat"
HEARTBEAT_COUNT_KEY: Final = "rectune:demo:windows"


@dataclass(slots=True)
class Run:
    """State shared by the demo's steps (one per `run_plan` call)."""

    settings: Settings
    plan: DemoPlan
    duration_s: float
    work_dir: Path
    console: Console
    latch: SignalLatch
    north_star: tuple[str, str]
    slo_ms: float
    started_ms: int
    labels: ArmLabels = field(default_factory=ArmLabels)
    capture: Capture | None = None
    traffic: dict[str, Any] = field(default_factory=dict)
    skills: list[dict[str, Any]] = field(default_factory=list)
    started_s: float = 0.0
    traffic_done_s: float | None = None
    stopping_announced: bool = False
    last_panel_s: float = -math.inf

    def check_signal(self) -> None:
        """Raise `Interrupted` once a signal arrived (called between steps)."""
        if self.latch.signum is not None:
            raise Interrupted(self.latch.signum)

    @property
    def stats_path(self) -> Path:
        """Where `rectune traffic` writes its counters."""
        return self.work_dir / "traffic-stats.json"

    def read_traffic(self) -> dict[str, Any]:
        """The traffic process's latest counters (kept when the file is missing or mid-replace)."""
        with suppress(OSError, ValueError):
            self.traffic = json.loads(self.stats_path.read_text())
        return self.traffic


async def read_heartbeat(url: str) -> tuple[str | None, int]:
    """Read the heartbeat back from Redis (proves the round trip; called by the summary)."""
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        value = await client.get(HEARTBEAT_KEY)
        count = await client.get(HEARTBEAT_COUNT_KEY)
        return (str(value) if value is not None else None), int(count or 0)
    finally:
        await client.aclose()


def describe_heartbeat(value: str | None, labels: ArmLabels) -> str:
    """One readable line for the heartbeat JSON read back from Redis (used by the summary)."""
    if value is None:
        return "(none)"
    beat = json.loads(value)
    arms = ", ".join(
        f"{labels.arm(arm)} {a['north_star'] if a['north_star'] is not None else '-'}"
        for arm, a in sorted(beat["arms"].items())
    )
    return f"window {clock(beat['window_start_ms'])}-{clock(beat['window_end_ms'])}: {arms}"


def records_of(run: Run, *, interrupted: str | None, oracle: OracleFigures | None = None) -> RunRecords:
    """What the run captured, for the report and the summary's lift."""
    capture = run.capture
    assert capture is not None  # noqa: S101 - set by run_plan
    notes = [f"unreadable record {bad}" for bad in capture.bad[:5]]
    notes += [f"config change refused by the fold: {r}" for r in capture.refused_changes[:5]]
    sink = run.traffic.get("sink") or {}
    if sink.get("dropped") or sink.get("lost"):
        notes.append(f"the sidecar's event sink dropped {sink.get('dropped')} and lost {sink.get('lost')} events")
    return RunRecords(
        scenario=run.plan.scenario,
        surface=run.plan.surface,
        north_star=run.north_star,
        latency_slo_ms=run.slo_ms,
        started_ms=run.started_ms,
        ended_ms=int(time.time() * 1000),
        window_s=run.plan.window_s,
        brain=run.plan.resolved_brain(),
        partials=tuple(capture.partials.values()),
        decisions=tuple(capture.decisions),
        alerts=tuple(capture.alerts),
        config=tuple(capture.config),
        traffic=dict(run.traffic),
        skills=tuple(run.skills),
        oracle=oracle,
        time_scale=run.plan.time_scale,
        holdout_share=run.plan.holdout_share,
        interrupted=interrupted,
        notes=tuple(notes),
    )


def print_summary(run: Run, services: Services | None) -> None:
    """The final per-arm table over the run, the lift over the starting config, accounting, Redis heartbeat."""
    console, capture = run.console, run.capture
    if capture is None:
        return
    console.end_status()
    book = capture.book
    totals = book.totals()
    console.say()
    produced = int(run.traffic.get("item_events", 0))
    if not totals:
        console.say(f"summary: no window closed ({produced:,} item events produced)")
        return
    span = f"{clock(book.first_start_ms or 0)}-{clock(book.last_end_ms or 0)}"
    windows = max(stats.windows for stats in totals.values())
    console.say(f"summary over {plural(windows, 'window')} ({span}), all partials merged per arm")
    name = f"{run.north_star[0]}/{run.north_star[1]}"
    console.say(
        f"  {'arm':<8} {'requests':>9}  {name + ' [95% CI]':<28} {'CTR':>7} {'p99 ms':>7} {'cats':>5} {'fresh':>6}"
    )
    for arm, s in sorted(totals.items(), key=lambda kv: (kv[0] == HOLDOUT, run.labels.arm(kv[0]))):
        ns = s.north_star
        ci = f"{ns.value:.3f} [{ns.low:.3f}, {ns.high:.3f}]" if math.isfinite(ns.se) else f"{ns.value:.3f}"
        console.say(
            f"  {run.labels.arm(arm):<8} {s.requests:>9,}  {ci:<28} {pct(s.ctr.value):>7} "
            f"{s.latency_p99_ms:>7.1f} {s.categories_per_list:>5.2f} {pct(s.fresh_share, 1):>6}"
        )
    lift, why = final_lift(records_of(run, interrupted=None))
    console.say(format_lift_line(lift, why, name).replace("**", ""))
    counts = capture.counts()
    console.say(
        f"agents: {plural(counts['experiments'], 'experiment')} started, {counts['promotions']} promoted, "
        f"{counts['rollbacks']} rolled back or halted; incumbent v{capture.state.control_version}; "
        f"{plural(len(run.skills), 'skill')} in the Skillhub"
    )
    if run.labels.experiments:
        console.say("  " + "; ".join(run.labels.legend()))
    share = book.item_events / produced if produced else math.nan
    console.say(f"accounting: {book.item_events:,} of {produced:,} produced item events aggregated ({pct(share, 2)})")
    console.say(
        f"            {plural(book.partials, 'partial')} read, {plural(book.duplicates, 'duplicate')} ignored, "
        f"{plural(book.late_partials, 'late partial')}, {plural(len(capture.bad), 'unreadable record')}"
    )
    if services is not None:
        try:
            value, count = asyncio.run(read_heartbeat(services.redis.url))
        except (RedisError, OSError) as err:
            console.say(f"redis: reading the heartbeat back failed: {err}")
        else:
            heartbeat = describe_heartbeat(value, run.labels)
            console.say(f"redis: {plural(count, 'window')} recorded; GET {HEARTBEAT_KEY} -> {heartbeat}")


def oracle_figures(run: Run) -> OracleFigures | None:
    """The world's exact north star of the starting config and the final incumbent at the run's last simulated time."""
    capture = run.capture
    if capture is None or not capture.config:
        return None
    from simulator.scenario import load_scenario
    from simulator.world import World

    state = capture.state
    start_version = int(run.traffic.get("holdout_version") or capture.config[0].state.control_version)
    start, final = state.configs.get(start_version), state.configs.get(state.control_version)
    if start is None or final is None:
        return None
    world = World(load_scenario(run.plan.scenario), seed=run.plan.seed)
    at_s = float(run.traffic.get("sim_s", 0.0))
    return OracleFigures(
        world.expected(start, at_s=at_s, surface=run.plan.surface).north_star,
        world.expected(final, at_s=at_s, surface=run.plan.surface).north_star,
        at_s,
    )


def write_run_report(run: Run, *, interrupted: str | None) -> None:
    """Build and write `runs/<UTC>/report.md` and its figures; a failure is reported, never fatal."""
    if run.capture is None or not run.capture.partials:
        return
    console = run.console
    try:
        oracle = None if interrupted else oracle_figures(run)
    except Exception as err:  # the oracle is a bonus line; the report stands without it
        console.say(f"note: the oracle figures failed ({type(err).__name__}: {err})")
        oracle = None
    try:
        report = build_report(records_of(run, interrupted=interrupted, oracle=oracle), run.labels)
        directory = run_directory(run.plan.runs_dir, run.started_ms)
        written = write_report(report, directory)
    except (OSError, ValueError) as err:
        console.error(f"rectune demo: warning: writing the report failed: {type(err).__name__}: {err}")
        return
    figures = sum(1 for p in written if p.suffix == ".png")
    console.say(f"report: {directory / 'report.md'} (+{figures} figures)")
