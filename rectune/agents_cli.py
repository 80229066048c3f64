"""`rectune agents` (run the agents loop of a surface) and `rectune approve EXPERIMENT`.

Registered into the main parser by `rectune.cli.build_parser` through
`register_agents_commands(sub)`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import Any

from agents.runtime import AgentRuntime, RuntimeSettings, approve
from rectune.settings import Settings


def _cmd_agents(args: argparse.Namespace, settings: Settings) -> int:
    runtime = AgentRuntime(
        RuntimeSettings(
            bootstrap=settings.bootstrap,
            redis_url=settings.redis_url,
            surface=args.surface,
            brain=args.brain,
            tick_s=args.tick_s,
            config_keys=settings.config_keys,
            config_key_id=settings.config_key_id,
        )
    )

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
    asyncio.run(approve(settings.redis_url, args.experiment))
    print(f"approved {args.experiment}")
    return 0


def register_agents_commands(sub: Any) -> None:
    """Add `rectune agents` and `rectune approve` to the main parser's subcommands."""
    p = sub.add_parser("agents", help="run the agents loop of one surface (one active process per surface)")
    p.add_argument("--surface", default="home", help="surface to tune")
    p.add_argument("--brain", choices=["offline", "gemini"], default="offline", help="brain (gemini: GEMINI_API_KEY)")
    p.add_argument("--tick-s", type=float, default=5.0, help="seconds between loop ticks")
    p.set_defaults(handler=_cmd_agents)
    p = sub.add_parser("approve", help="release an experiment held for approval")
    p.add_argument("experiment", help="experiment id (from the hold_for_approval decision)")
    p.set_defaults(handler=_cmd_approve)
