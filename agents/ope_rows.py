"""The plumbing every off-policy estimator shares: per-row input checks, cluster ids, the variance of a mean.

What lives here: the array aliases (`FloatArray`, `IntArray`), `MIN_ROWS`, the
validation of the per-row vectors (`_vector`, `_target` for target
probabilities in [0, 1], `_propensities` for logging propensities in (0, 1],
`_groups` for cluster ids), `_mean_variance` (the i.i.d. or cluster-robust
variance of a mean of influence values, described under "Variance" in
`agents.ope`); the interval's z is `agents.stats.distributions.two_sided_z`.

Who calls it: `agents.ope_weights`, `agents.ope_estimators` and
`agents.ope_harm`, so that every estimator refuses the same inputs with the
same `agents.stats.StatsError` and computes its interval the same way.  Pure
numpy; no I/O.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from agents.stats.errors import StatsError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

MIN_ROWS: Final = 2
_HINT_ROWS: Final = (
    "pass one value per logged row: reward, target probability and logging propensity of the logged action"
)
_HINT_PROPENSITY: Final = "log the probability with which the logging policy chose the logged action (0 < p <= 1)"


def _vector(name: str, values: npt.ArrayLike, rows: int | None) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        msg = f"{name}: must be 1-D (one value per logged row), got shape {array.shape}"
        raise StatsError(msg, _HINT_ROWS)
    if rows is None and array.size < MIN_ROWS:
        msg = f"{name}: needs at least {MIN_ROWS} logged rows for a variance, got {array.size}"
        raise StatsError(msg, _HINT_ROWS)
    if rows is not None and array.size != rows:
        msg = f"{name}: must have one value per logged row ({rows}), got {array.size}"
        raise StatsError(msg, _HINT_ROWS)
    if not np.isfinite(array).all():
        msg = f"{name}: must be finite (no NaN or inf)"
        raise StatsError(msg, _HINT_ROWS)
    return array


def _target(name: str, values: npt.ArrayLike, rows: int) -> FloatArray:
    target = _vector(name, values, rows)
    if ((target < 0.0) | (target > 1.0)).any():
        msg = f"{name}: target probabilities must lie in [0, 1], got range [{target.min():g}, {target.max():g}]"
        raise StatsError(msg, "pass the target policy's probability of each row's logged action")
    return target


def _propensities(values: npt.ArrayLike, rows: int) -> FloatArray:
    propensity = _vector("logging_propensities", values, rows)
    if ((propensity <= 0.0) | (propensity > 1.0)).any():
        msg = (
            "logging_propensities: must lie in (0, 1] (a logged action had a positive chance), "
            f"got range [{propensity.min():g}, {propensity.max():g}]"
        )
        raise StatsError(msg, _HINT_PROPENSITY)
    return propensity


def _groups(cluster_ids: npt.ArrayLike | None, rows: int) -> IntArray | None:
    if cluster_ids is None:
        return None
    ids = np.asarray(cluster_ids)
    if ids.ndim != 1 or ids.size != rows:
        msg = f"cluster_ids: must be 1-D with one id per logged row ({rows}), got shape {ids.shape}"
        raise StatsError(msg, "pass the user id (or user bucket) of every row")
    _, inverse = np.unique(ids, return_inverse=True)
    groups: IntArray = inverse.astype(np.intp).reshape(-1)
    if int(groups.max()) + 1 < MIN_ROWS:
        msg = f"cluster_ids: needs at least {MIN_ROWS} distinct clusters for a variance, got 1"
        raise StatsError(msg, "pass user ids; a single cluster has no between-cluster variance")
    return groups


def _mean_variance(values: FloatArray, groups: IntArray | None) -> tuple[float, int]:
    """Variance of the mean of `values` (i.i.d. rows, or cluster-robust over `groups`) and the number of units."""
    n = values.size
    centred = values - values.mean()
    if groups is None:
        return float(centred @ centred) / (n * (n - 1)), n
    sums = np.bincount(groups, weights=centred)
    g = sums.size
    return float(sums @ sums) * g / ((g - 1) * n * n), g
