"""Tuning benchmark: static vs random-search A/B vs Optuna TPE A/B vs agentic-rectune, scored by the oracle.

For each shipped scenario (`simulator.scenario.shipped_scenarios()`, or
`--scenario PATH`) and each seed, one `simulator.world.World(scenario,
seed)` and one traffic budget (`--days` simulated days at the scenario's
rate) are given to four methods (`bench/_tuning_methods.py`):

- static: `default_config()` all along;
- random: sequential 50/50 A/B tests of uniform random challengers, a
  fixed-horizon two-sided test on the north star at α = 0.05, promote when
  significantly better;
- tpe: the same tests, challengers from a plain Optuna TPE study told each
  finished test's measured challenger north star;
- agentic: the real agents loop with the offline brain (`rectune.simloop`);
- ceiling (with `--ceiling`; an analysis, not a method): the same loop fed
  oracle-ranked proposals (`bench/_tuning_ceiling.py`) — what a perfect
  Actor reaches under the same Critic rules, statistics and budget.

The A/B methods use the agentic preset's horizon, metric window and
randomisation unit (per-request allocations read paired), so every method
gets the same traffic, the same time and the same design per experiment.  Scores
(`bench/_tuning_score.py`) come from the oracle, which no method sees:
`World.expected` for the true value of every served config and
`oracle.best_config` (once per scenario and seed, cached under
`.cache/tuning/`).  Prints a table of mean ± sd over seeds and, as the last
line, one JSON object: per scenario, per method the mean figures (and `_sd`)
and `finals_over_slo` (runs whose final incumbent breaks the latency SLO by
`simulator.oracle.meets_slo`; its `oracle_share` still counts), plus
`ratios` (agentic regret / TPE's and / random's, regression rate) and
`targets` (whether each target is met).  `--plot PATH` (default
`runs/tuning/<scenario>.png`) draws the incumbent's true north star over
simulated time per method for the first scenario and seed.

Run: `.venv/bin/python bench/tuning.py [--seeds 3] [--days D] [--scenario PATH] [--quick] [--jobs 2] [--ceiling]
[--unit request|user]`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
from _tuning_ceiling import OracleGuidedBrain, oracle_view
from _tuning_methods import RandomSearch, TpeSearch, run_ab_search, run_static, trace_from_sim
from _tuning_score import MethodTrace, Score, finals_over_slo, incumbent_path, mean_sd, regret_path
from _tuning_world import ORACLE_EVALUATIONS, ROOT, TruthCache, bench_world, oracle_best

from agents.offline_brain import offline_brain_kwargs
from rectune.simloop import north_star_metric
from schemas.config import RandomizationUnit
from schemas.guardrails import Guardrails
from simulator.scenario import shipped_scenarios

METHODS: Final = ("static", "random", "tpe", "agentic")
CEILING: Final = "ceiling"  # --ceiling: the loop with oracle-ranked proposals (bench/_tuning_ceiling.py)
FIGURES: Final = (
    "oracle_share",
    "cum_regret",
    "experiments",
    "promotions",
    "regressions_shipped",
    "rollbacks",
    "guardrail_breaches",
)
ALPHA: Final = 0.05
QUICK_ORACLE_EVALUATIONS: Final = 40  # --quick: a rough oracle (its share figures are then only indicative)


# --------------------------------------------------------------------------- one run


@dataclass(frozen=True, slots=True)
class RunResult:
    """The scores of every method for one (scenario, seed), the plot curves, and timings."""

    scenario: str
    seed: int
    scores: dict[str, Score]
    curves: dict[str, tuple[list[float], list[float]]]
    regret_curves: dict[str, tuple[list[float], list[float]]]
    best_value: float
    seconds: dict[str, float]
    notes: tuple[str, ...]


def run_one(
    scenario_ref: str,
    seed: int,
    days: float,
    oracle_evaluations: int = ORACLE_EVALUATIONS,
    ceiling: bool = False,
    unit: RandomizationUnit = "request",
) -> RunResult:
    """All four methods (and with `ceiling` the oracle-guided loop) on one world (called in a worker process).

    `unit` is every method's randomisation unit (`preset_for`'s `randomization_unit`).
    """
    bw = bench_world(scenario_ref, seed, days, unit)
    world, start, preset = bw.world, bw.start, bw.preset
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    best = oracle_best(world, seed, start, at_s=0.0, evaluations=oracle_evaluations)
    timings["oracle"] = time.perf_counter() - clock
    metric = north_star_metric(bw.scenario)
    traces: dict[str, MethodTrace] = {}
    common = {"start": start, "budget_s": bw.budget_s, "step_s": preset.step_s, "seed": seed}
    clock = time.perf_counter()
    traces["static"] = run_static(world, **common)  # type: ignore[arg-type]
    timings["static"] = time.perf_counter() - clock
    ab = {
        "metric": metric,
        "horizon_s": preset.policy.horizon_s,
        "alpha": ALPHA,
        "unit": preset.policy.randomization_unit,
        **common,
    }
    for name, proposer in (
        ("random", RandomSearch(start, Guardrails(), np.random.default_rng([seed, 7]))),
        ("tpe", TpeSearch(start, Guardrails(), seed)),
    ):
        clock = time.perf_counter()
        traces[name] = run_ab_search(world, proposer, method=name, **ab)  # type: ignore[arg-type]
        timings[name] = time.perf_counter() - clock
    clock = time.perf_counter()
    sim = bw.run_loop()
    traces["agentic"] = trace_from_sim(sim)
    timings["agentic"] = time.perf_counter() - clock
    if ceiling:
        clock = time.perf_counter()
        guided = OracleGuidedBrain(
            oracle_view(world),
            **offline_brain_kwargs(preset.policy, preset.settings.rules, seed=seed),
        )
        traces[CEILING] = trace_from_sim(bw.run_loop(guided))
        timings[CEILING] = time.perf_counter() - clock
    truth = TruthCache(world)
    scores = {name: bw.score(trace, truth, best.config, at_s=best.at_s) for name, trace in traces.items()}
    curves = {name: incumbent_path(trace, truth) for name, trace in traces.items()}
    regret_curves = {name: regret_path(trace, truth, best.config) for name, trace in traces.items()}
    refusals = sim.decision_kinds().count("refuse")
    notes = (*preset.notes, f"agentic: {refusals} power-gate refusals, history {list(sim.history)[-6:]}")
    return RunResult(
        bw.scenario.name, seed, scores, curves, regret_curves, truth(best.config, 0.0).value, timings, notes
    )


# --------------------------------------------------------------------------- report


def _fmt(mean: float, sd: float, digits: int = 3) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}g} ± {sd:.2g}"


def summarise(results: Sequence[RunResult]) -> dict[str, Any]:
    """Per scenario, per method: mean (and `_sd`) of each figure over seeds, `finals_over_slo`; ratios and targets."""
    out: dict[str, Any] = {}
    for name in dict.fromkeys(r.scenario for r in results):
        runs = [r for r in results if r.scenario == name]
        block: dict[str, Any] = {}
        for method in _methods(runs):
            figures: dict[str, float] = {}
            for fig in FIGURES:
                mean, sd = mean_sd([float(getattr(r.scores[method], fig)) for r in runs])
                figures[fig], figures[f"{fig}_sd"] = mean, sd
            figures["finals_over_slo"] = finals_over_slo([r.scores[method] for r in runs])
            block[method] = figures
        agentic, tpe, rand = (block[m]["cum_regret"] for m in ("agentic", "tpe", "random"))
        promotions = sum(r.scores["agentic"].promotions for r in runs)
        regressions = sum(r.scores["agentic"].regressions_shipped for r in runs)
        nulls = sum(r.scores["agentic"].null_arms for r in runs)
        nulls_promoted = sum(r.scores["agentic"].null_arms_promoted for r in runs)
        ratios = {
            "regret_agentic_over_tpe": agentic / tpe if tpe > 0 else math.nan,
            "regret_agentic_over_random": agentic / rand if rand > 0 else math.nan,
            "agentic_regression_rate": regressions / promotions if promotions else 0.0,
            # what alpha bounds: promotions among arms that were not better (reported, not a target)
            "agentic_null_arms": nulls,
            "agentic_null_arm_promotion_rate": nulls_promoted / nulls if nulls else 0.0,
        }
        block["ratios"] = ratios
        block["targets"] = {
            "oracle_share_ge_0.9_every_seed": all(r.scores["agentic"].oracle_share >= 0.9 for r in runs),
            "regret_le_tpe_over_1.5": ratios["regret_agentic_over_tpe"] <= 1 / 1.5,
            "regret_le_random_over_3": ratios["regret_agentic_over_random"] <= 1 / 3,
            "regression_rate_le_alpha": ratios["agentic_regression_rate"] <= ALPHA,
        }
        block["seeds"] = [r.seed for r in runs]
        out[name] = block
    return out


def _methods(runs: Sequence[RunResult]) -> tuple[str, ...]:
    """The methods every run in `runs` scored (the four, plus `ceiling` when it ran)."""
    return tuple(m for m in (*METHODS, CEILING) if all(m in r.scores for r in runs))


def print_table(summary: dict[str, Any], results: Sequence[RunResult]) -> None:
    """A human table per scenario (mean ± sd over seeds)."""
    for name, block in summary.items():
        runs = [r for r in results if r.scenario == name]
        print(f"\n== {name}: {len(runs)} seed(s); oracle best value {np.mean([r.best_value for r in runs]):.5g}")
        print(f"   preset: {'; '.join(runs[0].notes[:3])}")
        head = f"{'method':<9}" + "".join(f"{f:>22}" for f in FIGURES) + f"{'finals_over_slo':>17}"
        print(head)
        for method in _methods(runs):
            b = block[method]
            over = f"{b['finals_over_slo']}/{len(runs)}"
            print(f"{method:<9}" + "".join(f"{_fmt(b[f], b[f + '_sd']):>22}" for f in FIGURES) + f"{over:>17}")
        r = block["ratios"]
        print(
            f"   agentic regret / tpe {r['regret_agentic_over_tpe']:.3g} (target <= 0.667), / random "
            f"{r['regret_agentic_over_random']:.3g} (target <= 0.333); regression rate "
            f"{r['agentic_regression_rate']:.3g} (target <= {ALPHA}); promoted among {r['agentic_null_arms']} arms "
            f"not better than their incumbent {r['agentic_null_arm_promotion_rate']:.3g}; targets {block['targets']}"
        )
        for run in runs:
            secs = ", ".join(f"{k} {v:.0f}s" for k, v in run.seconds.items())
            shares = ", ".join(f"{m} {run.scores[m].oracle_share:.2f}" for m in _methods([run]))
            print(f"   seed {run.seed}: oracle share {shares}; {secs}; {run.notes[-1]}")


def plot(result: RunResult, path: Path) -> None:
    """Per method: the incumbent's true north star over simulated time, and cumulative regret."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, rax) = plt.subplots(1, 2, figsize=(13, 4.8))
    for method, style in zip(_methods([result]), ("-", "--", "-.", "-", ":"), strict=False):
        width = 2.2 if method == "agentic" else 1.4
        days, values = result.curves[method]
        ax.step(days, values, where="post", label=method, linestyle=style, linewidth=width)
        rdays, regrets = result.regret_curves[method]
        rax.plot(rdays, regrets, label=method, linestyle=style, linewidth=width)
    ax.axhline(result.best_value, color="black", linestyle=":", label="oracle best (day 0)")
    ax.set_xlabel("simulated days")
    ax.set_ylabel("true north star of the incumbent")
    ax.set_title(f"{result.scenario}, seed {result.seed}: incumbent value")
    ax.legend(loc="lower right")
    rax.set_xlabel("simulated days")
    rax.set_ylabel("cumulative regret (requests × value gap to the oracle)")
    rax.set_title("cumulative regret (lower is better)")
    rax.legend(loc="upper left")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _finite(value: Any) -> Any:
    """NaN/inf → None, recursively (the JSON line must be strict JSON)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, run every (scenario, seed) in a small process pool, report."""
    parser = argparse.ArgumentParser(prog="bench/tuning.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="worlds (and traffic seeds) per scenario")
    parser.add_argument("--days", type=float, default=None, help="simulated days of traffic per method")
    parser.add_argument("--scenario", action="append", default=None, help="a scenario name or JSON path (repeat)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, a short budget")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    parser.add_argument(
        "--ceiling", action="store_true", help="also run the loop with oracle-ranked proposals (an upper bound)"
    )
    parser.add_argument(
        "--unit",
        choices=("request", "user"),
        default="request",
        help="what every method's experiments randomise: requests (read paired) or users (with CUPED)",
    )
    parser.add_argument("--plot", type=Path, default=None, help="PNG path (default runs/tuning/<scenario>.png)")
    args = parser.parse_args(argv)
    scenarios = args.scenario or list(shipped_scenarios())
    seeds = 1 if args.quick else args.seeds
    days = args.days if args.days is not None else (3.0 if args.quick else DEFAULT_DAYS)
    if seeds < 1 or not days > 0.0:
        parser.error("--seeds must be >= 1 and --days > 0")
    jobs = [(s, seed) for s in scenarios for seed in range(seeds)]
    evaluations = QUICK_ORACLE_EVALUATIONS if args.quick else ORACLE_EVALUATIONS
    print(
        f"tuning bench: {len(scenarios)} scenario(s) × {seeds} seed(s), {days:g} simulated days each, "
        f"randomised per {args.unit}, {args.jobs} jobs"
    )
    clock = time.perf_counter()
    if args.jobs > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            results = list(
                pool.map(
                    run_one,
                    [s for s, _ in jobs],
                    [k for _, k in jobs],
                    [days] * len(jobs),
                    [evaluations] * len(jobs),
                    [args.ceiling] * len(jobs),
                    [args.unit] * len(jobs),
                )
            )
    else:
        results = [run_one(s, k, days, evaluations, args.ceiling, args.unit) for s, k in jobs]
    summary = summarise(results)
    print_table(summary, results)
    first = results[0]
    path = args.plot or ROOT / "runs" / "tuning" / f"{first.scenario}.png"
    plot(first, path)
    print(f"\nplot: {path}; wall time {time.perf_counter() - clock:.0f} s")
    print(json.dumps(_finite(summary), allow_nan=False))
    return 0


DEFAULT_DAYS: Final = 28.0

if __name__ == "__main__":
    sys.exit(main())
