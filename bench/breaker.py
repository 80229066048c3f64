"""How often the sidecar's SLO breaker cuts back an arm, by the arm's true p99: the test against a p99 read.

For each true p99 (lognormal latency, sigma 0.25) and each rule preset (the
sidecar's default and the demo's), `--runs` simulated runs of `--minutes`
feed the real `LatencyMonitor` at the preset's request rate and check the
rules once a simulated second, as the sidecar's timer does.  Two rules are
judged on the same windows in the same run: the breaker's (`breaches`: the
window's requests at or over the limit tested at `alpha` per check) and the
p99 read against the limit (the rule before 2026-11-27).  A run "trips" at
its first breach.  Reports the share of runs that tripped and the mean time
to the first trip.  Last line: one JSON object.

Usage: .venv/bin/python bench/breaker.py [--runs 40] [--minutes 10] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving_sidecar.breaker import SloRule, breaches
from serving_sidecar.latency import LatencyMonitor

_Z99 = 2.3263478740408408
_SIGMA = 0.25
_P99S_MS = (45.0, 48.0, 50.0, 53.0, 56.0, 60.0, 80.0)


@dataclass(frozen=True, slots=True)
class Preset:
    name: str
    rule: SloRule
    rate_per_s: float


PRESETS = (
    Preset("sidecar default (60 s, >= 200 requests, 10 req/s)", SloRule(max_ms=50.0), 10.0),
    Preset("demo (30 s, >= 500 requests, 30 req/s)", SloRule(max_ms=50.0, window_s=30.0, min_samples=500), 30.0),
)


def first_trips(preset: Preset, p99_ms: float, minutes: float, rng: np.random.Generator) -> tuple[float, float]:
    """(seconds to the test's first breach, seconds to the p99 read's first breach); inf when none."""
    monitor = LatencyMonitor(window_s=60.0, slices=60)
    mu = math.log(p99_ms) - _Z99 * _SIGMA
    test_at = read_at = math.inf
    for second in range(int(minutes * 60)):
        n = int(rng.poisson(preset.rate_per_s))
        for latency in rng.lognormal(mu, _SIGMA, n):
            monitor.record("t1", float(latency), second + 0.5)
        now = second + 1.0
        stats = monitor.stats("t1", now, preset.rule.window_s)
        if math.isinf(test_at) and breaches({"t1": stats}, [preset.rule]):
            test_at = now
        if math.isinf(read_at) and stats.count >= preset.rule.min_samples and stats.p99 > preset.rule.max_ms:
            read_at = now
        if not (math.isinf(test_at) or math.isinf(read_at)):
            break
    return test_at, read_at


def main(argv: list[str] | None = None) -> int:
    """Print the table and the JSON summary (run by `make bench`)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    began = time.monotonic()
    summary: dict[str, dict[str, dict[str, float | None]]] = {}
    print(f"runs of {args.minutes:g} min, {args.runs} per cell; cells: runs tripped (mean s to the first trip)")
    for preset in PRESETS:
        print(f"\n{preset.name}, SLO p99 <= {preset.rule.max_ms:g} ms, alpha {preset.rule.alpha:g} per check")
        print("| true p99 | the breaker's test | the p99 read (old rule) |")
        print("|---:|---|---|")
        cells: dict[str, dict[str, float | None]] = {}
        for p99 in _P99S_MS:
            trips = [first_trips(preset, p99, args.minutes, rng) for _ in range(args.runs)]
            test = [t for t, _ in trips if math.isfinite(t)]
            read = [r for _, r in trips if math.isfinite(r)]

            def cell(hits: list[float]) -> str:
                mean = f" ({sum(hits) / len(hits):.0f} s)" if hits else ""
                return f"{len(hits)}/{args.runs}{mean}"

            print(f"| {p99:g} ms | {cell(test)} | {cell(read)} |")
            cells[f"{p99:g}"] = {
                "test_tripped": len(test) / args.runs,
                "read_tripped": len(read) / args.runs,
                "test_mean_s": round(sum(test) / len(test), 1) if test else None,
            }
        summary[preset.name] = cells
    print(f"\n{time.monotonic() - began:.0f} s")
    print(json.dumps({"breaker": summary, "runs": args.runs, "minutes": args.minutes}, allow_nan=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
