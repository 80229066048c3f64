"""What a per-request allocation costs the sidecar's request path: `Router.assign` per user against per request.

Both in the same run, on one snapshot with a control and two treatment arms
at 25% each.  Per user (`Allocation.unit` "user", the baseline): `--users`
distinct returning users, so the router's per-salt user cache is warm and
most calls are a dict hit.  Per request: every call carries a new request
id, which is hashed (blake2b) and never cached.  Reports the median
nanoseconds per call over `--repeats` timed passes of `--calls` calls each,
and the ratio per request / per user.  Last line: one JSON object.

Usage: .venv/bin/python bench/assign_unit.py [--calls 200000] [--users 20000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schemas.config import Allocation, ArmShare, RandomizationUnit, default_config, validate_allocation
from serving_sidecar.assignment import Router
from serving_sidecar.holder import ArmConfig, Snapshot


def snapshot(unit: RandomizationUnit) -> Snapshot:
    """A control and two treatment arms at 25% each, randomised per `unit`."""
    arms = (ArmShare("c", 1, 0.5), ArmShare("t1", 2, 0.25), ArmShare("t2", 3, 0.25))
    allocation = validate_allocation(Allocation(experiment_id="e", salt="e", arms=arms, unit=unit))
    configs = {a.arm_id: ArmConfig(a.arm_id, a.config_version, default_config()) for a in arms}
    return Snapshot(1, configs["c"], allocation, configs)


def ns_per_call(unit: RandomizationUnit, calls: int, users: int, repeats: int) -> float:
    """Median ns per `Router.assign` call over `repeats` passes (the first, untimed pass warms the router)."""
    snap, router = snapshot(unit), Router()
    user_ids = [f"user-{i}" for i in range(users)]
    passes: list[float] = []
    for rep in range(repeats + 1):
        request_ids = [f"req-{rep}-{i}" for i in range(calls)]
        assign = router.assign
        start = time.perf_counter_ns()
        for i in range(calls):
            assign(snap, user_ids[i % users], request_ids[i])
        elapsed = time.perf_counter_ns() - start
        if rep:
            passes.append(elapsed / calls)
    return statistics.median(passes)


def main(argv: list[str] | None = None) -> int:
    """Time both units in one run and print the table and the JSON line."""
    parser = argparse.ArgumentParser(prog="bench/assign_unit.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200_000, help="assign calls per timed pass")
    parser.add_argument("--users", type=int, default=20_000, help="distinct users (per-user unit)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per unit")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.users < 1 or args.repeats < 1:
        parser.error("--calls, --users and --repeats must be >= 1")
    user = ns_per_call("user", args.calls, args.users, args.repeats)
    request = ns_per_call("request", args.calls, args.users, args.repeats)
    print(f"Router.assign, median of {args.repeats} passes of {args.calls:,} calls:")
    print(f"  per user ({args.users:,} returning users, cached): {user:8.0f} ns per call")
    print(f"  per request (a new id each call, hashed):  {request:8.0f} ns per call")
    print(f"  ratio per request / per user: {request / user:.2f}")
    summary = {"per_user_ns": user, "per_request_ns": request, "ratio": request / user, "calls": args.calls}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
