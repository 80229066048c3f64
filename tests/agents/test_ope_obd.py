"""The off-policy estimators on real logs: the Open Bandit Dataset (ZOZOTOWN, "men" campaign sample).

The uniform-random policy's click rate is estimated from the Bernoulli Thompson
Sampling (`bts`) log, whose logged propensities are the policy's real action
probabilities, and checked against the on-policy mean click of the `random`
log (which that very policy logged on concurrent traffic).  Under uniform
random play each of the 34 items has probability 1/34 at each of the 3
positions, so the target probability of every logged row is 1/34 and the
importance weight is (1/34) / propensity_score.

Heavy weights, handled in the open: the bts propensities go down to 0.000165,
so weights reach ~178.  We report IPS and SNIPS, the weights' ESS, maximum and
mean, and clipped IPS at several caps as a sensitivity analysis.  SNIPS is the
primary estimate: the sample's mean weight is not exactly 1 (its expectation),
and SNIPS removes that sample-level scale error (and any common scale error in
the propensities, which OBD computed by Monte Carlo simulation of the bts
policy) and stays inside [0, 1]; at n = 10,000 its O(1/n) bias is negligible.

The rows carry no user id (the user features are hashed cohort features, not
identities), so the primary variance treats rows as independent; a
sensitivity read clusters on the user-feature tuple, a conservative grouping.

Run with `-s` to see the figures.  The sample comes from the `obd_dir`
fixture: `shared/data/obd` beside the clone, else the identical sample fetched
from the `obp` wheel on the package index (checksummed).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from agents import ope

ITEMS = 34
CAPS = (5.0, 10.0, 20.0, 50.0)

@dataclass(frozen=True, slots=True)
class Log:
    click: np.ndarray
    propensity: np.ndarray
    position: np.ndarray
    item: np.ndarray
    cohort: np.ndarray  # the hashed user-feature tuple (not a user id)


def _read(path: Path) -> Log:
    clicks: list[float] = []
    propensities: list[float] = []
    positions: list[int] = []
    items: list[int] = []
    cohorts: list[str] = []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            clicks.append(float(row["click"]))
            propensities.append(float(row["propensity_score"]))
            positions.append(int(row["position"]))
            items.append(int(row["item_id"]))
            cohorts.append("|".join(row[f"user_feature_{k}"] for k in range(4)))
    return Log(
        np.array(clicks), np.array(propensities), np.array(positions), np.array(items), np.array(cohorts, dtype=object)
    )


@pytest.fixture(scope="module")
def bts(obd_dir: Path) -> Log:
    return _read(obd_dir / "bts" / "men.csv")


@pytest.fixture(scope="module")
def random_log(obd_dir: Path) -> Log:
    return _read(obd_dir / "random" / "men.csv")


def _fmt(est: ope.OffPolicyEstimate) -> str:
    half = est.upper - est.value
    return f"{est.value:.5f} ± {half:.5f} (95% CI [{est.lower:.5f}, {est.upper:.5f}], se {est.std_error:.5f})"


def test_logs_are_what_the_check_assumes(bts: Log, random_log: Log) -> None:
    for log in (bts, random_log):
        assert log.click.size == 10_000
        assert set(np.unique(log.click)) <= {0.0, 1.0}
        assert set(np.unique(log.position)) == {1, 2, 3}
        assert set(np.unique(log.item)) == set(range(ITEMS))
    # The random log really is uniform over the 34 items: its propensities are all 1/34.
    assert np.allclose(random_log.propensity, 1.0 / ITEMS)
    # The bts propensities are heavy-tailed: this is what the weight handling below is about.
    assert 0.0 < bts.propensity.min() < 0.001 and bts.propensity.max() <= 1.0


def test_uniform_random_click_rate_from_bts_agrees_with_random_log(bts: Log, random_log: Log) -> None:
    target = np.full(bts.click.size, 1.0 / ITEMS)
    primary = ope.snips(bts.click, target, bts.propensity)
    plain = ope.ips(bts.click, target, bts.propensity)
    reference = ope.on_policy(random_log.click)
    weights = primary.weights

    print("\nOpen Bandit Dataset (men): uniform-random policy's click rate")
    print(f"  random log, on-policy mean click: {_fmt(reference)}  [n={reference.rows}]")
    print(f"  bts log, SNIPS (primary):        {_fmt(primary)}")
    print(f"  bts log, IPS:                    {_fmt(plain)}")
    print(
        f"  weights (1/34)/propensity: max {weights.max_weight:.1f}, mean {weights.mean_weight:.4f} "
        f"(se {weights.mean_weight_se:.4f}), ESS {weights.ess:.1f} of {weights.rows} ({weights.ess_share:.1%})"
    )
    print(f"  clicked rows' largest weight: {float((target / bts.propensity)[bts.click == 1].max()):.2f}")
    print(f"  {primary.reason}")
    for est in (primary, plain):
        agree = ope.agreement(est, reference)
        print(
            f"  {est.estimator}: difference {agree.difference:+.5f}, 1.96·combined se {agree.tolerance:.5f}, "
            f"z {agree.z_score:+.2f} -> agrees: {agree.agrees}"
        )
        assert agree.agrees, f"{est.estimator} disagrees with the random log: {agree}"
    assert primary.reliable, primary.reason
    assert weights.max_weight > 100.0  # heavy weights are present; the estimate holds with them, not without them

    # Sensitivity: capping the weights.  The worst-case bias bound assumes a click on every clipped row.
    for cap in CAPS:
        clipped = ope.clipped_ips(bts.click, target, bts.propensity, cap)
        clip = clipped.clipping
        assert clip is not None
        agree = ope.agreement(clipped, reference)
        print(
            f"  clipped IPS cap {cap:g}: {clipped.value:.5f} [{clipped.lower:.5f}, {clipped.upper:.5f}], "
            f"{clip.clipped_rows} rows clipped, {clip.clipped_mass_share:.1%} of weight mass removed, "
            f"clipped ESS {clip.clipped_ess:.0f}, observed shift {clip.observed_shift:.5f}, "
            f"worst-case bias bound {clip.bias_bound:.4f} -> agrees: {agree.agrees}"
        )
        assert clip.observed_shift <= clip.bias_bound
        assert clip.clipped_ess >= weights.ess

    # Sensitivity: variance clustered on the user-feature cohort (rows of one cohort may be correlated).
    cohort_primary = ope.snips(bts.click, target, bts.propensity, cluster_ids=bts.cohort)
    cohort_reference = ope.on_policy(random_log.click, cluster_ids=random_log.cohort)
    cohort_agree = ope.agreement(cohort_primary, cohort_reference)
    print(
        f"  cohort-clustered: SNIPS se {cohort_primary.std_error:.5f} over {cohort_primary.clusters} cohorts, "
        f"random se {cohort_reference.std_error:.5f} over {cohort_reference.clusters} cohorts, "
        f"z {cohort_agree.z_score:+.2f} -> agrees: {cohort_agree.agrees}"
    )
    assert cohort_agree.agrees


def test_the_check_can_fail_unweighted_bts_mean_disagrees(bts: Log, random_log: Log) -> None:
    """Negative control: ignoring the propensities (bts's own mean click) is rejected by the same check.

    The margin is thin (z ≈ 2.15 on these 10,000-row samples): the check has
    limited power, so agreement above is necessary evidence, not proof.
    """
    naive = ope.on_policy(bts.click)
    agree = ope.agreement(naive, ope.on_policy(random_log.click))
    print(f"\n  bts unweighted mean click {naive.value:.5f}: z {agree.z_score:+.2f} -> agrees: {agree.agrees}")
    assert not agree.agrees
