"""The demo's processes: embedded broker and Redis, the starting config, stream worker, agents, traffic.

`start_services(ctx, stack)` starts them in dependency order from the main
thread and registers each stop on `stack` as soon as the process exists, so
a failure or Ctrl-C at any step leaves nothing running.  The demo signs its
config log with a fresh random key (handed to the children through
`RECTUNE_CONFIG_KEYS` / `RECTUNE_CONFIG_KEY_ID`, never printed) and appends
the starting config as version 1 (`starting_config`: `default_config()`, or
the file `--start-config` names) before anything serves traffic.

`demo_policy` is the agents' policy preset for a demo of a few minutes
(`rectune agents --policy`): short ramp dwell, request minimums reachable at
the demo's rate, a horizon of about a minute, so several experiments
complete in one run.  Pure: the demo writes it to a file.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from agents.insight import insight_objective_for, ratio_metric_name
from rectune.admin import catalogue_for, ensure_topics
from rectune.config_log_io import append_change, draft
from rectune.embedded import ManagedProcess, RedisProcess, TansuProcess, spawn, start_redis, start_tansu
from rectune.errors import RectuneError
from rectune.processes import settings_env
from rectune.settings import Settings
from rectune.traffic_plan import TrafficPlan
from schemas.config import CascadeConfig, decode_config, default_config, validate_config
from schemas.config_log import Keyring
from schemas.errors import SchemaError
from schemas.guardrails import Guardrails

__all__ = ["DemoPlan", "Services", "demo_policy", "demo_traffic_plan", "start_services", "traffic_argv"]

KEY_ID: Final = "demo"


@dataclass(frozen=True, slots=True)
class DemoPlan:
    """Shape of a demo run: the world, the rates and clocks, and how the view and shutdown behave.

    `run_demo` uses the defaults (with the CLI's scenario and brain); tests
    may pass another plan.  `replay_rate` is the share of control requests
    the sidecar replays for the Critic's off-policy screen.  Windows close about `window_s +
    allowed_lateness_s` after they open; the last ones `idle_close_s` after
    the traffic stops.
    """

    scenario: str = "apparel_core"
    surface: str = "home"
    brain: str = "auto"
    partitions: int = 4
    window_s: float = 5.0
    allowed_lateness_s: float = 1.0
    checkpoint_interval_s: float = 0.5
    idle_close_s: float = 3.0
    requests_per_s: float = 300.0
    time_scale: float = 3600.0
    holdout_share: float = 0.1
    target_mde: float = 0.15
    replay_rate: float = 0.1
    seed: int = 7
    agents_tick_s: float = 1.0
    tick_s: float = 0.1
    status_every_s: float = 0.5
    log_every_s: float = 5.0
    panel_every_s: float = 15.0
    drain_timeout_s: float = 15.0
    stop_timeout_s: float = 10.0
    runs_dir: Path = field(default_factory=lambda: Path("runs"))
    start_config: Path | None = None

    def resolved_brain(self, env: dict[str, str] | None = None) -> str:
        """`offline` or `gemini`: `auto` picks Gemini when GEMINI_API_KEY is set."""
        if self.brain != "auto":
            return self.brain
        source = os.environ if env is None else env
        return "gemini" if source.get("GEMINI_API_KEY", "").strip() else "offline"


def demo_traffic_plan(plan: DemoPlan, duration_s: float, stats_path: Path | None = None) -> TrafficPlan:
    """The `rectune traffic` plan the demo runs, validated (`RectuneError` naming the flag and the rule).

    Called by `rectune.demo.run_plan` before anything starts (so `--rate 0`
    is refused up front) and by `start_services`, which passes this very
    plan to the traffic process as flags (`traffic_argv`).
    """
    return TrafficPlan(
        scenario=plan.scenario,
        surface=plan.surface,
        requests_per_s=plan.requests_per_s,
        time_scale=plan.time_scale,
        holdout_share=plan.holdout_share,
        seed=plan.seed,
        duration_s=duration_s,
        stats_path=stats_path,
        replay_rate=plan.replay_rate,
    )


def traffic_argv(t: TrafficPlan) -> list[str]:
    """`rectune traffic` flags that rebuild `t` in the child (called by `start_services`; numbers exactly, `repr`)."""
    argv = ["traffic", "--scenario", t.scenario, "--surface", t.surface, "--rate", repr(t.requests_per_s)]
    argv += ["--time-scale", repr(t.time_scale), "--holdout-share", repr(t.holdout_share), "--seed", str(t.seed)]
    argv += ["--latency", t.latency, "--replay-rate", repr(t.replay_rate)]
    if t.duration_s is not None:
        argv += ["--duration-s", repr(t.duration_s)]
    if t.stats_path is not None:
        argv += ["--stats-file", str(t.stats_path)]
    return argv


def demo_policy(plan: DemoPlan, *, duration_s: float, slo_ms: float, north_star: tuple[str, str]) -> dict[str, Any]:
    """The agents' policy for the demo (`rectune agents --policy` JSON: `online` + `loop` sections).

    Sized for the demo's traffic: the agents' surface gets about
    `(1 - holdout_share) * requests_per_s` requests per second, so a stage
    of a few seconds holds hundreds of requests per arm.  The primary metric
    is the scenario's north star; the latency guardrail is its SLO.  The
    horizon is about a third of the run (50 to 90 s), so two to three
    experiments can complete in the default three minutes.  The target MDE
    (`plan.target_mde`, 15%) is about what a minute of the demo's traffic
    can resolve with one or two arms; a smaller one makes the power gate
    refuse every round.  Experiments randomise requests (`randomization_unit`),
    read paired per user bucket: the demo's simulated users carry nothing
    from one request to the next, and a returning user's own propensity
    then cancels out of every comparison.
    """
    # one name for the north star in the reads, Insight, the Skillhub and the brain (e.g. clicks_per_request)
    name = ratio_metric_name(*north_star) or "north_star"
    rate = max(1.0, (1.0 - plan.holdout_share) * plan.requests_per_s)
    horizon_s = max(50.0, min(90.0, duration_s / 3.0))
    per_arm_final = rate * 0.25  # two arms at the 50% stage
    return {
        "online": {
            "primary": {"name": name, "numerator": north_star[0], "denominator": north_star[1]},
            "target_mde": plan.target_mde,
            "stages": [0.2, 0.5],
            "min_dwell_s": [8.0, 12.0],
            "min_stage_requests": [round(per_arm_final * 2), round(per_arm_final * 6)],
            "horizon_s": horizon_s,
            "max_treatments": 2,
            "randomization_unit": "request",
            "settle_s": 2 * (plan.window_s + plan.allowed_lateness_s),
            "srm_min_expected_requests": 100.0,
            "min_read_requests": round(per_arm_final * 3),
            "guardrails": {"latency_p99_slo_ms": slo_ms, "min_latency_requests": 500, "conversion_margin": 0.1},
        },
        "loop": {
            "k": 2,
            "max_changes": 4,
            "cooldown_s": 3.0,
            "window_s": plan.window_s,
            "min_baseline_requests": round(rate * plan.window_s),
            "objective": insight_objective_for(name),
            # the off-policy screen: about two seconds of replayed control traffic per candidate, at most five
            "ope_min_requests": max(50, round(rate * plan.replay_rate * 2.0)),
            "ope_wait_s": 5.0,
        },
    }


@dataclass(slots=True)
class Services:
    """The processes the demo started, and the signing keyring it made."""

    broker: TansuProcess
    redis: RedisProcess
    keyring: Keyring
    worker: ManagedProcess | None = None
    agents: ManagedProcess | None = None
    traffic: ManagedProcess | None = None

    def children(self) -> list[tuple[str, ManagedProcess]]:
        """The `rectune` child processes started so far, by name."""
        named = (("worker", self.worker), ("agents", self.agents), ("traffic", self.traffic))
        return [(name, proc) for name, proc in named if proc is not None]


@dataclass(slots=True)
class StartContext:
    """What `start_services` needs from the run: settings, plan, paths, output and the signal check."""

    settings: Settings
    plan: DemoPlan
    duration_s: float
    work_dir: Path
    slo_ms: float
    north_star: tuple[str, str]
    say: Callable[[str], None]
    check_signal: Callable[[], None]
    stop_process: Callable[[str, ManagedProcess, float], None]


def start_rectune(command: Sequence[str], what: str, log_path: Path, env: dict[str, str], cwd: Path) -> ManagedProcess:
    """Start `python -m rectune.cli COMMAND…` with `env` on top of this environment (logs to `log_path`)."""
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "rectune.cli", *command]
    return ManagedProcess(spawn(argv, what=what, log_path=log_path, cwd=cwd, env=full_env), log_path)


def new_keyring() -> tuple[Keyring, dict[str, str]]:
    """A fresh signing key for this run, and the environment that hands it to the children."""
    spec = f"{KEY_ID}:{secrets.token_hex(32)}"
    return Keyring.parse(spec, KEY_ID), {"RECTUNE_CONFIG_KEYS": spec, "RECTUNE_CONFIG_KEY_ID": KEY_ID}


def starting_config(path: Path | None) -> tuple[CascadeConfig, str]:
    """The demo's version 1: `default_config()` or the validated config in `path` (`--start-config`)."""
    if path is None:
        return default_config(), "the hand-tuned starting config"
    try:
        config = validate_config(decode_config(path.read_bytes()))
        Guardrails().check(config)
    except OSError as err:
        msg = f"--start-config: cannot read {path}: {err.strerror}"
        raise RectuneError(msg, hint="pass a CascadeConfig JSON file, e.g. examples/start_no_diversity.json") from err
    except SchemaError as err:
        msg = f"--start-config {path}: {err}"
        raise RectuneError(msg, hint="see schemas/config.py for the fields and bounds") from err
    return config, f"the starting config from {path}"


def start_services(ctx: StartContext, stack: ExitStack) -> Services:
    """Start everything in order; each stop is registered on `stack` as soon as its process exists."""
    plan, settings, say = ctx.plan, ctx.settings, ctx.say
    broker = start_tansu(ctx.work_dir)
    stack.callback(ctx.stop_process, "broker", broker, 10.0)
    say(f"  broker   tansu on {broker.bootstrap} (memory storage)")
    ctx.check_signal()
    store = start_redis(ctx.work_dir)
    stack.callback(ctx.stop_process, "redis", store, 10.0)
    say(f"  redis    {store.url}")
    ctx.check_signal()
    asyncio.run(ensure_topics(broker.bootstrap, catalogue_for(plan.partitions)))
    keyring, key_env = new_keyring()
    config, what = starting_config(plan.start_config)
    start = draft("config", author="person:demo", reason="starting config", config=config, activate=True)
    appended = asyncio.run(append_change(broker.bootstrap, start, keyring, now_ms=int(time.time() * 1000)))
    say(f"  config   v{appended.change.version}: {what}, signed with a fresh per-run key")
    services = Services(broker, store, keyring)
    ctx.check_signal()
    env = key_env | settings_env(
        bootstrap=broker.bootstrap,
        redis_url=store.url,
        events_partitions=plan.partitions,
        window_s=plan.window_s,
        allowed_lateness_s=plan.allowed_lateness_s,
        checkpoint_interval_s=plan.checkpoint_interval_s,
        idle_close_s=plan.idle_close_s,
        buckets=settings.buckets,
        session_timeout_s=settings.session_timeout_s,
        app_id=settings.app_id,
        log_level=settings.log_level,
    )
    services.worker = start_rectune(["worker"], "rectune worker", ctx.work_dir / "worker.log", env, ctx.work_dir)
    stack.callback(ctx.stop_process, "worker", services.worker, plan.stop_timeout_s)
    say(
        f"  worker   pid {services.worker.pid}: {plan.partitions} event partitions, {plan.window_s:g} s windows "
        f"(lateness {plan.allowed_lateness_s:g} s), {settings.buckets} user buckets"
    )
    ctx.check_signal()
    policy_path = ctx.work_dir / "agents-policy.json"
    policy = demo_policy(plan, duration_s=ctx.duration_s, slo_ms=ctx.slo_ms, north_star=ctx.north_star)
    policy_path.write_text(json.dumps(policy, indent=2))
    brain = plan.resolved_brain()
    agents_args = ["agents", "--surface", plan.surface, "--brain", brain, "--policy", str(policy_path)]
    agents_args += ["--tick-s", f"{plan.agents_tick_s:g}", "--lease-ttl-s", f"{max(5.0, 4 * plan.agents_tick_s):g}"]
    services.agents = start_rectune(agents_args, "rectune agents", ctx.work_dir / "agents.log", env, ctx.work_dir)
    stack.callback(ctx.stop_process, "agents", services.agents, plan.stop_timeout_s)
    online = policy["online"]
    say(
        f"  agents   pid {services.agents.pid}: brain {brain}, tick {plan.agents_tick_s:g} s, ramp "
        f"{'/'.join(f'{100 * s:g}%' for s in online['stages'])}, horizon {online['horizon_s']:g} s, "
        f"target MDE {100 * online['target_mde']:g}% (policy {policy_path.name})"
    )
    ctx.check_signal()
    traffic_args = traffic_argv(demo_traffic_plan(plan, ctx.duration_s, ctx.work_dir / "traffic-stats.json"))
    services.traffic = start_rectune(traffic_args, "rectune traffic", ctx.work_dir / "traffic.log", env, ctx.work_dir)
    stack.callback(ctx.stop_process, "traffic", services.traffic, plan.stop_timeout_s)
    say(
        f"  traffic  pid {services.traffic.pid}: {plan.scenario}, {plan.requests_per_s:g} requests/s through the "
        f"real sidecar, 1 s = {plan.time_scale / 3600:g} simulated h, holdout {100 * plan.holdout_share:g}% on v1"
    )
    return services


def dead_child(services: Services, names: Sequence[str]) -> tuple[str, RectuneError] | None:
    """The first of `names` that exited, and an error naming it with the end of its log (None while all run)."""
    for name, proc in services.children():
        if name in names and not proc.alive():
            tail = "\n".join(proc.log_tail(3000).splitlines()[-12:])
            who = "stream worker" if name == "worker" else f"{name} process"
            msg = f"the {who} exited unexpectedly; its log {proc.log_path} ends with:\n{tail}\n"
            return name, RectuneError(msg, hint=f"see {proc.log_path.name}")
    return None
