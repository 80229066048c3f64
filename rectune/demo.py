"""`rectune demo` (`make demo`): the whole tuning loop on one machine, live, in about three minutes.

On the embedded broker (tansu) and Redis, with no key and no Docker, it
publishes the hand-tuned starting config (version 1, signed with a per-run
key), then starts the stream worker, the agents (`rectune agents`: offline
brain, Gemini when GEMINI_API_KEY is set) with a demo policy, and the
simulated traffic (`rectune traffic`: users of the scenario's world served
through the real sidecar, a holdout kept on the starting config).  While it
runs it reads `rectune.metrics`, `rectune.decisions`, `rectune.alerts` and
`rectune.config`, and shows a status line, one line per closed window, one
per decision, alert and config change, and every `panel_every_s` a panel of
the active arms (north star and lift with intervals, latency p99 against
the SLO, last decisions).  At the end it stops the traffic and the agents,
waits for the last windows, prints a summary (the lift of the final
incumbent over the starting config with its interval), stops everything in
order and writes `runs/<UTC time>/report.md` with PNG plots.

Modules: `demo_services` (processes and the agents' policy), `demo_feed`
(what is read), `demo_view` (pure formatting), `demo_run` (run state,
summary, report hand-off), `report`/`report_plots` (pure report),
`report_writer` (files), `demo_console` (terminal and signals).  Exit codes: 0 done, 1 a component
failed mid-run, 2 start-up failed, 128+N stopped by signal N (130 for Ctrl-C).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack, ExitStack, contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Final, TextIO

import redis.asyncio as aioredis
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from rectune.agents_cli import require_brain_key
from rectune.demo_console import Console, Interrupted, SignalLatch
from rectune.demo_feed import Capture, finite_or_none, open_consumer, read_topics
from rectune.demo_run import HEARTBEAT_COUNT_KEY, HEARTBEAT_KEY, Run, print_summary, records_of, write_run_report
from rectune.demo_services import (
    DemoPlan,
    Services,
    StartContext,
    dead_child,
    demo_policy,
    demo_traffic_plan,
    start_services,
)
from rectune.demo_view import HOLDOUT, LoopStatus, PanelArm, format_loop_status, panel, window_line
from rectune.embedded import ManagedProcess
from rectune.errors import RectuneError
from rectune.progress import ClosedWindow, WindowBook, format_duration
from rectune.report import final_lift
from rectune.settings import Settings

__all__ = ["DemoPlan", "run_demo", "run_plan"]

EXIT_FAILED: Final = 1
EXIT_START_FAILED: Final = 2
MAX_DURATION_S: Final = 3600.0
DEFAULT_DURATION_S: Final = 180.0


def stop_process(run: Run, name: str, proc: ManagedProcess, timeout_s: float) -> None:
    """Stop one service and say how long it took (registered by `start_services`)."""
    if not run.stopping_announced:
        run.console.say()
        run.console.say("stopping:")
        run.stopping_announced = True
    was_alive = proc.alive()
    began = time.monotonic()
    proc.stop(timeout_s)
    note = "" if was_alive else " (had exited)"
    run.console.say(f"  stopped {name:<7} {time.monotonic() - began:4.1f} s{note}")


# -- the live part -------------------------------------------------------------------------------


def heartbeat_json(window: ClosedWindow, written_ms: int) -> str:
    """The Redis heartbeat value: the latest closed window's per-arm counts and north star (JSON)."""
    arms = {
        arm: {
            "requests": a.requests,
            "clicks": a.clicks,
            "north_star": finite_or_none(a.north_star.value),
            "latency_p99_ms": finite_or_none(a.latency_p99_ms),
        }
        for arm, a in window.arms.items()
    }
    beat = {"window_start_ms": window.start_ms, "window_end_ms": window.end_ms, "arms": arms, "written_ms": written_ms}
    return json.dumps(beat, sort_keys=True)


async def show_windows(run: Run, windows: list[ClosedWindow], client: aioredis.Redis) -> None:
    """Print one line per newly closed window and write the Redis heartbeat for the latest."""
    if not windows:
        return
    for window in windows:
        run.console.say(window_line(window, run.labels))
    await client.set(HEARTBEAT_KEY, heartbeat_json(windows[-1], int(time.time() * 1000)))
    await client.incrby(HEARTBEAT_COUNT_KEY, len(windows))


def show_panel(run: Run, capture: Capture, elapsed_s: float) -> None:
    """The periodic panel of the active arms and the last decisions."""
    totals = capture.book.totals()
    serving = capture.arm_serving()
    arms = [PanelArm(totals[a], v, share) for a, (v, share) in serving.items() if a in totals]
    if HOLDOUT in totals:
        arms.append(PanelArm(totals[HOLDOUT], int(run.traffic.get("holdout_version") or 1), None))
    allocation = capture.state.allocation
    control = allocation.arms[0].arm_id if allocation is not None else "control"
    name = f"{run.north_star[0]}/{run.north_star[1]}"
    lift, _ = final_lift(records_of(run, interrupted=None))
    headline = ""
    if lift is not None:
        low, high = lift.interval()
        headline = (
            f"incumbent v{lift.final_version} vs starting config (holdout), so far: "
            f"{100 * lift.north_star.lift:+.1f}% [95% CI {100 * low:+.1f}%, {100 * high:+.1f}%]"
        )
    for line in panel(
        elapsed_s=elapsed_s,
        duration_s=run.duration_s,
        north_star_name=name,
        slo_ms=run.slo_ms,
        serving=capture.state,
        arms=arms,
        control_arm=control,
        recent=list(capture.recent),
        labels=run.labels,
        headline=headline,
    ):
        run.console.say(line)


def loop_status(run: Run, services: Services, phase: str, elapsed_s: float) -> LoopStatus:
    """Snapshot for the status line."""
    capture = run.capture
    assert capture is not None  # noqa: S101 - set before the loop
    t = run.traffic
    produced = int(t.get("item_events", 0))
    counts = capture.counts()
    children = services.children()
    wall = float(t.get("wall_s", 0.0)) or 0.0
    return LoopStatus(
        phase=phase,
        elapsed_s=elapsed_s,
        duration_s=run.duration_s,
        requests=int(t.get("requests", 0)),
        requests_per_s=int(t.get("requests", 0)) / wall if wall > 0 else 0.0,
        item_events=produced,
        aggregated_share=capture.book.item_events / produced if produced else math.nan,
        windows_closed=capture.book.windows_closed,
        decisions=len(capture.decisions),
        experiments=counts["experiments"],
        promotions=counts["promotions"],
        rollbacks=counts["rollbacks"],
        children_up=sum(1 for _, p in children if p.alive()),
        children=len(children),
    )


async def live(run: Run, services: Services) -> None:
    """Run the loop, read everything, print the view; end the traffic and agents, drain the last windows.

    The demo's async part (one `asyncio.run`).  Raises `Interrupted` on a
    signal (what was read so far stays in `run.capture`) and `RectuneError`
    when a child process dies.
    """
    capture = run.capture
    assert capture is not None  # noqa: S101 - set by run_plan
    async with AsyncExitStack() as stack:
        consumer = await open_consumer(services.broker.bootstrap)
        stack.push_async_callback(consumer.stop)
        client = aioredis.Redis.from_url(services.redis.url)
        stack.push_async_callback(client.aclose)
        await client.delete(HEARTBEAT_KEY, HEARTBEAT_COUNT_KEY)
        reader = asyncio.create_task(read_topics(consumer, capture, time.monotonic), name="read-topics")
        stack.push_async_callback(cancel_task, reader)
        run.console.say()
        run.console.say(
            f"running the loop for {run.duration_s:g} s: a line per {run.plan.window_s:g} s window (north star "
            f"{run.north_star[0]}/{run.north_star[1]} and p99 ms per arm), per decision, alert and config change; "
            f"a panel every {run.plan.panel_every_s:g} s"
        )
        await main_loop(run, services, reader, client)
        await read_skills(run, services.redis.url)


async def main_loop(run: Run, services: Services, reader: asyncio.Task[None], client: aioredis.Redis) -> None:
    """Poll every tick: signals, children, the reader, new lines, closed windows, panel, phase, status line."""
    plan, console, capture = run.plan, run.console, run.capture
    assert capture is not None  # noqa: S101 - set by run_plan
    phase = "running"
    drain_deadline = math.inf
    while True:
        now = time.monotonic()
        elapsed = now - run.started_s
        run.check_signal()
        if reader.done() and not reader.cancelled() and reader.exception() is not None:
            msg = f"reading the topics failed: {reader.exception()}"
            raise RectuneError(msg, hint="see the broker log")
        required = ("worker", "agents", "traffic") if phase == "running" else ("worker",)
        failure = dead_child(services, required)
        stats = run.read_traffic()  # after the check: a traffic process that exited has written its last stats
        if failure is not None and not (failure[0] == "traffic" and stats.get("done")):
            raise failure[1]
        for line in capture.drain_lines():
            console.say(line)
        await show_windows(run, capture.book.due(now), client)
        if phase == "running" and now - run.last_panel_s >= plan.panel_every_s and capture.book.windows_closed:
            run.last_panel_s = now
            show_panel(run, capture, elapsed)
        traffic_over = stats.get("done") or elapsed >= run.duration_s + 30.0
        if phase == "running" and traffic_over:
            phase = "closing"
            await end_of_traffic(run, services)
            drain_deadline = time.monotonic() + plan.idle_close_s + plan.drain_timeout_s
        if phase == "closing":
            produced = int(run.traffic.get("item_events", 0))
            if capture.book.item_events >= produced or time.monotonic() >= drain_deadline:
                for line in capture.drain_lines():
                    console.say(line)
                await show_windows(run, capture.book.flush(), client)
                if capture.book.item_events < produced:
                    missing = produced - capture.book.item_events
                    console.say(f"warning: {missing:,} item events were not reported back within the drain timeout")
                return
        console.status(partial(format_loop_status, loop_status(run, services, phase, elapsed)), now)
        await asyncio.sleep(plan.tick_s)


async def end_of_traffic(run: Run, services: Services) -> None:
    """Traffic has served its duration: stop it (if still up) and the agents, keep the final counters."""
    console = run.console
    traffic, agents = services.traffic, services.agents
    if traffic is not None:
        await asyncio.to_thread(traffic.stop, run.plan.stop_timeout_s)
    run.traffic_done_s = time.monotonic()
    stats = run.read_traffic()
    if agents is not None:
        await asyncio.to_thread(agents.stop, run.plan.stop_timeout_s)
    console.end_status()
    console.say(
        f"traffic done: {int(stats.get('requests', 0)):,} requests in {float(stats.get('wall_s', 0)):.0f} s; agents "
        f"stopped; waiting for the worker to close the last windows (idle close {run.plan.idle_close_s:g} s)"
    )


async def read_skills(run: Run, url: str) -> None:
    """The Skillhub's entries at the end of the run (for the report), as plain dicts."""
    import msgspec

    from agents.skillhub import RedisSkillStore

    store = RedisSkillStore(url)
    try:
        run.skills = [msgspec.to_builtins(s) for s in await store.load_all()]
    except (RedisError, OSError, ValueError) as err:
        run.console.say(f"warning: reading the Skillhub failed: {err}")
    finally:
        await store.aclose()


async def cancel_task(task: asyncio.Task[None]) -> None:
    """Cancel a background task and wait for it (registered by `live`)."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


# -- entry points ------------------------------------------------------------------------------------


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


def load_world_facts(plan: DemoPlan) -> tuple[tuple[str, str], float]:
    """The scenario's north star and latency SLO (refuses an unknown scenario before anything starts)."""
    from simulator.scenario import SimulatorError, load_scenario

    try:
        scenario = load_scenario(plan.scenario)
    except SimulatorError as err:
        msg = f"--scenario {plan.scenario}: {err}"
        raise RectuneError(msg, hint="a shipped name (e.g. apparel_core) or a path to a scenario JSON") from err
    return (scenario.north_star[0], scenario.north_star[1]), float(scenario.latency_slo_ms)


def check_policy(plan: DemoPlan, duration_s: float, slo_ms: float, north_star: tuple[str, str]) -> None:
    """Refuse a demo plan whose agents' policy `rectune agents` would refuse (before anything starts)."""
    from agents.runtime import PolicyError, parse_policy

    policy = demo_policy(plan, duration_s=duration_s, slo_ms=slo_ms, north_star=north_star)
    try:
        parse_policy(json.dumps(policy).encode(), plan.surface, window_s=plan.window_s)
    except PolicyError as err:
        msg = f"the agents' demo policy is refused: {err}"
        raise RectuneError(msg, hint="check --target-mde, --rate and --duration-s") from err


def check_inputs(plan: DemoPlan, duration_s: float) -> None:
    """Refuse what a child process would refuse, before anything starts (`RectuneError` naming the flag and rule).

    Called by `run_plan`: the brain (`--brain gemini` needs GEMINI_API_KEY,
    as `rectune agents` does) and the traffic plan (`--rate`, `--duration-s`,
    checked by `rectune.traffic_plan.TrafficPlan` as `rectune traffic` does) and
    `--target-mde` (the policy's rule; a NaN would otherwise reach the policy as bad JSON).
    """
    require_brain_key(plan.brain)
    demo_traffic_plan(plan, duration_s)
    if not (math.isfinite(plan.target_mde) and plan.target_mde > 0.0):
        msg = f"--target-mde: must be a finite relative lift > 0 (e.g. 0.15 for 15%), got {plan.target_mde}"
        raise RectuneError(msg, hint="the power gate sizes every experiment to resolve this lift within its horizon")


def run_plan(
    settings: Settings, plan: DemoPlan, duration_s: float, work_dir: Path | None, out: TextIO, err: TextIO
) -> int:
    """Run the demo with an explicit plan and output streams (`run_demo` is the CLI's entry)."""
    console = Console(out, err, status_every_s=plan.status_every_s, log_every_s=plan.log_every_s)
    if not 0 < duration_s <= MAX_DURATION_S:
        console.error(f"rectune demo: error: --duration-s must be in (0, {MAX_DURATION_S:g}], got {duration_s:g}")
        return EXIT_START_FAILED
    began = time.monotonic()
    try:
        check_inputs(plan, duration_s)
        north_star, slo_ms = load_world_facts(plan)
        check_policy(plan, duration_s, slo_ms, north_star)
    except RectuneError as error:
        console.error(f"rectune demo: error: {error}")
        return EXIT_START_FAILED
    work_dir = (work_dir or Path(tempfile.mkdtemp(prefix="rectune-demo-"))).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    latch = SignalLatch("\n(shutting down, please wait: every stop is bounded)\n")
    run = Run(settings, plan, duration_s, work_dir, console, latch, north_star, slo_ms, int(time.time() * 1000))
    console.say(
        f"rectune demo: the whole tuning loop on {plan.scenario} for {duration_s:g} s "
        f"(north star {north_star[0]}/{north_star[1]}, p99 SLO {slo_ms:g} ms)"
    )
    console.say(f"  work dir {work_dir} (logs: tansu.log, redis.log, worker.log, agents.log, traffic.log)")
    code = 0
    interrupted: str | None = None
    services: Services | None = None
    with run.latch, quiet_client_logs():
        with ExitStack() as stack:
            try:
                ctx = StartContext(
                    settings,
                    plan,
                    duration_s,
                    work_dir,
                    slo_ms,
                    north_star,
                    console.say,
                    run.check_signal,
                    partial(stop_process, run),
                )
                services = start_services(ctx, stack)
                run.started_s, run.started_ms = time.monotonic(), int(time.time() * 1000)
                book = WindowBook(plan.partitions, settle_s=0.3, grace_s=plan.idle_close_s + 2.0, north_star=north_star)
                run.capture = Capture(book, services.keyring, run.labels, started_ms=run.started_ms)
                asyncio.run(live(run, services))
            except Interrupted as stop:
                console.end_status()
                console.say(f"\ninterrupted ({stop}): stopping early")
                code, interrupted = stop.code, str(stop)
            except RectuneError as error:
                code = EXIT_START_FAILED if services is None or run.capture is None else EXIT_FAILED
                console.end_status()
                console.error(f"rectune demo: error: {error}")
            except (KafkaError, RedisError, OSError, TimeoutError) as error:
                code = EXIT_FAILED if services is not None else EXIT_START_FAILED
                console.end_status()
                console.error(f"rectune demo: error: {type(error).__name__}: {error}")
            if code in (0, 128 + signal.SIGINT, 128 + signal.SIGTERM):
                print_summary(run, services)
        write_run_report(run, interrupted=interrupted or (None if code == 0 else f"failed, exit {code}"))
    if code == 0 and latch.signum is not None:
        code = 128 + latch.signum  # Ctrl-C while shutting down still reports the interruption
    console.say(f"done in {format_duration(time.monotonic() - began)} (exit {code}); logs kept in {work_dir}")
    return code


def run_demo(
    settings: Settings,
    duration_s: float = DEFAULT_DURATION_S,
    work_dir: Path | None = None,
    *,
    scenario: str = "apparel_core",
    brain: str = "auto",
    requests_per_s: float | None = None,
    runs_dir: Path | None = None,
    seed: int = 7,
    target_mde: float | None = None,
    start_config: Path | None = None,
) -> int:
    """Entry point of `rectune demo` / `make demo` (called by `rectune.cli`); returns the exit code."""
    plan = DemoPlan(scenario=scenario, brain=brain, seed=seed, start_config=start_config)
    if requests_per_s is not None:
        plan = replace(plan, requests_per_s=requests_per_s)
    if runs_dir is not None:
        plan = replace(plan, runs_dir=runs_dir)
    if target_mde is not None:
        plan = replace(plan, target_mde=target_mde)
    return run_plan(settings, plan, duration_s, work_dir, sys.stdout, sys.stderr)
