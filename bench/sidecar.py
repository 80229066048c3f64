"""Sidecar benchmark (issue 3, "Measure"): config propagation, request overhead, the cascade, a config storm.

One run, one broker (embedded tansu by default), one `Sidecar` built with a
bench-only keyring generated at run time (`os.urandom`) and started as a
ranker would start it.  Four measurements, in this order:

- **propagation**: >= 1,000 signed config changes produced one at a time by a
  long-lived aiokafka producer (`send_and_wait`, acks=all), each built with
  `prepare` (version, parent, signature, the sidecar's own checks) before any
  timing.  The kinds cycle (activate a 12-item config, activate a 10-item
  config, start an A/B allocation, roll back), so every change alters what
  some user is served.  `t_sent` is read right before `send_and_wait`;
  `t_active` is when a watcher thread (polling `holder.snapshot()` with a
  ~0.1 ms sleep, so it never holds the GIL against the consumer) first sees
  that version; its polling period is reported as the resolution.  The next
  change goes out once the previous one is active, or after `--inflight-cap-ms`
  if it is not (so a slow broker cannot stretch the run), plus a random
  0..`--gap-ms` pause so changes do not phase-lock with the consumer's fetch
  cycle.  Hooks on the consumer's `apply_record` and the holder's `update`
  split the time into broker + fetch, fold (verify, apply, snapshot) and
  watcher lag.
- **overhead**: `holder.snapshot()` + `router.assign()` + `monitor.record()`
  per request, timed with `perf_counter_ns` around the three calls, over
  `--requests` calls from a Zipf(1) population of `--users` users (fresh id
  strings per request, so cache hits and misses are as in production), an
  A/B allocation live; the timer's own cost (two back-to-back
  `perf_counter_ns`, measured the same way) is subtracted.  The JSON carries
  the corrected figures; raw ones and per-call components are in the table.
- **cascade**: `rank()` on 100,000 synthetic candidates -> 1,000 -> 200 -> 50
  shown (exploration 0.05, sponsored slots on), `--cascade-calls` calls over
  three rotating candidate sets; wall and thread-CPU time per call, the
  calls' context switches (`getrusage(RUSAGE_THREAD)`: an involuntary one
  means another task took the core), and a per-stage breakdown.
- **storm**: a ranker loop (`begin` -> `rank` on 20,000 candidates ->
  `to_shown_items` -> `finish`, event sink on) timed per request, in quiet
  phases (no config change) and storm phases (a change every 0.1 s, from a
  separate publisher process by default), `--storm-rounds` short rounds of
  each in ABBA order, each phase after an untimed lead-in; the ratio of
  pooled p99s (storm / quiet), with per-round figures and an interval from
  resampling whole rounds, since the machine is shared and its noise comes
  in bursts; thread-CPU and never-preempted p99s are reported beside it.

Prints a table, then as the last line one JSON object: the six figures of the
issue, `targets_met` per target and `context`.

This file holds the command line and the run (broker, sidecar, the phases in
order); the phases live beside it: `bench/_sidecar_propagation.py`,
`bench/_sidecar_request_path.py` (overhead, cascade) and
`bench/_sidecar_storm_phases.py` (its publisher in `bench/_sidecar_storm.py`);
`bench/_sidecar_report.py` prints the table and builds the JSON.

    .venv/bin/python bench/sidecar.py            # full run (for make bench), ~2 min
    .venv/bin/python bench/sidecar.py --quick    # a smoke run
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
from _sidecar_propagation import SALT, Chain, FoldHooks, measure_propagation, wait_version, with_re_rank
from _sidecar_report import Results, report
from _sidecar_request_path import measure_cascade, measure_overhead
from _sidecar_storm import StormPlan
from _sidecar_storm_phases import ProcessStorm, RankerLoop, StormDriver, ThreadStorm, measure_storm

from rectune.admin import catalogue_for, ensure_topics
from rectune.config_log_io import publish_records
from rectune.embedded import start_tansu
from schemas.config import default_config
from schemas.config_log import Keyring
from schemas.guardrails import Guardrails
from serving_sidecar.sidecar import Sidecar, SidecarConfig

REPO: Final = Path(__file__).resolve().parent.parent

KEY_ID: Final = "bench"
STORM_EXPERIMENT: Final = "bench-storm"


# -- the broker ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Broker:
    """The broker of the run, whatever its kind."""

    kind: str
    bootstrap: str
    stop: Callable[[], None]


def start_broker(kind: str, work_dir: Path) -> Broker:
    """Start the embedded tansu broker (default) or a single-node Apache Kafka."""
    if kind == "tansu":
        tansu = start_tansu(work_dir / "tansu")
        return Broker("tansu", tansu.bootstrap, tansu.stop)
    from rectune.apache_kafka import ApacheKafkaBroker, fetch_kafka_jars

    kafka = ApacheKafkaBroker(work_dir / "kafka", fetch_kafka_jars(REPO / ".cache" / "kafka"))
    kafka.start()
    return Broker("kafka", kafka.bootstrap, kafka.stop)


# -- the run -------------------------------------------------------------------------------


def run(args: argparse.Namespace, work_dir: Path) -> Results:
    """Start broker and sidecar, run the four phases, clean everything up."""
    results = Results(load=[os.getloadavg()])
    secret = os.urandom(32).hex()  # bench-only key, never stored
    keys_spec = f"{KEY_ID}:{secret}"
    keyring = Keyring.parse(keys_spec, KEY_ID)
    guardrails = Guardrails()
    broker = start_broker(args.broker, work_dir)
    sidecar: Sidecar | None = None
    driver: StormDriver | None = None
    try:
        asyncio.run(ensure_topics(broker.bootstrap, catalogue_for(1)))
        sidecar = SidecarConfig(
            bootstrap=broker.bootstrap, keyring=keyring, source_id="bench-ranker", guardrails=guardrails
        ).build()
        hooks = FoldHooks(sidecar)
        sidecar.start()
        chain = Chain(keyring, guardrails)
        version, value = chain.config(default_config(), activate=True, reason="bench start")
        asyncio.run(publish_records(broker.bootstrap, [value]))
        if not sidecar.wait_ready(30.0):
            msg = "the sidecar never served the first config"
            raise RuntimeError(msg)
        wait_version(sidecar, version)

        print(f"propagation: {args.changes} changes ...", file=sys.stderr, flush=True)
        results.propagation = measure_propagation(sidecar, hooks, chain, broker.bootstrap, args)

        # The experiment the overhead and storm phases run under: control C, treatment A (B is the storm's other).
        base = default_config()
        setup = [chain.config(base, activate=True, reason="storm control")]
        control = setup[0][0]
        setup.append(chain.config(with_re_rank(base, mmr_lambda=0.75), activate=False, reason="storm arm A"))
        setup.append(chain.config(with_re_rank(base, mmr_lambda=0.7), activate=False, reason="storm arm B"))
        arm_a, arm_b = setup[1][0], setup[2][0]
        setup.append(chain.allocation(STORM_EXPERIMENT, arm_a))
        asyncio.run(publish_records(broker.bootstrap, [v for _, v in setup]))
        wait_version(sidecar, setup[-1][0])

        print(f"overhead: {args.requests} requests ...", file=sys.stderr, flush=True)
        loop = RankerLoop(sidecar, args)
        sample = loop.sets[0]
        probe = sidecar.begin("probe", surface="home", cohort="returning")
        items = sidecar.rank(probe, sample, np.random.default_rng(0)).to_shown_items(sample)
        results.overhead = measure_overhead(sidecar, args, items)
        # finish() above queued impressions: let the sink drain so the cascade runs in steady state.
        t = time.perf_counter()
        drained = sidecar.events.flush(60.0)
        results.sink_flush_s = (time.perf_counter() - t, drained)

        print(f"cascade: {args.cascade_calls} calls ...", file=sys.stderr, flush=True)
        results.cascade = measure_cascade(args)

        print(
            f"storm: {args.storm_rounds} x ({args.storm_requests} quiet + {args.storm_requests} storm) ...",
            file=sys.stderr,
            flush=True,
        )
        plan = StormPlan(
            bootstrap=broker.bootstrap,
            key_id=KEY_ID,
            head_version=chain.head.version,
            control_version=control,
            arm_versions=(arm_a, arm_b),
            experiment_id=STORM_EXPERIMENT,
            salt=SALT,
            share=0.5,
            rate_per_s=args.storm_rate,
        )
        driver = ThreadStorm(plan, keyring) if args.storm_producer == "thread" else ProcessStorm(plan, keys_spec)
        results.phases = measure_storm(sidecar, loop, driver, args)
        sink = sidecar.events.stats()
        results.sink = {"emitted": sink.emitted, "dropped": sink.dropped}
        stats = sidecar.consumer.stats()
        results.consumer = {"accepted": stats.accepted, "refused": stats.refused, "errors": stats.errors}
        results.load.append(os.getloadavg())
    finally:
        if driver is not None:
            driver.close()
        if sidecar is not None:
            sidecar.stop()
        broker.stop()
    return results


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command line of the benchmark."""
    parser = argparse.ArgumentParser(prog="bench/sidecar.py", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (fewer changes, requests and rounds)")
    parser.add_argument("--broker", choices=("tansu", "kafka"), default="tansu")
    parser.add_argument("--changes", type=int, default=None, help="config changes timed (default 1,000)")
    parser.add_argument(
        "--inflight-cap-ms",
        type=float,
        default=30.0,
        help="send the next change after this even if the previous is not active yet",
    )
    parser.add_argument("--gap-ms", type=float, default=10.0, help="random pause 0..this between changes")
    parser.add_argument("--requests", type=int, default=None, help="overhead requests (default 200,000)")
    parser.add_argument("--users", type=int, default=50_000, help="user population (Zipf 1)")
    parser.add_argument(
        "--overhead-span-s",
        type=float,
        default=20.0,
        help="simulated time the overhead requests span (latency-window slices roll over)",
    )
    parser.add_argument("--facade-calls", type=int, default=20_000, help="begin()/finish() calls timed for context")
    parser.add_argument("--cascade-calls", type=int, default=None, help="cascade calls (default 300)")
    parser.add_argument("--storm-candidates", type=int, default=20_000)
    parser.add_argument("--storm-requests", type=int, default=None, help="timed requests per phase (default 600)")
    parser.add_argument("--storm-rounds", type=int, default=None, help="quiet/storm rounds, ABBA order (default 20)")
    parser.add_argument("--storm-lead-s", type=float, default=0.3, help="untimed lead-in of every phase")
    parser.add_argument("--storm-rate", type=float, default=10.0, help="config changes per second in a storm")
    parser.add_argument(
        "--storm-producer",
        choices=("process", "thread"),
        default="process",
        help="publish the storm from a child process (default) or a thread of the ranker process",
    )
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--keep", action="store_true", help="keep the work dir (broker log) after the run")
    args = parser.parse_args(argv)
    defaults = {
        "changes": (200, 1_000),
        "requests": (50_000, 200_000),
        "cascade_calls": (60, 300),
        "storm_requests": (300, 600),
        "storm_rounds": (4, 20),
    }
    for name, (quick, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; the last stdout line is the JSON summary."""
    args = parse_args(argv)
    work_dir = Path(tempfile.mkdtemp(prefix="rectune-bench-sidecar-"))
    begin = time.perf_counter()
    try:
        results = run(args, work_dir)
        summary = report(args, results, time.perf_counter() - begin)
    except BaseException:
        print(f"sidecar benchmark failed; logs kept in {work_dir}", file=sys.stderr)
        raise
    if args.keep:
        print(f"logs: {work_dir}")
    else:
        shutil.rmtree(work_dir, ignore_errors=True)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
