"""Pipeline throughput benchmark (issue 2): the stream worker against its baseline and ceiling.

One run, one broker, messages produced before any timing; the variants run
one after another, each in its own process(es), and are timed from outside
through their consumer group's committed offsets (`bench/_pipeline_measure.py`):

- ``batched``: the real ``rectune worker`` (Faust engine) over envelopes of
  ~100 item events (the realistic mix: 12-item impressions, ~5% clicks, ~0.5%
  conversions), as ``--workers N`` processes in one app id / consumer group
  (default min(CPUs, partitions): how a Faust app is scaled on this machine),
  and again as one process (``batched_1proc``);
- ``ceiling``: bare aiokafka consumers + orjson + numpy over the same
  envelopes, same aggregation, no Faust (``bench/_pipeline_variants.py``),
  N processes in one group (like for like) and one (``ceiling_1proc``);
- ``naive``: a plain Faust agent doing one Table update per event, over
  messages holding one item-level event each (the issue's baseline), one process;
- ``single``: the real worker over those same one-event messages, one process;
- ``direct`` (informational): the worker with ``RECTUNE_ENGINE=direct`` (its
  `StreamProcessor` on a bare aiokafka loop), N processes (``--no-direct`` skips it).

Throughput is counted in item-level events (`schemas.events.item_events`).
A variant's rate is measured between the first poll (every 0.1 s) that shows
committed progress by any member of its group and the poll at which the
group's committed offsets reach the ends (the worker and the variants commit
every 0.2 s): process start-up and a group formed before its first commit are
not in it, a rebalance after that is; start-up and the rate from spawn to the
end are reported beside it.  Peak RSS of a group is the sum of its processes'
peaks.  Each process's assigned partitions are read from its log, so the run
shows (and the JSON flags) that every process of a group got work.

The worker reads the fixed topic ``rectune.events``, so the run is ordered on
one broker: envelopes are produced, the ``ceiling``, ``batched`` and ``direct``
groups consume them (each group its own id and checkpoint topic); the
one-event messages are then appended to the same topic before ``naive`` (its
group's offsets set to where they start) and ``single`` (the N-process worker
group, resuming from its checkpoints) run.

The last stdout line is one JSON object: events, the rates, peak RSS of the
batched group, the broker, the ratios and the target booleans (on the
N-process figures).

This file holds the command line and the run (the variants in order); the
pieces live beside it: `bench/_pipeline_data.py` generates the message sets,
`bench/_pipeline_groups.py` starts the broker, produces and starts and times
each variant's group (with `bench/_pipeline_measure.py`; the comparison
variants are `bench/_pipeline_variants.py`), and `bench/_pipeline_report.py`
prints the table and builds the JSON.  The names that lived here before the
split are re-exported (`__all__`).

    .venv/bin/python bench/pipeline.py            # 2,000,000 events, 2 workers here (make bench)
    .venv/bin/python bench/pipeline.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
from _pipeline_data import (
    ENVELOPE_ITEMS,
    EVENT_TIME_RATE,
    POOL_REQUESTS,
    START_MS,
    MessageSet,
    batched_set,
    single_set,
)
from _pipeline_groups import (
    PARTITIONS,
    REPO,
    SESSION_TIMEOUT_S,
    VARIANTS_SCRIPT,
    Broker,
    Group,
    ceiling_consumed,
    ceiling_group,
    measure,
    precommit,
    produce,
    start_broker,
    stop_group,
    stop_quietly,
    worker_env,
    worker_group,
)
from _pipeline_measure import MB, Result, tree_usage
from _pipeline_report import (
    TARGET_RATE,
    TARGET_RSS_EVENTS,
    TARGET_RSS_MB,
    TARGET_VS_CEILING,
    TARGET_VS_NAIVE,
    report,
)

from rectune.admin import catalogue_for, ensure_topics
from rectune.embedded import ManagedProcess, spawn
from schemas.topics import EVENTS

__all__ = [
    "ENVELOPE_ITEMS",
    "EVENT_TIME_RATE",
    "PARTITIONS",
    "POOL_REQUESTS",
    "REPO",
    "SESSION_TIMEOUT_S",
    "START_MS",
    "TARGET_RATE",
    "TARGET_RSS_EVENTS",
    "TARGET_RSS_MB",
    "TARGET_VS_CEILING",
    "TARGET_VS_NAIVE",
    "VARIANTS_SCRIPT",
    "Broker",
    "Group",
    "MessageSet",
    "batched_set",
    "ceiling_consumed",
    "ceiling_group",
    "main",
    "measure",
    "parse_args",
    "precommit",
    "produce",
    "report",
    "run",
    "single_set",
    "start_broker",
    "stop_group",
    "stop_quietly",
    "worker_env",
    "worker_group",
]


async def run(args: argparse.Namespace, work_dir: Path) -> tuple[dict[str, Result], dict[str, Any]]:
    """Produce, then run every variant one after another; returns results and facts."""
    facts: dict[str, Any] = {"load_before": os.getloadavg()}
    print(f"load average before: {facts['load_before']}", flush=True)
    t0 = time.monotonic()
    batched_data, last_ms = batched_set(args.events, args.seed)
    single_data = single_set(args.single_events, args.seed + 1, last_ms + 60_000, args.single_shape)
    facts["generate_s"] = time.monotonic() - t0
    facts["batched_bytes"] = batched_data.nbytes
    facts["single_bytes"] = single_data.nbytes

    results: dict[str, Result] = {}
    broker = start_broker(args.broker, work_dir)
    broker_ps = psutil.Process(broker.pid)
    facts["broker_rss_mb"] = 0.0
    n = args.workers
    bootstrap = broker.bootstrap
    timeout = args.variant_timeout_s
    try:
        await ensure_topics(bootstrap, catalogue_for(PARTITIONS))
        t0 = time.monotonic()
        batched = await produce(bootstrap, EVENTS.name, batched_data)
        facts["produce_batched_s"] = time.monotonic() - t0
        del batched_data

        # ceiling: bare aiokafka + orjson + numpy over the envelopes, N processes in one group, then one.
        stagger = args.stagger_s
        ceiling = ceiling_group("ceiling", bootstrap, work_dir, n)
        results["ceiling"] = await measure(ceiling, bootstrap, batched, timeout, stagger)
        facts["ceiling_consumed"] = ceiling_consumed(results["ceiling"], work_dir)
        if n > 1:
            one = ceiling_group("ceiling_1proc", bootstrap, work_dir, 1)
            results["ceiling_1proc"] = await measure(one, bootstrap, batched, timeout)

        # batched: the real worker over the same envelopes, N processes in one group, then one.
        app_id = f"bench-worker-{uuid.uuid4().hex[:8]}"
        env = worker_env(bootstrap, app_id, args.checkpoint_interval_s)
        batched_group = worker_group("batched", env, app_id, work_dir, n)
        results["batched"] = await measure(batched_group, bootstrap, batched, timeout, stagger)
        facts["broker_rss_mb"] = max(facts["broker_rss_mb"], tree_usage(broker_ps)[0] / MB)
        if n > 1:
            one_id = f"bench-worker1-{uuid.uuid4().hex[:8]}"
            one_env = worker_env(bootstrap, one_id, args.checkpoint_interval_s)
            one = worker_group("batched_1proc", one_env, one_id, work_dir, 1)
            results["batched_1proc"] = await measure(one, bootstrap, batched, timeout)

        if args.direct:
            # direct: the real `rectune worker` with RECTUNE_ENGINE=direct (the same StreamProcessor
            # on a plain aiokafka consumer instead of a Faust agent), same envelopes, N processes.
            group = f"bench-direct-{uuid.uuid4().hex[:8]}"
            direct_env = worker_env(bootstrap, group, args.checkpoint_interval_s, engine="direct")
            direct = worker_group("direct", direct_env, group, work_dir, n)
            results["direct"] = await measure(direct, bootstrap, batched, timeout, stagger)

        # The one-event messages go after the envelopes, once the workers are caught up and stopped.
        t0 = time.monotonic()
        single = await produce(bootstrap, EVENTS.name, single_data)
        facts["produce_single_s"] = time.monotonic() - t0
        del single_data
        if single.starts != batched.ends:
            msg = f"one-event messages landed at {single.starts}, expected right after the envelopes {batched.ends}"
            raise RuntimeError(msg)

        # naive: plain Faust, one table update per event, starting at the one-event messages (one process).
        naive_id = f"bench-naive-{uuid.uuid4().hex[:8]}"
        await precommit(bootstrap, naive_id, single.starts)
        argv = [sys.executable, str(VARIANTS_SCRIPT), "naive", "--bootstrap", bootstrap, "--topic", EVENTS.name]
        argv += ["--app-id", naive_id, "--partitions", str(PARTITIONS)]
        argv += ["--commit-interval-s", str(args.checkpoint_interval_s), "--session-timeout-s", str(SESSION_TIMEOUT_S)]

        def launch_naive(i: int) -> ManagedProcess:
            log = work_dir / f"naive-{i}.log"
            return ManagedProcess(spawn(argv, what="naive", log_path=log, cwd=work_dir / "naive"), log)

        (work_dir / "naive").mkdir()
        results["naive"] = await measure(Group("naive", naive_id, launch_naive, 1), bootstrap, single, timeout)

        # single: the batched worker group resumes from its checkpoints at the one-event messages (one process).
        single_group = worker_group("single", env, app_id, work_dir, 1)
        results["single"] = await measure(single_group, bootstrap, single, timeout)
        facts["broker_rss_mb"] = max(facts["broker_rss_mb"], tree_usage(broker_ps)[0] / MB)
        facts["load_after"] = os.getloadavg()
        print(f"load average after: {facts['load_after']}", flush=True)
    finally:
        broker.stop()
    return results, facts


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command line of the benchmark."""
    parser = argparse.ArgumentParser(prog="bench/pipeline.py", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=None, help="item events in envelopes (default 2,000,000)")
    parser.add_argument(
        "--single-events", type=int, default=None, help="item events in one-event messages (default 50,000)"
    )
    parser.add_argument(
        "--single-shape",
        choices=("item", "wire"),
        default="item",
        help="item: one item-level event per message (default); wire: bare events as the sidecar "
        "would send them unbatched (12-item impressions)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 300k envelope events, 20k one-event events")
    parser.add_argument("--broker", choices=("tansu", "kafka"), default="tansu")
    parser.add_argument(
        "--checkpoint-interval-s",
        type=float,
        default=0.2,
        help="worker checkpoint (= commit) interval; the timing resolution (default 0.2)",
    )
    parser.add_argument("--variant-timeout-s", type=float, default=240.0, help="give up on a variant after this")
    parser.add_argument(
        "--no-direct",
        dest="direct",
        action="store_false",
        help="skip the informational 'direct' variant (StreamProcessor on a bare aiokafka loop)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(os.cpu_count() or 1, PARTITIONS),
        help="processes of the batched, ceiling and direct groups (default: min(CPUs, partitions)); "
        "batched and ceiling are also measured with one process",
    )
    parser.add_argument(
        "--stagger-s",
        type=float,
        default=0.0,
        help="start the processes of a multi-process group this many seconds apart (default 0: all at once), "
        "so later members join mid-stream and their rebalance falls inside the timed window",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs) after the run")
    args = parser.parse_args(argv)
    if args.events is None:
        args.events = 300_000 if args.quick else TARGET_RSS_EVENTS
    if args.single_events is None:
        per_message = 8 if args.single_shape == "wire" else 1  # ~8 item events per bare wire event
        args.single_events = (20_000 if args.quick else 50_000) * per_message
    if not 1 <= args.workers <= PARTITIONS:
        parser.error(f"--workers must be between 1 and {PARTITIONS} (the events partitions), got {args.workers}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; the last stdout line is the JSON summary."""
    args = parse_args(argv)
    work_dir = Path(tempfile.mkdtemp(prefix="rectune-bench-pipeline-"))
    try:
        results, facts = asyncio.run(run(args, work_dir))
        summary = report(args, results, facts)
    except BaseException:
        print(f"pipeline benchmark failed; logs kept in {work_dir}", file=sys.stderr)
        raise
    if args.keep:
        print(f"logs: {work_dir}")
    else:
        shutil.rmtree(work_dir, ignore_errors=True)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
