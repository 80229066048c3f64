"""`rectune agents` (run the agents loop of a surface) and `rectune approve EXPERIMENT`.

Registered into the main parser by `rectune.cli.build_parser` through
`register_agents_commands(sub)`.  `rectune agents` runs until SIGTERM or
SIGINT, then finishes the tick in progress, releases the surface's lease (a
standby takes over at once) and exits 0; it logs one line per decision
record and per alert to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from agents.loop import LoopSettings
from agents.runtime import AgentRuntime, PolicyError, RuntimeSettings, load_policy
from agents.state_store import ApprovalError, approve
from rectune.config_cli import keyring_from_settings
from rectune.errors import RectuneError, SettingsError, redis_unavailable
from rectune.settings import ENV_VARS, Settings

_AGENTS_HELP = """\
Run the tuning loop of one surface: Actor proposes, the Critic prunes, Online runs
the A/B test (power gate, ramp, SRM halt, guardrail rollback, always-valid reads),
Insight and Skill learn.  Reads rectune.metrics and rectune.config, writes signed
changes to rectune.config, records to rectune.decisions and alerts to rectune.alerts;
state, lease, approvals and skills live in Redis (RECTUNE_REDIS_URL).

Run several for fail-over: a Redis lease keeps one active loop per surface; the
others stand by and take over from the stored state when the leader's lease
expires (at once after a clean stop).  SIGTERM/SIGINT: finish the current tick,
release the lease, exit 0.  Logs one line per decision and per alert to stderr.

The policy file (--policy, or RECTUNE_AGENTS_POLICY) is JSON; every key is
optional and a bad one is refused with its field and rule, e.g.
  {"online": {"stages": [0.05, 0.5], "min_dwell_s": 3600, "min_stage_requests": 5000,
              "target_mde": 0.02, "horizon_s": 1209600, "final_alpha": 0.0125,
              "futility_fraction": 0.5, "approval_required": false, "randomization_unit": "user",
              "guardrails": {"latency_p99_slo_ms": 50, "conversion_margin": 0.02}},
   "loop":   {"k": 3, "cooldown_s": 60, "window_s": 60, "pre_period_s": 0}}
"online" takes the fields of agents.online.OnlinePolicy (surface excluded), "loop"
takes k, max_changes, cooldown_s, window_s (default RECTUNE_WINDOW_S),
min_baseline_requests, objective and pre_period_s (> 0: an A/A pre-period with the
experiment's salt first, whose per-arm buckets are the CUPED covariates; per-user
experiments only).  "randomization_unit": "request" spreads each user's requests over
the arms and reads them paired per user bucket (small ranking changes; see README).
Signing keys: RECTUNE_CONFIG_KEYS / RECTUNE_CONFIG_KEY_ID.
"""


def runtime_settings(args: argparse.Namespace, settings: Settings) -> RuntimeSettings:
    """`RuntimeSettings` from the environment settings and the flags (flags win); refuses bad values by name."""
    tick_s = args.tick_s if args.tick_s is not None else settings.agents_tick_s
    ttl_s = args.lease_ttl_s if args.lease_ttl_s is not None else settings.agents_lease_ttl_s
    if not 0.05 <= tick_s <= 3_600.0:
        msg = f"--tick-s ({ENV_VARS['agents_tick_s']}): must be in [0.05, 3600], got {tick_s:g}"
        raise SettingsError(msg)
    if not tick_s < ttl_s <= 3_600.0:
        msg = f"--lease-ttl-s ({ENV_VARS['agents_lease_ttl_s']}): must be > the tick ({tick_s:g} s) and <= 3600"
        raise SettingsError(msg, hint="the lease is renewed once per tick; a shorter one would lapse between ticks")
    policy_path = args.policy if args.policy is not None else settings.agents_policy
    policy, loop = None, LoopSettings(window_s=settings.window_s)
    if policy_path:
        try:
            policy, loop = load_policy(Path(policy_path), args.surface, window_s=settings.window_s)
        except PolicyError as err:
            msg = f"--policy ({ENV_VARS['agents_policy']}): {err}"
            raise SettingsError(msg, hint="see `rectune agents --help` for the file's layout") from err
    return RuntimeSettings(
        bootstrap=settings.bootstrap,
        redis_url=settings.redis_url,
        surface=args.surface,
        brain=args.brain,
        tick_s=tick_s,
        lease_ttl_ms=round(ttl_s * 1000),
        owner=args.owner or "",
        config_keys=settings.config_keys,
        config_key_id=settings.config_key_id,
        policy=policy,
        loop=loop,
    )


def require_brain_key(brain: str, *, flag: str = "--brain", env: Mapping[str, str] | None = None) -> None:
    """Refuse the Gemini brain without GEMINI_API_KEY, naming `flag`, the variable and the rule.

    Called by `rectune agents` and `rectune demo` before anything starts, so
    a missing key is one clear line instead of a traceback from a child
    process that has already connected to the broker.
    """
    if brain != "gemini":
        return
    from agents.gemini_brain import API_KEY_ENV, api_key_from_env  # google-genai loads only when Gemini is chosen

    try:
        api_key_from_env(env)
    except ValueError as err:
        msg = f"{flag} gemini: needs {API_KEY_ENV} set to a Gemini API key, and it is unset or empty"
        raise SettingsError(msg, hint=f"export {API_KEY_ENV}=<your key>, or use {flag} offline") from err


def _cmd_agents(args: argparse.Namespace, settings: Settings) -> int:
    # Everything that can be refused is checked here, before the runtime touches the broker or Redis.
    runtime_config = runtime_settings(args, settings)
    keyring_from_settings(settings)
    require_brain_key(args.brain)
    runtime = AgentRuntime(runtime_config)
    if logging.getLogger().getEffectiveLevel() >= logging.INFO:  # keep stderr to one line per decision
        logging.getLogger("aiokafka").setLevel(logging.WARNING)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await runtime.run(stop)

    asyncio.run(main())
    return 0


def _cmd_approve(args: argparse.Namespace, settings: Settings) -> int:
    try:
        approval = asyncio.run(approve(settings.redis_url, args.experiment, now_ms=int(time.time() * 1000), by=args.by))
    except ApprovalError as err:
        hint = "approve the id a hold_for_approval decision names, while it is held"
        raise RectuneError(str(err), hint=hint) from err
    except RedisError as err:
        what = f"cannot record the approval of {args.experiment!r} in"
        raise redis_unavailable(what, settings.redis_url, err) from err
    print(f"approved {approval.experiment_id} (surface {approval.surface}, cycle {approval.cycle})")
    return 0


def register_agents_commands(sub: Any) -> None:
    """Add `rectune agents` and `rectune approve` to the main parser's subcommands."""
    p = sub.add_parser(
        "agents",
        help="run the agents loop of one surface (one active process per surface)",
        description=_AGENTS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--surface", default="home", help="surface to tune (default home)")
    p.add_argument("--brain", choices=["offline", "gemini"], default="offline", help="brain (gemini: GEMINI_API_KEY)")
    p.add_argument("--policy", default=None, metavar="PATH", help="policy JSON file (env RECTUNE_AGENTS_POLICY)")
    p.add_argument("--tick-s", type=float, default=None, help="seconds between ticks (env RECTUNE_AGENTS_TICK_S, 5)")
    p.add_argument(
        "--lease-ttl-s",
        type=float,
        default=None,
        help="lease TTL: how soon a standby takes over a dead leader (env RECTUNE_AGENTS_LEASE_TTL_S, 15)",
    )
    p.add_argument("--owner", default=None, help="name of this process in the lease (default: a random id)")
    p.set_defaults(handler=_cmd_agents)
    p = sub.add_parser("approve", help="release an experiment held for approval (only while it is held)")
    p.add_argument("experiment", help="experiment id (from the hold_for_approval decision)")
    p.add_argument("--by", default="", help="who approves (recorded with the approval)")
    p.set_defaults(handler=_cmd_approve)
