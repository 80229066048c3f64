"""Exploration replay records → the Critic's off-policy estimate of candidate minus incumbent.

The sidecar (`serving_sidecar.replay`) samples requests the incumbent
served with exploration on, and records per shown slot the logged
propensity μ(a_j | a_<j) and each registered candidate's probability
π(a_j | a_<j) of the same item given the same earlier slots.  Here each
(request, slot) becomes one row with

    reward   = 1 if the slot was clicked, else 0
    target   = Π_{i<=j} π(a_i | a_<i)     (the candidate shows this prefix)
    logging  = Π_{i<=j} μ(a_i | a_<i)     (the incumbent showed it)

so w = target / logging is the prefix-product weight of cascade-style slate
estimators: unbiased for the candidate's clicks per slot when a click at
slot j depends only on the items at slots <= j.  The incumbent is the logging
policy itself (its weight is 1 on every row), so `agents.ope.difference`
gives candidate minus incumbent with the paired variance, clustered by user:
rows of one user are not independent.

Who calls it: `agents.replay_feed.ReplayFeed` (builds `ReplayRows` per
candidate version) and the loop's off-policy screen (`agents.loop_screen`).
Pure numpy; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from agents.ope import OffPolicyDifference, difference
from agents.ope_rows import MIN_ROWS, FloatArray, IntArray
from agents.ope_weights import DEFAULT_RULE, ReliabilityRule
from schemas.replay import ReplayRecord


@dataclass(frozen=True, slots=True)
class ReplayRows:
    """One candidate's (request, slot) rows on one logging config: columns of equal length, and the request count."""

    rewards: FloatArray
    target: FloatArray
    logging: FloatArray
    clusters: IntArray
    requests: int

    @property
    def rows(self) -> int:
        """Number of (request, slot) rows."""
        return int(self.rewards.size)


def replay_rows(records: Iterable[ReplayRecord], candidate_version: int, logging_version: int) -> ReplayRows:
    """The rows of `candidate_version` from the records the `logging_version` incumbent logged (see the module doc).

    Records of another logging config, or without this candidate, are skipped:
    an estimate compares the candidate with the incumbent that logged its rows.
    """
    rewards: list[float] = []
    target: list[float] = []
    logging: list[float] = []
    clusters: list[int] = []
    users: dict[str, int] = {}
    requests = 0
    for record in records:
        if record.config_version != logging_version:
            continue
        probs = next((t.probabilities for t in record.targets if t.config_version == candidate_version), None)
        if probs is None:
            continue
        requests += 1
        user = users.setdefault(record.user_id, len(users))
        pi = mu = 1.0
        for slot, p in zip(record.slots, probs, strict=True):
            pi *= p
            mu *= slot.propensity
            rewards.append(1.0 if slot.clicked else 0.0)
            target.append(pi)
            logging.append(mu)
            clusters.append(user)
    return ReplayRows(
        np.asarray(rewards, dtype=np.float64),
        np.asarray(target, dtype=np.float64),
        np.asarray(logging, dtype=np.float64),
        np.asarray(clusters, dtype=np.intp),
        requests,
    )


def harm_estimate(
    rows: ReplayRows, *, level: float = 0.95, rule: ReliabilityRule = DEFAULT_RULE
) -> OffPolicyDifference | None:
    """SNIPS candidate minus incumbent (clicks per shown slot) on `rows`; None when there are too few rows.

    The reliability rule (effective sample size, mean weight) decides whether
    the Critic may treat the estimate as evidence; heavy prefix weights make it
    unreliable rather than decisive.
    """
    mass = float(rows.target.sum())
    if rows.rows < MIN_ROWS or not (math.isfinite(mass) and mass > 0.0):
        return None
    return difference(
        rows.rewards,
        rows.target,
        rows.logging,
        rows.logging,
        estimator="snips",
        cluster_ids=rows.clusters,
        level=level,
        rule=rule,
    )
