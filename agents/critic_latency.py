"""The Critic's latency model: a linear p99 in candidate cut, rank cut and list size (pure, no I/O).

Lives here: `LatencyModel` (the conservative prior, `fit` to observed
(config, p99) pairs with its fallbacks), `latency_features`,
`no_more_work`, `bounded_p99` (the rule's prediction, shared by the Critic
and the offline Actor) and the private least-squares helpers.  Callers: `agents.critic` (rule 3, `latency_budget`),
the agent loop (its settings hold one and pass it to `critique`) and
`rectune.simloop` (which fits it to observations); it is re-exported by
`agents.critic`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, TypeAlias

import numpy as np

from agents.brain_values import LatencyLimit
from agents.critic_trust import CriticError
from schemas.config import CascadeConfig

LatencySource: TypeAlias = Literal["prior", "scaled_prior", "fit"]


def latency_features(config: CascadeConfig, surface: str = "") -> tuple[float, float, float]:
    """(pre_rank.candidate_cut, rank.cut, re_rank.list_size) of the config served on `surface`."""
    resolved = config.for_surface(surface) if surface else config
    return float(resolved.pre_rank.candidate_cut), float(resolved.rank.cut), float(resolved.re_rank.list_size)


def no_more_work(config: CascadeConfig, incumbent: CascadeConfig, surface: str = "") -> bool:
    """Whether `config` does no more work than `incumbent`: none of its latency features is larger.

    Called by the Critic's rule `latency_budget`: such a candidate cannot be
    slower than the incumbent (more work never costs less, the assumption the
    model's non-negative slopes encode), so the incumbent's measured p99
    bounds it however uncertain the fitted model is.
    """
    return all(
        c <= i for c, i in zip(latency_features(config, surface), latency_features(incumbent, surface), strict=True)
    )


def bounded_p99(
    model: LatencyModel,
    config: CascadeConfig,
    incumbent: CascadeConfig,
    incumbent_p99_ms: float | None,
    surface: str = "",
) -> tuple[float, bool]:
    """The latency rule's prediction for `config`: (p99 ms, whether the incumbent's measured p99 bounded it).

    `model.predict`, lowered to `incumbent_p99_ms` when that is known and
    `config` does no more work than `incumbent` (`no_more_work`).  Called by
    the Critic's rule `latency_budget` and, through `within_limit`, by the
    offline Actor, so both judge a candidate alike.
    """
    predicted = model.predict(config, surface)
    if incumbent_p99_ms is not None and incumbent_p99_ms < predicted and no_more_work(config, incumbent, surface):
        return incumbent_p99_ms, True
    return predicted, False


def within_limit(limit: LatencyLimit, config: CascadeConfig, incumbent: CascadeConfig, surface: str = "") -> bool:
    """Whether the Critic's latency rule, as `limit` carries it, would pass `config` (the offline Actor's filter)."""
    predicted, _ = bounded_p99(LatencyModel.of_limit(limit), config, incumbent, limit.incumbent_p99_ms, surface)
    return predicted <= limit.budget_ms


@dataclass(frozen=True, slots=True)
class LatencyModel:
    """p99 ≈ a + b·candidate_cut + c·rank.cut + d·list_size (ms), plus a safety `margin_ms`.

    - `LatencyModel()` is the conservative prior used when nothing was
      observed: 20 ms fixed, 0.02 ms per pre-rank candidate, 0.2 ms per ranked
      item, 1 ms per shown item (the default config: 72 ms).
    - `fit(observations)` with fewer than `min_points` usable points, or
      points that cannot separate the features, scales the prior to the
      observed latency: every coefficient times mean(observed / prior), so the
      predicted cost of more work stays proportional to the prior's (`source`
      "scaled_prior").
    - with enough points it fits ordinary least squares with non-negative
      slopes (more work never predicts less latency; the best-fitting subset
      of non-negative slopes is kept).  A feature that never varied in the
      observations keeps the prior's slope (no data says it is free).  The
      margin is z·s·sqrt(1 + k/n), an upper prediction bound with the
      leverage replaced by its average k/n (`source` "fit").

    Extrapolation is bounded by the trust region (cuts move at most ×2 per
    candidate), which is why a linear model is enough here.
    """

    intercept_ms: float = 20.0
    per_candidate_ms: float = 0.02
    per_rank_ms: float = 0.2
    per_list_item_ms: float = 1.0
    margin_ms: float = 0.0
    source: LatencySource = "prior"
    observations: int = 0
    residual_sd_ms: float = 0.0

    def __post_init__(self) -> None:
        values = (self.intercept_ms, self.per_candidate_ms, self.per_rank_ms, self.per_list_item_ms, self.margin_ms)
        if not all(math.isfinite(v) for v in values) or min(values[1:]) < 0.0:
            msg = f"LatencyModel: coefficients must be finite and slopes/margin >= 0, got {values}"
            raise CriticError(msg)

    def point(self, config: CascadeConfig, surface: str = "") -> float:
        """The fitted p99 of `config` (ms), without the margin; never below 0."""
        candidates, ranked, shown = latency_features(config, surface)
        value = (
            self.intercept_ms
            + self.per_candidate_ms * candidates
            + self.per_rank_ms * ranked
            + self.per_list_item_ms * shown
        )
        return max(value, 0.0)

    def predict(self, config: CascadeConfig, surface: str = "") -> float:
        """The conservative p99 of `config` (ms): the fitted value plus the margin.  The Critic compares this."""
        return self.point(config, surface) + self.margin_ms

    def limit(self, budget_ms: float, incumbent_p99_ms: float | None = None) -> LatencyLimit:
        """The rule this model and `budget_ms` make, as the Actor's context carries it (`ProposalContext.latency`).

        Called by `agents.loop_propose.propose_round`, so the Actor is told
        what the Critic will check.
        """
        return LatencyLimit(
            budget_ms=budget_ms,
            intercept_ms=self.intercept_ms,
            per_candidate_ms=self.per_candidate_ms,
            per_rank_ms=self.per_rank_ms,
            per_list_item_ms=self.per_list_item_ms,
            margin_ms=self.margin_ms,
            incumbent_p99_ms=incumbent_p99_ms,
        )

    @classmethod
    def of_limit(cls, limit: LatencyLimit) -> LatencyModel:
        """The model a `LatencyLimit` carries (its coefficients; source "fit" is not claimed)."""
        return cls(
            intercept_ms=limit.intercept_ms,
            per_candidate_ms=limit.per_candidate_ms,
            per_rank_ms=limit.per_rank_ms,
            per_list_item_ms=limit.per_list_item_ms,
            margin_ms=limit.margin_ms,
            source="scaled_prior",
        )

    def describe(self) -> str:
        """The model as a formula with its source, for reasons and logs."""
        return (
            f"p99 = {self.intercept_ms:.3g} + {self.per_candidate_ms:.3g}·candidate_cut + "
            f"{self.per_rank_ms:.3g}·rank.cut + {self.per_list_item_ms:.3g}·list_size + {self.margin_ms:.3g} ms margin "
            f"({self.source}, n={self.observations})"
        )

    @classmethod
    def fit(
        cls,
        observations: Iterable[tuple[CascadeConfig, float]],
        *,
        prior: LatencyModel | None = None,
        surface: str = "",
        min_points: int = 6,
        z: float = 1.645,
    ) -> LatencyModel:
        """The model fitted to observed (config, p99 ms) pairs; see the class docstring for the fallbacks."""
        base = prior if prior is not None else cls()
        if min_points < 5 or not (z >= 0.0 and math.isfinite(z)):
            msg = f"LatencyModel.fit: min_points must be >= 5 and z finite >= 0 (got {min_points}, {z})"
            raise CriticError(msg)
        rows: list[tuple[float, float, float]] = []
        ys: list[float] = []
        for index, (config, p99) in enumerate(observations):
            if not (isinstance(p99, int | float) and math.isfinite(p99) and p99 > 0.0):
                msg = f"observations[{index}]: p99 must be a finite positive number of ms, got {p99!r}"
                raise CriticError(msg)
            rows.append(latency_features(config, surface))
            ys.append(float(p99))
        if not rows:
            return base
        x = np.asarray(rows, dtype=np.float64)
        y = np.asarray(ys, dtype=np.float64)
        fitted = _fit_nonnegative(x, y, base, min_points, z) if len(rows) >= min_points else None
        return fitted if fitted is not None else _scaled(base, x, y)


def _prior_slopes(model: LatencyModel) -> np.ndarray:
    return np.array([model.per_candidate_ms, model.per_rank_ms, model.per_list_item_ms], dtype=np.float64)


def _scaled(base: LatencyModel, x: np.ndarray, y: np.ndarray) -> LatencyModel:
    prior = base.intercept_ms + x @ _prior_slopes(base)
    factor = float(np.mean(y / np.maximum(prior, 1e-9)))
    return LatencyModel(
        intercept_ms=base.intercept_ms * factor,
        per_candidate_ms=base.per_candidate_ms * factor,
        per_rank_ms=base.per_rank_ms * factor,
        per_list_item_ms=base.per_list_item_ms * factor,
        margin_ms=base.margin_ms * factor,
        source="scaled_prior",
        observations=int(y.size),
    )


def _fit_nonnegative(
    x: np.ndarray, y: np.ndarray, base: LatencyModel, min_points: int, z: float
) -> LatencyModel | None:
    n = y.size
    prior = _prior_slopes(base)
    varying = [j for j in range(3) if float(np.ptp(x[:, j])) > 0.0]
    fixed = [j for j in range(3) if j not in varying]
    target = y - (x[:, fixed] @ prior[fixed] if fixed else 0.0)
    best: tuple[float, np.ndarray, float, int] | None = None  # (sse, slopes, intercept, k)
    for mask in range(1 << len(varying)):
        free = [varying[i] for i in range(len(varying)) if mask >> i & 1]
        design = np.column_stack([np.ones(n), *(x[:, j] for j in free)])
        if n < design.shape[1] + 2 or np.linalg.matrix_rank(design) < design.shape[1]:
            continue
        coef, *_ = np.linalg.lstsq(design, target, rcond=None)
        if (coef[1:] < 0.0).any():
            continue
        residual = target - design @ coef
        sse = float(residual @ residual)
        slopes = prior.copy()
        slopes[varying] = 0.0
        slopes[free] = coef[1:]
        if best is None or sse < best[0] - 1e-12:
            best = (sse, slopes, float(coef[0]), design.shape[1])
    if best is None or n < min_points:
        return None
    sse, slopes, intercept, k = best
    sd = math.sqrt(sse / max(n - k, 1))
    return LatencyModel(
        intercept_ms=intercept,
        per_candidate_ms=float(slopes[0]),
        per_rank_ms=float(slopes[1]),
        per_list_item_ms=float(slopes[2]),
        margin_ms=z * sd * math.sqrt(1.0 + k / n),
        source="fit",
        observations=n,
        residual_sd_ms=sd,
    )
