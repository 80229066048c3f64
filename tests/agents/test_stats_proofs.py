"""The issue's statistical proofs on synthetic heterogeneous traffic (test-sized; bench/stats.py runs them full size).

- A/A validity: 200 A/A experiments read at every one of 56 looks; the mSPRT's
  false promotion rate must be <= 5% (the issue's criterion, on the point
  estimate; 200 runs give a Monte Carlo standard error of ~1.5 points at 5%,
  so the assertion message prints the Wilson 95% interval).  The naive
  per-impression test on the same data must exceed 5% by more than its own
  Monte Carlo error (Wilson lower bound > 5%): the check can fail.
- Power: a true lift equal to the MDE the power gate reported (each run gated
  on its own fresh pilot) is detected within the horizon in >= 80% of runs.
- Early stop: a true lift of 3× the MDE stops on average >= 30% sooner than
  the horizon.

Each is read as the Online agent reads: the always-valid test at
α − final_alpha plus the fixed-horizon final look at the policy's
`final_alpha` (`FINAL`).
"""

from __future__ import annotations

import numpy as np

from agents.online_policy import OnlinePolicy
from agents.stats.proofs import (
    aa_study,
    lift_study,
    pilot_plan,
    read_holm,
    read_naive,
    read_sequential,
    wilson_interval,
)
from agents.stats.simulate import TrafficModel, simulate_experiment

MODEL = TrafficModel()  # 20k users over 14 days, 64 buckets, 56 looks (every 6 h), 5% CTR, Beta(1, 19) users
FINAL = OnlinePolicy(surface="home").final_alpha


def test_aa_false_promotions_within_alpha_and_naive_test_exceeds_it() -> None:
    rng = np.random.default_rng(20260101)
    plan = pilot_plan(MODEL, rng, final_alpha=FINAL)
    study = aa_study(MODEL, plan.tau2, 200, rng, final_alpha=FINAL)
    seq_ci = wilson_interval(study.false_promotions, study.runs)
    naive_ci = wilson_interval(study.naive_false_promotions, study.runs)
    detail = (
        f"sequential {study.false_promotion_rate:.3f} {seq_ci}, naive {study.naive_false_promotion_rate:.3f} {naive_ci}"
    )
    assert study.false_promotion_rate <= 0.05, detail
    assert study.false_decisions / study.runs <= 0.05, detail  # either direction, the stronger claim
    assert study.cuped_false_promotions / study.runs <= 0.05, detail
    assert study.cuped_false_decisions / study.runs <= 0.05, detail
    assert naive_ci[0] > 0.05, detail
    assert study.cuped_variance_ratio < 0.9  # CUPED helped on the same runs


def test_power_at_the_reported_mde() -> None:
    study = lift_study(MODEL, 200, np.random.default_rng(20260102), final_alpha=FINAL)
    low, high = wilson_interval(study.detections, study.runs)
    detail = f"power {study.detection_rate:.3f} ({low:.3f}, {high:.3f}), mde {study.mean_mde:.4f}"
    assert study.detection_rate >= 0.8, detail
    assert study.wrong_sign == 0


def test_early_stop_at_three_times_the_mde() -> None:
    study = lift_study(MODEL, 60, np.random.default_rng(20260103), mde_multiple=3.0, final_alpha=FINAL)
    assert study.detection_rate >= 0.95
    assert study.saving >= 0.3, f"saving {study.saving:.3f}"


def test_reads_of_one_experiment() -> None:
    rng = np.random.default_rng(20260104)
    exp = simulate_experiment(MODEL, [0.0, 0.5], rng)
    plan = pilot_plan(MODEL, rng)
    seq, naive = read_sequential(exp, plan.tau2), read_naive(exp)
    assert seq.verdict == 1 and naive.verdict == 1
    assert 0 < seq.stop_fraction < 1 and seq.stop_look >= 1 and seq.final_p <= 0.05
    cuped = read_sequential(exp, plan.tau2, cuped=True)
    assert cuped.verdict == 1 and cuped.stop_look <= seq.stop_look + 2 and cuped.variance_ratio < 1
    many = TrafficModel(shares=(0.25, 0.25, 0.25, 0.25))
    verdicts = read_holm(simulate_experiment(many, [0.0, 0.0, 0.6, 0.0], rng), pilot_plan(many, rng).tau2)
    assert verdicts[1] == 1 and verdicts[0] == 0 and verdicts[2] == 0


def test_final_look_only_adds_verdicts_at_the_horizon() -> None:
    # The same experiments read with and without the final look: every verdict the look changes was open
    # at the horizon under the always-valid test at alpha - FINAL, and becomes a verdict at the last look.
    rng = np.random.default_rng(20260105)
    plan = pilot_plan(MODEL, rng, final_alpha=FINAL)
    changed = 0
    for _ in range(40):
        exp = simulate_experiment(MODEL, [0.0, plan.mde_relative], rng)
        seq = read_sequential(exp, plan.tau2, 0.05 - FINAL)
        both = read_sequential(exp, plan.tau2, 0.05, final_alpha=FINAL)
        if (seq.verdict, seq.stop_look) != (both.verdict, both.stop_look):
            changed += 1
            assert seq.verdict == 0 and both.stop_fraction == 1.0 and both.verdict != 0
    assert changed > 0
