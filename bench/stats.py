"""Statistics benchmark (issue 4, "Measure"): the proofs at full size, run through the Online agent.

On synthetic traffic with user-level heterogeneity (`agents.stats.simulate`:
Beta click propensities, overdispersed requests per user, users arriving over
two weeks and hashed to 64 buckets), every experiment is planned by
`OnlineAgent.plan` (its power gate, on a fresh A/A pilot of the same
traffic) and read by `OnlineAgent.step` at every look (every 3 hours, 112
looks) until the agent ends it — Holm, futility, minimum-traffic gating,
guardrails and the final look at `--final-alpha` (the policy's default)
included (`agents.online_proofs`; one stage at 50%, `proof_policy`):

- A/A validity: `--aa-runs` A/A experiments; the agent's false promotion
  (and false decision: promote or stop as a loser) rate, without and with
  the pre-period (CUPED), and the naive per-impression z-test peeked at
  every look on the same data;
- power: `--power-runs` experiments whose true lift is the MDE the agent's
  power gate reported in its `allocate` decision; detection = the agent
  promoting that arm within the horizon (also with the gate planning on the
  pilot's point estimate of variance, i.e. without Browne's upper
  confidence limit, for comparison);
- ramped power: `--ramp-runs` experiments under the default ramp
  1 → 5 → 25 → 50% (a day's dwell per stage), the traffic following the
  agent's allocation look by look (`run_live`);
- early stop: `--early-runs` experiments at 3× the reported MDE; the agent's
  mean ending time against the horizon;
- Holm: A/A/A/A experiments read by the agent with 3 treatment arms;
  family-wise false promotions and decisions;
- cross-check: the vectorised reader of `agents.stats.proofs` (the agent's
  read re-implemented over whole paths) on its own A/A runs, with the CUPED
  variance ratio (`reader_*` keys);
- SRM: false halts (p < 0.001) of the bucket test and of Pearson on request
  counts under a true 50/50 split.

Seeded and bounded (~1.5-2 min on two cores).  The last stdout line is one
JSON object with `aa_runs`, `aa_false_promotion_rate`,
`naive_false_promotion_rate`, `power_at_mde`, `early_stop_saving` (all from
the agent) and the details.

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

from agents.online import OnlineAgent, OnlinePolicy
from agents.online_proofs import (
    PROOF_TARGET_MDE,
    agent_aa_study,
    agent_lift_study,
    launch,
    proof_policy,
    ramped_policy,
)
from agents.stats.proofs import aa_study, pilot_plan, wilson_interval
from agents.stats.ratio import ratio_estimate
from agents.stats.simulate import TrafficModel, simulate_experiment
from agents.stats.srm import srm_buckets, srm_counts

ALPHA = 0.05
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
    """Run every study at `argv`'s sizes and print one JSON summary as the last line (`make bench` calls it)."""
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
    parser.add_argument("--ramp-runs", type=int, default=200)
    parser.add_argument("--early-runs", type=int, default=200)
    parser.add_argument("--holm-runs", type=int, default=200)
    parser.add_argument("--srm-runs", type=int, default=200)
    parser.add_argument("--users", type=int, default=40_000)
    parser.add_argument("--looks", type=int, default=112)
    args = parser.parse_args(argv)
    if args.quick:
        args.aa_runs, args.power_runs, args.ramp_runs, args.early_runs = 40, 40, 20, 20
        args.holm_runs, args.srm_runs, args.users, args.looks = 20, 20, 10_000, 28

    started = time.perf_counter()
    seeds = np.random.SeedSequence(args.seed).spawn(9)
    model = TrafficModel(users=args.users, looks=args.looks)
    print(f"model: {model}", flush=True)

    fa = args.final_alpha
    base = OnlinePolicy(surface="bench", target_mde=PROOF_TARGET_MDE, final_alpha=fa)
    policy = proof_policy(model, base)
    gate = launch(OnlineAgent(policy), model, np.random.default_rng(seeds[0])).state.plan
    print(f"agent's gate: {gate.power_figures.reason}; tau2={gate.tau2:.3g}", flush=True)

    t = time.perf_counter()
    aa = agent_aa_study(policy, model, args.aa_runs, np.random.default_rng(seeds[1]), cuped=True)
    assert aa.cuped_promotions is not None and aa.cuped_decisions is not None
    print(
        f"agent A/A x{aa.runs}: promotions {aa.false_promotion_rate:.3f} (decisions {aa.decisions / aa.runs:.3f}, "
        f"rollbacks {aa.rollbacks / aa.runs:.3f}), with CUPED {aa.cuped_promotions / aa.runs:.3f}; "
        f"naive on the same data {aa.naive_false_promotion_rate:.3f} (decisions {aa.naive_decisions / aa.runs:.3f}) "
        f"[{time.perf_counter() - t:.1f}s]",
        flush=True,
    )

    t = time.perf_counter()
    power = agent_lift_study(policy, model, args.power_runs, np.random.default_rng(seeds[2]))
    print(
        f"agent power at its reported MDE x{power.runs}: {power.detection_rate:.3f} (mean MDE {power.mean_mde:.4f} "
        f"± {power.mde_spread:.4f}, ended at {power.mean_stop_fraction:.2f} of horizon, "
        f"{power.stopped_early} stopped early) [{time.perf_counter() - t:.1f}s]",
        flush=True,
    )
    t = time.perf_counter()
    point = agent_lift_study(
        policy, model, max(1, args.power_runs // 2), np.random.default_rng(seeds[3]), point_variance=True
    )
    print(f"  gate on the point variance instead: {point.detection_rate:.3f} [{time.perf_counter() - t:.1f}s]")
    t = time.perf_counter()
    ramped = agent_lift_study(
        ramped_policy(model, base), model, args.ramp_runs, np.random.default_rng(seeds[7]), live=True
    )
    print(
        f"  ramped 1-5-25-50% x{ramped.runs}: {ramped.detection_rate:.3f} (mean MDE {ramped.mean_mde:.4f}, "
        f"{ramped.stopped_early} stopped early) [{time.perf_counter() - t:.1f}s]",
        flush=True,
    )

    t = time.perf_counter()
    early = agent_lift_study(policy, model, args.early_runs, np.random.default_rng(seeds[4]), mde_multiple=3.0)
    print(
        f"agent early stop at 3x MDE x{early.runs}: mean end {early.mean_stop_fraction:.3f} of horizon, "
        f"saving {early.saving:.3f}, detected {early.detection_rate:.3f} [{time.perf_counter() - t:.1f}s]",
        flush=True,
    )

    t = time.perf_counter()
    four = replace(model, shares=(0.25, 0.25, 0.25, 0.25))
    holm = agent_aa_study(proof_policy(four, base), four, args.holm_runs, np.random.default_rng(seeds[5]))
    print(
        f"agent Holm A/A/A/A x{holm.runs}: family-wise false promotions {holm.false_promotion_rate:.3f}, "
        f"decisions {holm.decisions / holm.runs:.3f} [{time.perf_counter() - t:.1f}s]",
        flush=True,
    )

    t = time.perf_counter()
    reader_rng = np.random.default_rng(seeds[8])
    reader_plan = pilot_plan(model, reader_rng, alpha=ALPHA, final_alpha=fa)
    reader = aa_study(model, reader_plan.tau2, args.aa_runs, reader_rng, alpha=ALPHA, final_alpha=fa)
    print(
        f"cross-check, vectorised reader A/A x{reader.runs}: promotions {reader.false_promotion_rate:.3f}, "
        f"CUPED {reader.cuped_false_promotions / reader.runs:.3f} (variance ratio {reader.cuped_variance_ratio:.3f}) "
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
        "proof_path": "OnlineAgent.plan + OnlineAgent.step (agents.online_proofs)",
        "aa_false_promotion_ci95": _ci(aa.promotions, aa.runs),
        "aa_false_decision_rate": aa.decisions / aa.runs,
        "aa_rollback_rate": aa.rollbacks / aa.runs,
        "aa_mean_end_fraction": round(aa.mean_stop_fraction, 4),
        "cuped_aa_false_promotion_rate": aa.cuped_promotions / aa.runs,
        "cuped_aa_false_decision_rate": aa.cuped_decisions / aa.runs,
        "naive_false_promotion_ci95": _ci(aa.naive_promotions, aa.runs),
        "naive_false_decision_rate": aa.naive_decisions / aa.runs,
        "power_runs": power.runs,
        "power_ci95": _ci(power.detections, power.runs),
        "power_stopped_early_rate": power.stopped_early / power.runs,
        "power_at_mde_point_variance": point.detection_rate,
        "mean_mde_relative": round(power.mean_mde, 5),
        "mde_spread": round(power.mde_spread, 5),
        "power_at_mde_ramped": ramped.detection_rate,
        "ramped_runs": ramped.runs,
        "ramped_power_ci95": _ci(ramped.detections, ramped.runs),
        "ramped_mean_mde_relative": round(ramped.mean_mde, 5),
        "ramped_mean_end_fraction": round(ramped.mean_stop_fraction, 4),
        "early_stop_runs": early.runs,
        "early_stop_mean_fraction": round(early.mean_stop_fraction, 4),
        "early_stop_detection_rate": early.detection_rate,
        "holm_runs": holm.runs,
        "holm_treatments": four.arms - 1,
        "holm_family_false_promotion_rate": holm.false_promotion_rate,
        "holm_family_false_decision_rate": holm.decisions / holm.runs,
        "reader_aa_false_promotion_rate": reader.false_promotion_rate,
        "reader_aa_false_decision_rate": reader.false_decisions / reader.runs,
        "reader_cuped_aa_false_promotion_rate": reader.cuped_false_promotions / reader.runs,
        "reader_naive_false_promotion_rate": reader.naive_false_promotion_rate,
        "cuped_variance_ratio": round(reader.cuped_variance_ratio, 4),
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
