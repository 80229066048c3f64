"""How much a per-request (paired) read gains over a per-user one in the simulated worlds: A/A reads of both designs.

For each scenario, `--reps` A/A experiments (control and treatment both serve
`default_config()`, 50/50) of `--days` simulated days run on one world, once
per randomisation unit (`schemas.config.Allocation.unit`).  Each read of
clicks per request is compared three ways: per user read as independent arms
(what a per-user experiment uses before CUPED), per request read paired per
user bucket (`agents.stats.ratio.paired_comparison`, what the agents use) and
per request read as if independent.  Reports the empirical standard deviation
of the difference over the reps (the truth) next to the mean standard error
each read reports, and the share of reps whose two-sided 95% z-test rejected
(an A/A: about 5% is right).  Last line: one JSON object.

The world's users come back and keep their propensity, which a per-user read
cannot average out; a per-request experiment puts every user in both arms.
CUPED's share of the per-user variance is measured by `bench/tuning.py`'s
runs (session 4: about 78% removed), not here.

Usage: .venv/bin/python bench/paired_read.py [--scenario apparel_core] [--reps 30] [--days 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.stats.ratio import compare_sums
from schemas.config import Allocation, ArmShare, RandomizationUnit, default_config
from simulator.scenario import load_scenario, shipped_scenarios
from simulator.world import World

_Z975 = 1.959963984540054
_START_S = 7 * 86_400.0  # a week in: the catalogue has turned over once


def _reads(world: World, unit: RandomizationUnit, reps: int, days: float) -> dict[str, list[tuple[float, float]]]:
    """(difference, reported standard error) per rep for each read of `unit`'s A/A experiments."""
    out: dict[str, list[tuple[float, float]]] = {}
    for rep in range(reps):
        allocation = Allocation(
            experiment_id="aa",
            salt=f"aa-{rep}",
            arms=(ArmShare("control", 1, 0.5), ArmShare("treatment", 1, 0.5)),
            unit=unit,
        )
        totals = world.simulate(
            allocation,
            {1: default_config()},
            start_s=_START_S,
            duration_s=days * 86_400.0,
            rng=np.random.default_rng([rep, 0xAA]),
        )
        control, treatment = totals["control"].sums, totals["treatment"].sums
        reads = {"independent": False} if unit == "user" else {"paired": True, "independent": False}
        for name, paired in reads.items():
            cmp = compare_sums(control, treatment, "clicks", "requests", paired=paired)
            out.setdefault(f"{unit}/{name}", []).append((cmp.difference, cmp.difference_se))
    return out


def main(argv: list[str] | None = None) -> int:
    """Run both designs on each scenario and print the table and the JSON line."""
    parser = argparse.ArgumentParser(prog="bench/paired_read.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", action="append", default=None, help="a scenario name or JSON path (repeat)")
    parser.add_argument("--reps", type=int, default=30, help="A/A experiments per design")
    parser.add_argument("--days", type=float, default=2.0, help="simulated days per experiment")
    parser.add_argument("--seed", type=int, default=0, help="the world's seed")
    args = parser.parse_args(argv)
    if args.reps < 3 or not args.days > 0.0:
        parser.error("--reps must be >= 3 and --days > 0")
    clock = time.perf_counter()
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for ref in args.scenario or list(shipped_scenarios()):
        scenario = load_scenario(ref)
        world = World(scenario, seed=args.seed)
        reads = {**_reads(world, "user", args.reps, args.days), **_reads(world, "request", args.reps, args.days)}
        rows: dict[str, dict[str, float]] = {}
        for name, pairs in reads.items():
            d = np.array([p[0] for p in pairs])
            se = np.array([p[1] for p in pairs])
            rows[name] = {
                "empirical_sd": float(np.std(d, ddof=1)),
                "mean_se": float(np.mean(se)),
                "aa_rejections": float(np.mean(np.abs(d) > _Z975 * se)),
            }
        base = rows["user/independent"]["mean_se"]
        for row in rows.values():
            row["se_over_per_user"] = row["mean_se"] / base
        summary[scenario.name] = rows
        print(f"{scenario.name}: {args.reps} A/A reps of {args.days:g} days (clicks per request, 50/50)")
        head = ("empirical sd", "mean se", "se / per-user", "A/A rejected")
        print(f"  {'design/read':24s} {head[0]:>13s} {head[1]:>10s} {head[2]:>14s} {head[3]:>13s}")
        for name, row in rows.items():
            print(
                f"  {name:24s} {row['empirical_sd']:13.5f} {row['mean_se']:10.5f} "
                f"{row['se_over_per_user']:14.3f} {row['aa_rejections']:13.0%}"
            )
    print(f"measured in {time.perf_counter() - clock:.0f} s")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
