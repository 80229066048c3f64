"""Statistics benchmark (issue 4, "Measure"): the sequential read's proofs at full size.

On synthetic traffic with user-level heterogeneity (`agents.stats.simulate`:
Beta click propensities, overdispersed requests per user, users arriving over
two weeks and hashed to 64 buckets), every experiment is read at every look
(every 3 hours, 112 looks) exactly as the Online agent would, including its
fixed-horizon final look at `--final-alpha` (the Online policy's default):

- A/A validity: `--aa-runs` A/A experiments; false promotion (and false
  decision) rates of the mSPRT on delta-method CTR, raw and CUPED, and of the
  naive per-impression z-test peeked at every look, on the same data;
- power: `--power-runs` experiments whose true lift is the MDE the power gate
  reported from that run's own A/A pilot; detection within the horizon
  (also with the gate planning on the pilot's point estimate of variance,
  i.e. without Browne's upper confidence limit, for comparison);
- early stop: `--early-runs` experiments at 3× the reported MDE; mean stop
  time against the horizon;
- Holm: A/A/A/A experiments, family-wise false decisions across 3 arms;
- SRM: false halts (p < 0.001) of the bucket test and of Pearson on request
  counts under a true 50/50 split.

Seeded and bounded (~1-2 min on two cores).  The last stdout line is one JSON
object with `aa_runs`, `aa_false_promotion_rate`, `naive_false_promotion_rate`,
`power_at_mde`, `early_stop_saving` and the details.

    .venv/bin/python bench/stats.py            # full size
    .venv/bin/python bench/stats.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from typing import Any

import numpy as np

from agents.online_policy import OnlinePolicy
from agents.stats.proofs import aa_holm_study, aa_study, lift_study, pilot_plan, wilson_interval
from agents.stats.ratio import ratio_estimate
from agents.stats.simulate import TrafficModel, simulate_experiment
from agents.stats.srm import srm_buckets, srm_counts

ALPHA = 0.05
POWER = 0.8
#: The Online agent's design: the share of α kept for the fixed-horizon final look (its policy default).
FINAL_ALPHA = OnlinePolicy(surface="bench").final_alpha


def _ci(successes: int, trials: int) -> list[float]:
    return [round(v, 4) for v in wilson_interval(successes, trials)]


def _srm(model: TrafficModel, runs: int, rng: np.random.Generator) -> dict[str, Any]:
    buckets = requests = 0
    for _ in range(runs):
        counts = simulate_experiment(model, [0.0] * model.arms, rng).requests[:, -1]
        buckets += srm_buckets(counts, model.shares).halt
        requests += srm_counts(counts.sum(axis=1).tolist(), model.shares).halt
    return {
        "srm_runs": runs,
        "srm_false_halt_rate_buckets": buckets / runs,
        "srm_false_halt_rate_requests": requests / runs,
    }


def _design_effect(model: TrafficModel, rng: np.random.Generator) -> float:
    """Delta-method variance of control CTR over the i.i.d.-impression binomial variance (user clustering)."""
    exp = simulate_experiment(model, [0.0] * model.arms, rng)
    est = ratio_estimate(exp.clicks[0, -1], exp.impressions[0, -1])
    return est.variance / (est.value * (1.0 - est.value) / est.denominator_total)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--seed", type=int, default=20260425)
    parser.add_argument(
        "--final-alpha",
        type=float,
        default=FINAL_ALPHA,
        help=f"alpha kept for the final look (default {FINAL_ALPHA:g}, the Online agent's; 0: always-valid only)",
    )
    parser.add_argument("--aa-runs", type=int, default=200)
    parser.add_argument("--power-runs", type=int, default=400)
    parser.add_argument("--early-runs", type=int, default=200)
    parser.add_argument("--holm-runs", type=int, default=200)
    parser.add_argument("--srm-runs", type=int, default=200)
    parser.add_argument("--users", type=int, default=40_000)
    parser.add_argument("--looks", type=int, default=112)
    args = parser.parse_args(argv)
    if args.quick:
        args.aa_runs, args.power_runs, args.early_runs, args.holm_runs, args.srm_runs = 40, 40, 20, 20, 20
        args.users, args.looks = 10_000, 28

    started = time.perf_counter()
    seeds = np.random.SeedSequence(args.seed).spawn(7)
    model = TrafficModel(users=args.users, looks=args.looks)
    print(f"model: {model}", flush=True)

    fa = args.final_alpha
    plan = pilot_plan(model, np.random.default_rng(seeds[0]), alpha=ALPHA, power=POWER, final_alpha=fa)
    print(f"gate: {plan.reason}; tau2={plan.tau2:.3g}, z*={plan.z_boundary:.3f}", flush=True)

    t = time.perf_counter()
    aa = aa_study(model, plan.tau2, args.aa_runs, np.random.default_rng(seeds[1]), alpha=ALPHA, final_alpha=fa)
    print(
        f"A/A x{aa.runs}: sequential promotions {aa.false_promotion_rate:.3f} (decisions "
        f"{aa.false_decisions / aa.runs:.3f}), CUPED {aa.cuped_false_promotions / aa.runs:.3f}, "
        f"naive {aa.naive_false_promotion_rate:.3f} (decisions {aa.naive_false_decisions / aa.runs:.3f}) "
        f"[{time.perf_counter() - t:.1f}s]",
        flush=True,
    )

    t = time.perf_counter()
    power = lift_study(
        model, args.power_runs, np.random.default_rng(seeds[2]), alpha=ALPHA, power=POWER, final_alpha=fa
    )
    print(
        f"power at reported MDE x{power.runs}: {power.detection_rate:.3f} (mean MDE {power.mean_mde:.4f} "
        f"± {power.mde_spread:.4f}, stop at {power.mean_stop_fraction:.2f} of horizon) "
        f"[{time.perf_counter() - t:.1f}s]",
        flush=True,
    )
    t = time.perf_counter()
    point = lift_study(
        model,
        args.power_runs // 2,
        np.random.default_rng(seeds[3]),
        alpha=ALPHA,
        power=POWER,
        variance_confidence=None,
        final_alpha=fa,
    )
    print(f"  planning on the point variance instead: {point.detection_rate:.3f} [{time.perf_counter() - t:.1f}s]")

    t = time.perf_counter()
    early_rng = np.random.default_rng(seeds[4])
    early = lift_study(model, args.early_runs, early_rng, mde_multiple=3.0, alpha=ALPHA, power=POWER, final_alpha=fa)
    print(
        f"early stop at 3x MDE x{early.runs}: mean stop {early.mean_stop_fraction:.3f} of horizon, "
        f"saving {early.saving:.3f}, detected {early.detection_rate:.3f} [{time.perf_counter() - t:.1f}s]",
        flush=True,
    )

    t = time.perf_counter()
    four = replace(model, shares=(0.25, 0.25, 0.25, 0.25))
    holm_plan = pilot_plan(four, np.random.default_rng(seeds[5]), alpha=ALPHA, power=POWER, final_alpha=fa)
    holm = aa_holm_study(
        four, holm_plan.tau2, args.holm_runs, np.random.default_rng(seeds[5]), alpha=ALPHA, final_alpha=fa
    )
    print(
        f"Holm A/A/A/A x{holm.runs}: family-wise false decisions {holm.family_false_decisions / holm.runs:.3f} "
        f"[{time.perf_counter() - t:.1f}s]",
        flush=True,
    )

    t = time.perf_counter()
    srm_rng = np.random.default_rng(seeds[6])
    srm = _srm(replace(model, looks=1), args.srm_runs, srm_rng)
    design = _design_effect(model, srm_rng)
    print(f"SRM: {srm}; CTR design effect {design:.2f} [{time.perf_counter() - t:.1f}s]", flush=True)

    summary: dict[str, Any] = {
        "aa_runs": aa.runs,
        "aa_false_promotion_rate": aa.false_promotion_rate,
        "naive_false_promotion_rate": aa.naive_false_promotion_rate,
        "power_at_mde": power.detection_rate,
        "early_stop_saving": round(early.saving, 4),
        "aa_false_promotion_ci95": _ci(aa.false_promotions, aa.runs),
        "aa_false_decision_rate": aa.false_decisions / aa.runs,
        "cuped_aa_false_promotion_rate": aa.cuped_false_promotions / aa.runs,
        "cuped_aa_false_decision_rate": aa.cuped_false_decisions / aa.runs,
        "cuped_variance_ratio": round(aa.cuped_variance_ratio, 4),
        "naive_false_promotion_ci95": _ci(aa.naive_false_promotions, aa.runs),
        "naive_false_decision_rate": aa.naive_false_decisions / aa.runs,
        "power_runs": power.runs,
        "power_ci95": _ci(power.detections, power.runs),
        "power_at_mde_point_variance": point.detection_rate,
        "mean_mde_relative": round(power.mean_mde, 5),
        "mde_spread": round(power.mde_spread, 5),
        "early_stop_runs": early.runs,
        "early_stop_mean_fraction": round(early.mean_stop_fraction, 4),
        "early_stop_detection_rate": early.detection_rate,
        "holm_runs": holm.runs,
        "holm_treatments": holm.treatments,
        "holm_family_false_decision_rate": holm.family_false_decisions / holm.runs,
        **srm,
        "ctr_design_effect": round(design, 3),
        "alpha": ALPHA,
        "final_alpha": fa,
        "users": model.users,
        "buckets": model.buckets,
        "looks": model.looks,
        "horizon_days": model.horizon_seconds / 86_400.0,
        "seed": args.seed,
        "quick": args.quick,
        "python": platform.python_version(),
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    summary["targets_met"] = (
        summary["aa_false_promotion_rate"] <= 0.05
        and summary["naive_false_promotion_rate"] > 0.05
        and summary["power_at_mde"] >= 0.8
        and summary["early_stop_saving"] >= 0.3
    )
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
