"""Agents-only runs of the tuning bench's loop, and paired comparisons of two runs: how a variant is judged.

Why: most changes to the Actor or the Online agent move the tuning bench's
agents row by less than its seed-to-seed noise (paired per-seed sd of the
share about 0.13 in core, 0.19 seasonal, 0.34 thin; BENCHMARKS.md), so a
variant must be run on many seeds, paired by seed with the code it would
replace, and the other methods and the oracle's search (most of the bench's
CPU) are not needed for that.  This tool runs only the agents loop exactly as
`bench/tuning.py` does (`rectune.simloop.run_simloop`, the same preset, start
and seeds) and scores each run with the same oracle view (`World.expected`,
`_tuning_score.score`), so a "measured, not kept" line in BENCHMARKS.md can be
reproduced from the repository instead of a scratch script.

`run` writes one JSON file: the commit it ran on, the overrides, and per
(scenario, seed) the true start and final values (week 0, as the bench
scores), the final lift over the start, the cumulative gain over serving the
start config all along (Σ requests × (value served − start value); equal to
the difference of two methods' regrets, so no oracle search is needed),
experiments, promotions, regressions shipped, finals over the SLO, and arms
not better than their incumbent that were promoted.  With `--oracle` it also
runs (or reads from `.cache/tuning/`) the bench's oracle search and records
its best value and the share of the oracle's lift (`--oracle-evaluations`
sets a smaller budget for a rough share).

A variant is either another checkout (run the tool there) or a settings
override, `--set SECTION.FIELD=VALUE`, on the loop's settings (`loop`:
`agents.loop.LoopSettings`), the Online policy (`online`:
`agents.online_policy.OnlinePolicy`; `target_mde` is replaced by the pilot's)
or the offline Actor's ascent (`ascent`: `agents.ascent.AscentSettings`).
Values are JSON (numbers, true/false, null), else strings; each is checked by
the settings' own validation.

`compare A.json B.json` pairs the runs by (scenario, seed) and prints per
scenario the mean lifts, the paired difference B − A in percentage points
with its standard error, the ratio of cumulative gains and the regressions;
the last line is one JSON object.

Run:
  .venv/bin/python bench/agents_paired.py run --seeds 0:20 [--scenario NAME]... [--days 28] [--jobs 2]
      [--set ascent.z_min=2] [--oracle] --out runs/variants/NAME.json
  .venv/bin/python bench/agents_paired.py compare runs/variants/A.json runs/variants/B.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from _screen import ScreenedBrain, ScreenSettings
from _tuning_methods import trace_from_sim
from _tuning_score import _share_of_lift, mean_sd
from _tuning_world import ORACLE_EVALUATIONS, TruthCache, bench_world, oracle_best
from tuning import DEFAULT_DAYS, _finite

from agents.offline_brain import OfflineBrain, offline_brain_kwargs
from rectune.simloop import SimPreset, preset_for
from simulator.scenario import load_scenario, shipped_scenarios

ROOT: Final = Path(__file__).resolve().parents[1]
SECTIONS: Final = ("loop", "online", "ascent")
_RUN_KEYS: Final = ("scenario", "seed", "lift", "gain", "regressions", "promotions", "final_meets_slo")


class VariantError(ValueError):
    """An override or a run file is malformed; the message names the field and the rule."""


@dataclass(frozen=True, slots=True)
class Override:
    """One `--set SECTION.FIELD=VALUE`: which settings object, which field, the parsed value."""

    section: str
    field: str
    value: Any

    def text(self) -> str:
        """The override as given on the command line (recorded in the run file)."""
        return f"{self.section}.{self.field}={json.dumps(self.value)}"


def parse_override(text: str) -> Override:
    """`SECTION.FIELD=VALUE` → `Override` (VALUE as JSON, else the string); raises `VariantError` naming the rule."""
    name, sep, raw = text.partition("=")
    section, dot, field = name.strip().partition(".")
    if not sep or not dot or not field:
        msg = f"--set {text!r}: must be SECTION.FIELD=VALUE; hint: --set ascent.z_min=2"
        raise VariantError(msg)
    if section not in SECTIONS:
        msg = f"--set {text!r}: section must be one of {', '.join(SECTIONS)}, got {section!r}"
        raise VariantError(msg)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return Override(section, field.strip(), value)


def _replaced(obj: Any, overrides: Iterable[Override], section: str) -> Any:
    """`obj` with the `section`'s overrides applied through its own validation (`dataclasses.replace`)."""
    changes = {o.field: o.value for o in overrides if o.section == section}
    if not changes:
        return obj
    fields = {f.name for f in dataclasses.fields(obj)}
    unknown = sorted(set(changes) - fields)
    if unknown:
        known = ", ".join(sorted(fields))
        msg = f"--set {section}.{unknown[0]}: {type(obj).__name__} has no such field; fields: {known}"
        raise VariantError(msg)
    try:
        return dataclasses.replace(obj, **changes)
    except (ValueError, TypeError) as err:
        msg = f"--set {section}: {err}"
        raise VariantError(msg) from err


def apply_overrides(preset: SimPreset, overrides: Sequence[Override]) -> SimPreset:
    """The preset with the `loop` and `online` overrides applied (the `ascent` ones go to the brain)."""
    settings = _replaced(preset.settings, overrides, "loop")
    policy = _replaced(preset.policy, overrides, "online")
    return dataclasses.replace(preset, settings=settings, policy=policy)


def brain_kwargs(preset: SimPreset, overrides: Sequence[Override], seed: int) -> dict[str, Any]:
    """The arguments of the offline brain `run_simloop` would build, with the `ascent` overrides applied."""
    kwargs = offline_brain_kwargs(preset.policy, preset.settings.rules, seed=seed)
    kwargs["ascent"] = _replaced(kwargs["ascent"], overrides, "ascent")
    return kwargs


def brain_for(preset: SimPreset, overrides: Sequence[Override], seed: int) -> OfflineBrain:
    """The offline brain `run_simloop` would build, with the `ascent` overrides applied."""
    return OfflineBrain(**brain_kwargs(preset, overrides, seed))


def run_one(
    scenario_ref: str,
    seed: int,
    days: float,
    overrides: Sequence[Override],
    oracle_evaluations: int = 0,
    screen: ScreenSettings | None = None,
) -> dict[str, Any]:
    """One agents run on (scenario, seed), scored as `bench/tuning.py` scores it (called in a worker process).

    `oracle_evaluations` > 0 also runs (or reads from the cache) the oracle's search with that budget and
    records its best value and the share of its lift the run reached.  `screen` puts the analysis of
    `bench/_screen.py` (a simulated interleaving screen) in front of the offline brain.
    """
    clock = time.perf_counter()
    base = bench_world(scenario_ref, seed, days)
    bw = base.with_preset(apply_overrides(base.preset, overrides))
    kwargs = brain_kwargs(bw.preset, overrides, seed)
    screened = None
    if screen is None:
        sim = bw.run_loop(OfflineBrain(**kwargs))
    else:
        screened = ScreenedBrain(bw.world, horizon_s=bw.preset.policy.horizon_s, screen=screen, **kwargs)
        sim = bw.run_loop(screened, progress=screened.tick)
    trace = trace_from_sim(sim)
    truth = TruthCache(bw.world)
    start = bw.start
    # scored against the start config: the regret against it is minus the gain, and no oracle search is needed
    s = bw.score(trace, truth, start, at_s=0.0)
    start_value = truth(start, 0.0).value
    record: dict[str, Any] = {
        "scenario": bw.scenario.name,
        "seed": seed,
        "start_value": start_value,
        "final_value": s.final_value,
        "lift": s.final_value / start_value - 1.0,
        "gain": -s.cum_regret,
        "requests": s.requests,
        "experiments": s.experiments,
        "promotions": s.promotions,
        "regressions": s.regressions_shipped,
        "rollbacks": s.rollbacks,
        "final_meets_slo": s.final_meets_slo,
        "null_arms": s.null_arms,
        "null_arms_promoted": s.null_arms_promoted,
    }
    if oracle_evaluations > 0:
        best = oracle_best(bw.world, seed, start, at_s=0.0, evaluations=oracle_evaluations)
        # the reference as `_tuning_score.score` takes it: the oracle's view of its best config, not the search's value
        record["oracle_value"] = truth(best.config, 0.0).value
        record["oracle_share"] = _share_of_lift(s.final_value, start_value, record["oracle_value"])
    if screened is not None:
        record["screens"] = screened.screens
        record["screen_passed"] = screened.passed
    record["seconds"] = time.perf_counter() - clock
    return record


def _commit() -> tuple[str, bool]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    return git("rev-parse", "--short", "HEAD") or "unknown", bool(git("status", "--porcelain", "--untracked-files=no"))


# --------------------------------------------------------------------------- compare (pure)


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (NaN for fewer than two values)."""
    mean, sd = mean_sd(values)
    return mean, sd / math.sqrt(len(values)) if len(values) > 1 else math.nan


def _totals(ra: Sequence[Mapping[str, Any]], rb: Sequence[Mapping[str, Any]], key: str) -> list[int]:
    """[Σ `key` over `ra`, Σ over `rb`] (counts and flags)."""
    return [sum(int(run[key]) for run in ra), sum(int(run[key]) for run in rb)]


def paired_summary(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per scenario: the runs of `a` and `b` paired by seed, the mean lifts and B − A with its standard error.

    Lifts and their difference are in percentage points of the start value;
    `share_diff` only when both files carry oracle shares; `gain_ratio` is
    B's cumulative gain over A's.  Raises `VariantError` when a file holds a
    (scenario, seed) twice or the two have no run in common.
    """
    keyed = []
    for name, runs in (("A", a), ("B", b)):
        index: dict[tuple[str, int], Mapping[str, Any]] = {}
        for i, run in enumerate(runs):
            missing = [k for k in _RUN_KEYS if k not in run]
            if missing:
                msg = f"{name}: runs[{i}].{missing[0]}: missing (a run file written by `agents_paired.py run`)"
                raise VariantError(msg)
            key = (str(run["scenario"]), int(run["seed"]))
            if key in index:
                msg = f"{name}: runs[{key}]: a (scenario, seed) may appear once"
                raise VariantError(msg)
            index[key] = run
        keyed.append(index)
    common = sorted(set(keyed[0]) & set(keyed[1]))
    if not common:
        msg = "runs: the two files have no (scenario, seed) in common; hint: run both with the same --seeds"
        raise VariantError(msg)
    out: dict[str, dict[str, Any]] = {}
    for scenario in dict.fromkeys(k[0] for k in common):
        keys = [k for k in common if k[0] == scenario]
        ra, rb = [keyed[0][k] for k in keys], [keyed[1][k] for k in keys]
        diff = [100.0 * (y["lift"] - x["lift"]) for x, y in zip(ra, rb, strict=True)]
        diff_mean, diff_se = _mean_se(diff)
        gain_a, gain_b = sum(x["gain"] for x in ra), sum(y["gain"] for y in rb)
        block: dict[str, Any] = {
            "seeds": [k[1] for k in keys],
            "lift_a_pp": 100.0 * mean_sd([x["lift"] for x in ra])[0],
            "lift_b_pp": 100.0 * mean_sd([y["lift"] for y in rb])[0],
            "lift_diff_pp": diff_mean,
            "lift_diff_se_pp": diff_se,
            "gain_ratio": gain_b / gain_a if gain_a > 0.0 else math.nan,
            "regressions": _totals(ra, rb, "regressions"),
            "promotions": _totals(ra, rb, "promotions"),
            "finals_over_slo": [len(ra) - n for n in _totals(ra, rb, "final_meets_slo")],
        }
        if all("oracle_share" in r for r in (*ra, *rb)):
            shares = [float(y["oracle_share"]) - float(x["oracle_share"]) for x, y in zip(ra, rb, strict=True)]
            block["share_diff"], block["share_diff_se"] = _mean_se(shares)
        out[scenario] = block
    return out


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        msg = f"{path}: not a readable run file ({err}); hint: write one with `agents_paired.py run --out`"
        raise VariantError(msg) from err
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        msg = f"{path}: runs: must be a list (a file written by `agents_paired.py run`)"
        raise VariantError(msg)
    return data


def _screen_settings(text: str) -> ScreenSettings:
    pool, _, share = text.partition(":")
    try:
        return ScreenSettings(pool=int(pool), share_of_horizon=float(share or "0.25"))
    except ValueError as err:
        rule = "POOL:SHARE with POOL in [1, 8] and SHARE >= 0 (e.g. 8:0.25; 0 is the free screen)"
        msg = f"--screen: {rule}, got {text!r}: {err}"
        raise VariantError(msg) from err


def _seed_range(text: str) -> range:
    low, sep, high = text.partition(":")
    try:
        seeds = range(int(low), int(high)) if sep else range(int(low))
    except ValueError as err:
        msg = f"--seeds {text!r}: must be N (seeds 0..N-1) or A:B (seeds A..B-1)"
        raise VariantError(msg) from err
    if not seeds:
        msg = f"--seeds {text!r}: must name at least one seed"
        raise VariantError(msg)
    return seeds


def main(argv: Sequence[str] | None = None) -> int:
    """`run` or `compare` (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="bench/agents_paired.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="agents-only runs, scored by the oracle's view, to a JSON file")
    run.add_argument("--seeds", default="20", help="N (seeds 0..N-1) or A:B (seeds A..B-1)")
    run.add_argument("--scenario", action="append", default=None, help="a scenario name or JSON path (repeat)")
    run.add_argument("--days", type=float, default=DEFAULT_DAYS, help="simulated days of traffic per run")
    run.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    run.add_argument("--set", dest="overrides", action="append", default=[], help="SECTION.FIELD=VALUE (repeat)")
    run.add_argument("--oracle", action="store_true", help="also the share of the oracle's lift (cached search)")
    run.add_argument(
        "--oracle-evaluations",
        type=int,
        default=ORACLE_EVALUATIONS,
        help=f"the oracle search's budget with --oracle (default {ORACLE_EVALUATIONS}, the bench's)",
    )
    run.add_argument(
        "--screen",
        default=None,
        metavar="POOL:SHARE",
        help="analysis: screen a pool of POOL candidates by simulated interleaving for SHARE of a horizon",
    )
    run.add_argument("--out", type=Path, required=True, help="the run file to write")
    cmp = sub.add_parser("compare", help="pair two run files by (scenario, seed)")
    cmp.add_argument("a", type=Path)
    cmp.add_argument("b", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "compare":
            return _compare(args.a, args.b)
        return _run(args)
    except VariantError as err:
        parser.error(str(err))
    return 2  # unreachable: parser.error exits


def _run(args: argparse.Namespace) -> int:
    overrides = [parse_override(text) for text in args.overrides]
    seeds = _seed_range(args.seeds)
    scenarios = args.scenario or list(shipped_scenarios())
    if not args.days > 0.0 or args.jobs < 1:
        msg = f"--days must be > 0 and --jobs >= 1, got {args.days} and {args.jobs}"
        raise VariantError(msg)
    if args.oracle and args.oracle_evaluations < 1:
        msg = f"--oracle-evaluations: must be >= 1, got {args.oracle_evaluations}"
        raise VariantError(msg)
    evaluations = args.oracle_evaluations if args.oracle else 0
    screen = _screen_settings(args.screen) if args.screen else None
    probe = preset_for(load_scenario(scenarios[0]), args.days * 86_400.0, randomization_unit="request")
    brain_for(apply_overrides(probe, overrides), overrides, 0)  # refuse a bad override before any run
    jobs = [(s, seed) for seed in seeds for s in scenarios]
    clock = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(
            pool.map(
                run_one,
                [s for s, _ in jobs],
                [k for _, k in jobs],
                [args.days] * len(jobs),
                [overrides] * len(jobs),
                [evaluations] * len(jobs),
                [screen] * len(jobs),
            )
        )
    commit, dirty = _commit()
    meta = {
        "commit": commit,
        "dirty": dirty,
        "overrides": [o.text() for o in overrides],
        "days": args.days,
        "seeds": [seeds.start, seeds.stop],
        "oracle_evaluations": evaluations,
        "screen": None if screen is None else f"{screen.pool}:{screen.share_of_horizon:g}",
        "wall_s": time.perf_counter() - clock,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_finite({"meta": meta, "runs": runs}), indent=1, allow_nan=False))
    for r in runs:
        share = f", share {r['oracle_share']:.3f}" if "oracle_share" in r else ""
        print(
            f"{r['scenario']} seed {r['seed']}: lift {100 * r['lift']:+.2f}%{share}, "
            f"{r['promotions']} promotions, {r['regressions']} regressions ({r['seconds']:.0f} s)"
        )
    print(f"wrote {args.out} ({len(runs)} runs, {meta['wall_s']:.0f} s, commit {commit}{' dirty' if dirty else ''})")
    return 0


def _compare(path_a: Path, path_b: Path) -> int:
    a, b = _load(path_a), _load(path_b)
    days = {json.dumps(x.get("meta", {}).get("days")) for x in (a, b)}
    if len(days) > 1:
        msg = f"meta.days: the two files ran different budgets ({' vs '.join(sorted(days))}); pair like with like"
        raise VariantError(msg)
    summary = paired_summary(a["runs"], b["runs"])
    for name, meta in (("A", a.get("meta", {})), ("B", b.get("meta", {}))):
        dirty = " dirty" if meta.get("dirty") else ""
        print(f"{name}: commit {meta.get('commit')}{dirty}, overrides {meta.get('overrides')}")
    for scenario, s in summary.items():
        share = f"; share {s['share_diff']:+.3f} ± {s['share_diff_se']:.3f}" if "share_diff" in s else ""
        print(
            f"{scenario} ({len(s['seeds'])} seeds): lift {s['lift_a_pp']:.2f}% → {s['lift_b_pp']:.2f}%, "
            f"B − A {s['lift_diff_pp']:+.3f} ± {s['lift_diff_se_pp']:.3f} pp{share}; "
            f"cumulative gain ×{s['gain_ratio']:.3f}; "
            f"regressions {s['regressions'][0]} → {s['regressions'][1]}, promotions {s['promotions'][0]} → "
            f"{s['promotions'][1]}, finals over the SLO {s['finals_over_slo'][0]} → {s['finals_over_slo'][1]}"
        )
    print(json.dumps(_finite(summary), allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
