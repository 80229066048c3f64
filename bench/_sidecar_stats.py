"""Small numeric helpers of the sidecar benchmark: percentiles and the Zipf user population.

`bench/sidecar.py`'s phases (`bench/_sidecar_request_path.py` times requests
over a Zipf population, `bench/_sidecar_storm_phases.py` drives its ranker loop
with one) and its report (`bench/_sidecar_report.py`) share these, so every
percentile in the run is computed one way (numpy's linear interpolation) and
every phase draws its users from the same law.  Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def pct(values: Sequence[float] | npt.NDArray[np.float64] | npt.NDArray[np.int64], q: float) -> float:
    """The q-th percentile (0..100) of `values` (numpy's linear interpolation)."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def zipf_users(n_requests: int, n_users: int, rng: np.random.Generator, prefix: str = "user") -> list[str]:
    """`n_requests` user ids drawn from a Zipf(1) law over `n_users` users; a fresh str object per request."""
    weights = 1.0 / np.arange(1, n_users + 1, dtype=np.float64)
    ranks = rng.choice(n_users, size=n_requests, p=weights / weights.sum())
    ids = rng.permutation(n_users)[ranks]  # popularity unrelated to the id
    return [f"{prefix}-{int(i):06d}" for i in ids]


def first_seen_fraction(users: Sequence[str]) -> float:
    """Share of requests whose user had not appeared before in the sequence (bucket-cache misses)."""
    return len(set(users)) / max(len(users), 1)
