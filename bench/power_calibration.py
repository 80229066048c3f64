"""Is the power gate's variance honest?  Planned against realised standard errors in the simulated loop.

The Online agent's power gate plans each experiment from the incumbent's
recent traffic: a variance per request (`agents.online_policy.
baseline_from_totals`) projected to the horizon (`agents.loop_plan`) by
the variance curve the last experiments' reads followed, CUPED-adjusted
when they were, or before any by the persistent share of that variance
(`agents.stats.persistence`: returning users' share does not shrink with
time; 1/N when the share is 0).  This bench runs
the agents' loop (`rectune.simloop`, offline brain) on each scenario and
compares, for every treatment arm read at least `--min-requests` times,

    realised  = the read's standard error of the difference (CUPED-adjusted
                when the read was), at the end of the arm's experiment;
    planned   = sqrt(v / n_t + v / n_c), the plan's variance per request v,
                projected to the read's length T as v·(1 − φ + φ·T/W)
                (φ the persistent share, W the baseline window), at the
                arm's *realised* request counts n_t, n_c,

so a ratio of 1 means the gate's model held; a ratio r means every MDE
the gate reported was about r times too small (the detection it promised
needs r² times the traffic).  The ratio is a property of the world's users
(a fixed population whose propensities persist) and the plan's model, not of
the machine: no baseline run is needed.

Usage: `.venv/bin/python bench/power_calibration.py [--seeds 3] [--days 28] [--jobs 2]`.
Last line: one JSON object {scenario: {"arms", "median_ratio", "q25", "q75",
"raw_median_ratio"}}.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _tuning_world import bench_world  # noqa: E402

SCENARIOS = ("apparel_core", "apparel_seasonal", "apparel_thin")


def run_one(args: tuple[str, int, float, float]) -> list[tuple[float, float]]:
    """(realised / planned, raw / planned) for each arm of one simulated run (called in a worker process)."""
    name, seed, days, min_requests = args
    bw = bench_world(name, seed, days)
    step_s = bw.preset.step_s
    sim = bw.run_loop()
    planned: dict[str, tuple[float, float, float]] = {}  # experiment → (v, φ, window s)
    last_read: dict[str, tuple[int, dict[str, Any]]] = {}
    first_read_ms: dict[str, int] = {}
    for record in sim.records:
        payload = record.get("payload")
        if not isinstance(payload, dict):
            continue
        exp_id, at_ms = str(record.get("experiment_id")), int(record.get("at_ms", 0))
        if record.get("kind") == "allocation":
            figures = {f["name"]: f["value"] for f in payload.get("figures", [])}
            if "variance_per_request" in figures:
                window_s = figures.get("variance_window_s")
                planned[exp_id] = (
                    float(figures["variance_per_request"]),
                    float(figures.get("persistent_share") or 0.0),
                    float(window_s) if isinstance(window_s, int | float) and math.isfinite(window_s) else math.nan,
                )
        for read in payload.get("reads") or []:
            first_read_ms.setdefault(exp_id, at_ms)
            last_read[read["arm_id"]] = (at_ms, read)  # the last read of an arm is its final one
    out: list[tuple[float, float]] = []
    for arm, (at_ms, read) in last_read.items():
        exp_id = arm.rsplit(".", 1)[0]
        plan = planned.get(exp_id)
        n_t, n_c = float(read["treatment_requests"]), float(read["control_requests"])
        if plan is None or not (plan[0] > 0.0 and n_t >= min_requests and n_c > 0.0):
            continue
        v, share, window_s = plan
        if share > 0.0:
            # the plan's projection to the read's length (reads start one step after launch)
            elapsed_s = (at_ms - first_read_ms[exp_id]) / 1000.0 + step_s
            v *= 1.0 - share + share * elapsed_s / window_s
        planned_se = math.sqrt(v / n_t + v / n_c)
        realised = float(read["difference_se"])
        ratio = read.get("variance_ratio")
        raw = realised / math.sqrt(ratio) if read.get("cuped") and ratio else realised
        out.append((realised / planned_se, raw / planned_se))
    return out


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the loop on every scenario and seed; print the ratios per scenario and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--days", type=float, default=28.0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--min-requests", type=float, default=5_000.0, help="treatment requests an arm needs")
    parser.add_argument("--scenario", action="append", help="scenario name or path (default: the three shipped)")
    args = parser.parse_args(argv)
    names = tuple(args.scenario or SCENARIOS)
    jobs = [(name, seed, args.days, args.min_requests) for name in names for seed in range(args.seeds)]
    with ProcessPoolExecutor(max(1, args.jobs)) as pool:
        results = list(pool.map(run_one, jobs))
    summary: dict[str, dict[str, float]] = {}
    for name in names:
        rows = [row for (n, *_), found in zip(jobs, results, strict=True) if n == name for row in found]
        if not rows:
            continue
        ratios = [r for r, _ in rows]
        summary[name] = {
            "arms": float(len(rows)),
            "median_ratio": statistics.median(ratios),
            "q25": _quantile(ratios, 0.25),
            "q75": _quantile(ratios, 0.75),
            "raw_median_ratio": statistics.median(raw for _, raw in rows),
        }
        s = summary[name]
        print(
            f"{name:18s} {len(rows):3d} arms  realised / planned se: median {s['median_ratio']:.2f} "
            f"[IQR {s['q25']:.2f}–{s['q75']:.2f}]; without CUPED {s['raw_median_ratio']:.2f}"
        )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
