"""Pure statistics core of the Online agent: ratio metrics over user buckets and sound sequential reads.

Modules (numpy and math only; no I/O):

- `ratio`: ratio metrics per arm with delta-method variance over buckets; difference and lift.
- `cuped`: CUPED variance reduction for ratio metrics with pre-period bucket covariates.
- `sequential`: the mixture SPRT — always-valid p-values and confidence sequences.
- `srm`: sample-ratio mismatch checks (Pearson on unit counts, cluster-robust over buckets).
- `multiple`: Holm's step-down correction across arms.
- `power`: power gating — the MDE the traffic resolves, arms it affords, refusals with reasons.
- `simulate`, `proofs`: synthetic heterogeneous traffic and the A/A, power and early-stop studies.
- `distributions`: normal, chi-square and F distribution functions (no scipy).
- `errors`: `StatsError`, the package's one root error.
"""

from __future__ import annotations

from agents.stats.cuped import CupedArm, CupedFit, CupedPaths, cuped_arrays, cuped_ratio
from agents.stats.errors import StatsError
from agents.stats.multiple import HolmResult, holm
from agents.stats.power import PowerPlan, max_treatments_for, plan_experiment, unit_variance
from agents.stats.ratio import (
    Comparison,
    RatioEstimate,
    compare,
    comparison,
    linearize,
    ratio_arrays,
    ratio_estimate,
    ratio_from_sums,
)
from agents.stats.sequential import (
    SequentialState,
    always_valid_p_path,
    confidence_radius,
    first_crossing,
    log_likelihood_ratio,
    mixing_variance,
    optimal_mixing_ratio,
    terminal_boundary,
)
from agents.stats.srm import HALT_P, SrmResult, srm_buckets, srm_counts

__all__ = [
    "HALT_P",
    "Comparison",
    "CupedArm",
    "CupedFit",
    "CupedPaths",
    "HolmResult",
    "PowerPlan",
    "RatioEstimate",
    "SequentialState",
    "SrmResult",
    "StatsError",
    "always_valid_p_path",
    "compare",
    "comparison",
    "confidence_radius",
    "cuped_arrays",
    "cuped_ratio",
    "first_crossing",
    "holm",
    "linearize",
    "log_likelihood_ratio",
    "max_treatments_for",
    "mixing_variance",
    "optimal_mixing_ratio",
    "plan_experiment",
    "ratio_arrays",
    "ratio_estimate",
    "ratio_from_sums",
    "srm_buckets",
    "srm_counts",
    "terminal_boundary",
    "unit_variance",
]
