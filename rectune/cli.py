"""`rectune` command line: the composition root's entry points.

Each subcommand reads `Settings` from the environment (flags override) and
wires the packages together; no domain logic lives here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rectune.agents_cli import register_agents_commands
from rectune.config_cli import register_config_commands
from rectune.errors import RectuneError
from rectune.settings import Settings, load_settings
from rectune.skills_cli import register_skills_commands
from rectune.traffic import register_traffic_command

Handler = Callable[[argparse.Namespace, Settings], int]


def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    import faust

    from rectune.admin import catalogue_for, ensure_topics
    from schemas.topics import EVENTS
    from streams.app import build_app
    from streams.processor import StreamConfig
    from streams.windows import WindowSpec

    asyncio.run(ensure_topics(settings.bootstrap, catalogue_for(settings.events_partitions, settings.app_id)))
    config = StreamConfig(
        topic=EVENTS.name,
        spec=WindowSpec(
            width_ms=round(settings.window_s * 1000),
            allowed_lateness_ms=round(settings.allowed_lateness_s * 1000),
            buckets=settings.buckets,
        ),
        checkpoint_interval_s=settings.checkpoint_interval_s,
        idle_close_s=settings.idle_close_s,
    )
    if settings.engine == "direct":
        from schemas.topics import state_topic
        from streams.direct import run_direct

        asyncio.run(
            run_direct(
                config,
                bootstrap=settings.bootstrap,
                group_id=settings.app_id,
                state_topic=state_topic(settings.app_id, settings.events_partitions).name,
                session_timeout_s=settings.session_timeout_s,
            )
        )
        return 0
    app, _ = build_app(
        config,
        bootstrap=settings.bootstrap,
        app_id=settings.app_id,
        events_partitions=settings.events_partitions,
        session_timeout_s=settings.session_timeout_s,
    )
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), quiet=True)
    worker.execute_from_commandline()
    return 0


def _cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    from rectune.admin import catalogue_for, ensure_topics

    created = asyncio.run(ensure_topics(settings.bootstrap, catalogue_for(settings.events_partitions)))
    print(json.dumps({"created": created}))
    return 0


def _cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from rectune.admin import catalogue_for, ensure_topics
    from rectune.obd import read_obd
    from rectune.producer import publish_events

    if args.format != "obd":
        msg = f"ingest format {args.format!r} is not supported"
        raise RectuneError(msg, hint="supported: obd")
    asyncio.run(ensure_topics(settings.bootstrap, catalogue_for(settings.events_partitions)))
    events = list(read_obd(Path(args.csv), arm=args.arm, surface=args.surface))
    messages, count = asyncio.run(
        publish_events(settings.bootstrap, events, source_id=f"obd-{args.arm}", item_events_per_message=args.batch)
    )
    print(json.dumps({"arm": args.arm, "events": count, "messages": messages}))
    return 0


def _cmd_metrics(args: argparse.Namespace, settings: Settings) -> int:
    from rectune.metrics_reader import read_totals, totals_json

    rows = totals_json(asyncio.run(read_totals(settings.bootstrap)))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(
                f"{row['surface']:>10} {row['arm_id']:>12}  impressions={row['impressions']:>9}"
                f"  clicks={row['clicks']:>7}  ctr={row['ctr'] if row['ctr'] is not None else float('nan'):.4f}"
                f"  p99={row['latency_p99_ms']}ms  windows={row['windows']}"
            )
    return 0


def _cmd_produce(args: argparse.Namespace, settings: Settings) -> int:
    from rectune.admin import catalogue_for, ensure_topics
    from rectune.producer import publish_events
    from simulator.synthetic import TrafficGenerator, TrafficSpec

    asyncio.run(ensure_topics(settings.bootstrap, catalogue_for(settings.events_partitions)))
    generator = TrafficGenerator(TrafficSpec(), seed=args.seed)
    events = list(generator.stream(args.start_ms, args.requests, args.rate))
    messages, count = asyncio.run(
        publish_events(
            settings.bootstrap, events, source_id=f"synthetic-{args.seed}", item_events_per_message=args.batch
        )
    )
    print(json.dumps({"events": count, "messages": messages}))
    return 0


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from rectune.demo import run_demo

    return run_demo(
        settings,
        duration_s=args.duration_s,
        work_dir=Path(args.work_dir) if args.work_dir else None,
        scenario=args.scenario,
        brain=args.brain,
        requests_per_s=args.rate,
        runs_dir=Path(args.runs_dir),
        seed=args.seed,
        target_mde=args.target_mde,
        start_config=Path(args.start_config) if args.start_config else None,
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the docker-compose test to list real commands)."""
    parser = argparse.ArgumentParser(
        prog="rectune", description="agentic-rectune: safe, continuous tuning of recommender cascades"
    )
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (env RECTUNE_BOOTSTRAP)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("worker", help="run a stream worker: events -> per-arm metric windows")
    p.set_defaults(handler=_cmd_worker)

    p = sub.add_parser("topics", help="create the topic catalogue on the broker")
    p.set_defaults(handler=_cmd_topics)

    p = sub.add_parser("ingest", help="publish a logged dataset as events")
    p.add_argument("format", choices=["obd"], help="dataset format (obd: Open Bandit Dataset CSV)")
    p.add_argument("csv", help="path of the CSV log")
    p.add_argument("--arm", required=True, help="arm id to stamp on the events")
    p.add_argument("--surface", default="obd-men", help="surface to stamp on the events")
    p.add_argument("--batch", type=int, default=500, help="item events per envelope")
    p.set_defaults(handler=_cmd_ingest)

    p = sub.add_parser("metrics", help="print merged per-arm totals read back from rectune.metrics")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_cmd_metrics)

    p = sub.add_parser("produce", help="publish synthetic traffic (realistic mix)")
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--rate", type=float, default=200.0, help="requests per second of event time")
    p.add_argument("--start-ms", type=int, default=1_767_225_600_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=100, help="item events per envelope")
    p.set_defaults(handler=_cmd_produce)

    register_config_commands(sub)
    register_skills_commands(sub)
    register_agents_commands(sub)
    register_traffic_command(sub)

    p = sub.add_parser(
        "demo",
        help="run the whole tuning loop locally on the embedded broker and Redis (what `make demo` runs)",
        description="Embedded broker + Redis, stream worker, agents, simulated traffic through the real sidecar; "
        "a live view, then a report with plots in RUNS_DIR/<UTC time>/.  Ctrl-C stops everything cleanly.",
    )
    p.add_argument("--duration-s", type=float, default=180.0, help="seconds of traffic (default 180)")
    p.add_argument("--scenario", default="apparel_core", help="simulator scenario: shipped name or JSON path")
    p.add_argument(
        "--brain",
        choices=["auto", "offline", "gemini"],
        default="auto",
        help="agents' brain (auto: gemini when GEMINI_API_KEY is set, else offline)",
    )
    p.add_argument("--rate", type=float, default=None, help="simulated requests per second (default 300)")
    p.add_argument("--seed", type=int, default=7, help="world and traffic seed")
    p.add_argument(
        "--target-mde",
        type=float,
        default=None,
        help="relative lift an experiment must resolve within its horizon (power gate; default 0.15)",
    )
    p.add_argument(
        "--start-config",
        default=None,
        help="CascadeConfig JSON served as version 1 (default: schemas.config.default_config(); "
        "`make demo` uses examples/start_no_diversity.json)",
    )
    p.add_argument("--runs-dir", default="runs", help="where the report directory goes (default ./runs)")
    p.add_argument("--work-dir", default=None, help="logs and state of this run (default: a new temp dir)")
    p.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point (`rectune …`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(bootstrap=args.bootstrap)
        logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        handler: Handler = args.handler
        return handler(args, settings)
    except RectuneError as err:
        print(f"rectune: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
