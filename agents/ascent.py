"""Steepest-ascent candidates from past experiments: a Bayesian linear model of lift per trust step (pure).

Why: with a few experiments per month a black-box sampler over a dozen
parameters learns little from each one (TPE needs tens of trials before it
beats random).  Past experiments do say more than "this config scored x":
each treatment arm is a *move* away from its own control, and its read is the
relative lift of that move with a standard error.  Response-surface practice
(screen, then follow the path of steepest ascent) uses exactly that.

The model.  Each past treatment arm i gives `ArmEffect`: its move x_i in trust
steps per parameter (`agents.critic.trust_coordinate` against its control's
config; a two-valued choice is ±1 by the index of its value) and y_i = lift,
with se_i.  Locally y_i ≈ Σ_j β_j · x_ij; with a Gaussian prior β_j ~
N(m_j, τ²) (m_j from Skillhub directions, else 0) and weights 1/se_i² the
posterior is Gaussian (`fit_effects`, ridge regression in closed form).  The
fit is local: an arm whose control lies d trust steps from today's incumbent
has its variance raised by (drift · d · |x_i|)², so the model follows the
incumbent instead of averaging the slopes of places it has left.

Candidates (`ascent_moves`):
- *greedy* — the posterior mean: each parameter whose |mean| ≥ `z_min`·sd
  moves one trust step in the mean's direction, the `max_changes` largest
  gains first.  After a promotion this continues the winning move (pattern
  search's momentum); after a loser it steps the other way.
- *Thompson* — the same on one posterior draw.  With no evidence the draw is
  the prior, so the first rounds screen a few parameters at the trust edge
  (sparse moves a test can resolve); with evidence the draws concentrate on
  the directions that paid.

The caller (`agents.offline_brain.OfflineBrain`) turns each direction set
into values (one trust step, `agents.diagnostics.step_toward`), vets it like
any candidate and de-duplicates it.  Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from agents.arm_ids import parse_arm_id
from agents.brain import MetricReading, parameter_specs
from agents.critic import TrustRegion, trust_coordinate
from schemas.config import CascadeConfig

_Z95: Final = 1.959963984540054
_TINY: Final = 1e-12


class AscentError(ValueError):
    """A model input or setting is out of range; the message names the field and the rule."""


@dataclass(frozen=True, slots=True)
class ArmEffect:
    """One past treatment arm: its move from its control in trust steps, and the relative lift it read.

    `distance` is how far its control lies from the config the model is fitted
    for (the current incumbent), in trust steps (Euclidean); 0 when unknown.
    """

    arm: str
    moves: tuple[tuple[str, float], ...]
    lift: float
    se: float
    distance: float = 0.0


@dataclass(frozen=True, slots=True, eq=False)
class EffectModel:
    """Posterior of the lift per trust step of each parameter in `names` (mean, covariance, evidence count)."""

    names: tuple[str, ...]
    mean: np.ndarray
    cov: np.ndarray
    arms: int

    def sd(self, name: str) -> float:
        """Posterior standard deviation of `name`'s effect."""
        j = self.names.index(name)
        return math.sqrt(max(float(self.cov[j, j]), 0.0))

    def effect(self, name: str) -> float:
        """Posterior mean of `name`'s effect (relative lift per trust step)."""
        return float(self.mean[self.names.index(name)])

    def move(self, steps: Sequence[tuple[str, float]]) -> tuple[float, float]:
        """Posterior mean and sd of the lift of a move of `steps` (parameter, trust steps): Σ x_j·β_j."""
        x = np.zeros(len(self.names))
        for name, step in steps:
            x[self.names.index(name)] += step
        return float(x @ self.mean), math.sqrt(max(float(x @ self.cov @ x), 0.0))


@dataclass(frozen=True, slots=True)
class Direction:
    """Move `name` one trust step up (+1) or down (−1); `gain` is the model's lift for that step."""

    name: str
    sign: int
    gain: float


def coordinates(control: CascadeConfig, arm: CascadeConfig, trust: TrustRegion) -> dict[str, float]:
    """The non-zero moves from `control` to `arm` in trust steps, per parameter path.

    Numeric parameters: `trust_coordinate` against the control's spec; a
    choice of two values: +1 when the arm takes the second, −1 the first
    (unchanged: 0); other choices are left out (no axis to move along).
    """
    arm_values = {spec.name: spec.current for spec in parameter_specs(arm)}
    out: dict[str, float] = {}
    for spec in parameter_specs(control):
        value = arm_values.get(spec.name)
        if value is None or value == spec.current:
            continue
        if spec.kind == "choice":
            if len(spec.choices) == 2 and value in spec.choices:
                out[spec.name] = 1.0 if spec.choices.index(str(value)) == 1 else -1.0
            continue
        step = trust_coordinate(spec, value, trust)
        if math.isfinite(step) and step != 0.0:
            out[spec.name] = step
    return out


def _se(reading: MetricReading) -> float:
    if reading.lower is None or reading.upper is None:
        return math.nan
    return (reading.upper - reading.lower) / (2.0 * _Z95)


def arm_effects(
    readings: Iterable[MetricReading],
    *,
    metric: str,
    config_of: Callable[[str], CascadeConfig | None],
    trust: TrustRegion,
    cohort: str = "",
    origin: CascadeConfig | None = None,
) -> list[ArmEffect]:
    """Every past treatment arm whose read, its control's read and both configs are known, as `ArmEffect`s.

    Readings of `metric` for `cohort` carry a 95% interval (the loop's
    `_metrics`); the relative lift t/c − 1 gets the delta-method standard error
    of a ratio of independent estimates.  Given `origin` (the config the model
    will be fitted for), each effect carries its control's distance from it
    in trust steps (`fit_effects` discounts far evidence).  Arms with no
    interval, a zero control, or no move are skipped, and so are A/A
    pre-period arms (`agents.arm_ids`).  Called by
    `agents.ascent_candidates.ascent_candidates`.
    """
    values: dict[str, MetricReading] = {}
    for reading in readings:
        if reading.name == metric and reading.cohort == cohort and math.isfinite(reading.value):
            values[reading.arm] = reading
    out: list[ArmEffect] = []
    for arm, reading in sorted(values.items()):
        name = parse_arm_id(arm)
        if name is None or name.is_control or name.pre_period:
            continue
        control_arm = name.control.arm_id
        control = values.get(control_arm)
        arm_config, control_config = config_of(arm), config_of(control_arm)
        if control is None or arm_config is None or control_config is None or control.value <= 0.0:
            continue
        se_t, se_c = _se(reading), _se(control)
        if not (math.isfinite(se_t) and math.isfinite(se_c)):
            continue
        ratio = reading.value / control.value
        se = ratio * math.sqrt((se_t / max(reading.value, _TINY)) ** 2 + (se_c / control.value) ** 2)
        moves = coordinates(control_config, arm_config, trust)
        if moves and se > 0.0:
            distance = 0.0 if origin is None else _norm(coordinates(origin, control_config, trust).values())
            out.append(ArmEffect(arm, tuple(sorted(moves.items())), ratio - 1.0, se, distance))
    return out


def _norm(steps: Iterable[float]) -> float:
    return math.sqrt(sum(step * step for step in steps))


def fit_effects(
    effects: Sequence[ArmEffect],
    names: Sequence[str],
    *,
    prior_sd: float,
    prior_mean: Mapping[str, float] | None = None,
    drift_sd: float = 0.0,
) -> EffectModel:
    """The Gaussian posterior of per-step effects given `effects` (weighted ridge regression, no intercept).

    The model is local: the effects are the gradient at the origin, and the
    surface curves, so the gradient at a control c lying `distance` trust
    steps away is β + H·c with H's entries independent N(0, `drift_sd`²); an
    arm's move x read there carries the extra variance
    (drift_sd · distance · |x|)² on top of its se².  Evidence from where the
    incumbent used to be fades as the incumbent moves on (response-surface
    practice re-screens around each new centre); `drift_sd` 0 treats the
    surface as linear everywhere.  Moves on parameters outside `names` are
    ignored (their effect is absorbed by the noise).  Raises `AscentError`
    for a non-positive or non-finite prior or a negative or infinite drift.
    """
    if not (prior_sd > 0.0 and math.isfinite(prior_sd)):
        msg = f"prior_sd: must be a positive finite lift per trust step, got {prior_sd!r}"
        raise AscentError(msg)
    if not (drift_sd >= 0.0 and math.isfinite(drift_sd)):
        msg = f"drift_sd: must be a finite lift per trust step per step of distance >= 0, got {drift_sd!r}"
        raise AscentError(msg)
    index = {name: j for j, name in enumerate(names)}
    d = len(names)
    m0 = np.zeros(d)
    for name, value in (prior_mean or {}).items():
        if name in index and math.isfinite(value):
            m0[index[name]] = value
    precision = np.eye(d) / prior_sd**2
    rhs = m0 / prior_sd**2
    used = 0
    for effect in effects:
        x = np.zeros(d)
        for name, step in effect.moves:
            if name in index:
                x[index[name]] = step
        if not x.any():
            continue
        drift = drift_sd * effect.distance
        w = 1.0 / (effect.se**2 + drift * drift * float(x @ x))
        precision += w * np.outer(x, x)
        rhs += w * effect.lift * x
        used += 1
    cov = np.linalg.inv(precision)
    cov = 0.5 * (cov + cov.T)
    return EffectModel(tuple(names), cov @ rhs, cov, used)


def ascent_moves(
    model: EffectModel,
    movable: Mapping[str, frozenset[int]],
    *,
    max_changes: int,
    rng: np.random.Generator | None = None,
    z_min: float = 1.0,
) -> list[Direction]:
    """The directions of one candidate: greedy on the posterior mean (`rng` None) or on one posterior draw.

    `movable[name]` holds the signs the parameter can still step (bounds,
    trust box and guardrails allowing).  Greedy keeps only effects with
    |mean| ≥ `z_min`·sd; a draw keeps every positive gain.  At most
    `max_changes`, largest gain first; empty when nothing is expected to pay.
    """
    if max_changes < 1:
        msg = f"max_changes: must be >= 1, got {max_changes}"
        raise AscentError(msg)
    if rng is None:
        beta = model.mean
        sd = np.sqrt(np.clip(np.diag(model.cov), 0.0, None))
        keep = np.abs(beta) >= z_min * sd
    else:
        beta = rng.multivariate_normal(model.mean, model.cov, method="cholesky")
        keep = np.ones(len(model.names), dtype=bool)
    found: list[Direction] = []
    for j, name in enumerate(model.names):
        sign = 1 if beta[j] > 0.0 else -1
        if keep[j] and beta[j] != 0.0 and sign in movable.get(name, frozenset()):
            found.append(Direction(name, sign, float(abs(beta[j]))))
    found.sort(key=lambda direction: (-direction.gain, direction.name))
    return found[:max_changes]


def harmful_directions(model: EffectModel, margin: float) -> frozenset[tuple[str, int]]:
    """(parameter, sign) steps whose guardrail effect is below −`margin`/2 even at mean + 1 sd (established harm)."""
    sd = np.sqrt(np.clip(np.diag(model.cov), 0.0, None))
    return frozenset(
        (name, sign)
        for j, name in enumerate(model.names)
        for sign in (-1, 1)
        if sign * float(model.mean[j]) + float(sd[j]) < -margin / 2.0
    )


# --------------------------------------------------------------------------- candidates


@dataclass(frozen=True, slots=True)
class AscentSettings:
    """How the offline brain uses the model: candidates per call, prior scale, greedy threshold, draws.

    - `candidates` (default 3, the loop's `k`): at most this many ascent
      candidates per propose call (0 disables them); the sampler fills the
      rest of `k`.  3, not 2: with a dozen experiments per month TPE's
      proposal is close to a random one, and a third posterior draw did
      better on the tuning bench's worlds (agents only, 20 seeds, core /
      seasonal / thin: share 0.50 / 0.40 / 0.16 → 0.53 / 0.47 / 0.11,
      regret −8% / −4% / +1%; BENCHMARKS.md).
    - `prior_sd` (default 0.03): a trust step moves the objective by a few per
      cent either way before any evidence (the Critic's step is sized so).
    - `z_min` (default 1.0): the greedy candidate moves only parameters whose
      effect is at least one posterior sd from 0.
    - `draws` (default 8): posterior draws tried per wanted candidate.
    - `drift_sd` (default 0.003): how fast the per-step effects change as the
      incumbent moves (per trust step of distance); evidence read around an
      old incumbent counts less (`fit_effects`).  Why: without it, core seed 0
      ended with `mmr_lambda` at −0.76% ± 0.45% per step, driven by +6% arms
      read before the re-rank moves, where the oracle's step up from the
      final incumbent gains +0.59%.  On the tuning bench it is neutral
      within the noise (agents only, 20 seeds; 0.01 was worse in core on
      seeds 10-19; BENCHMARKS.md, session 16).
    - `guard_metric`, `guard_margin`: a second model of the same form on the
      guardrail metric's reads (default conversions per request, the Online
      agent's non-inferiority metric); a direction whose step is known to cost
      more than half the margin (mean + sd below −margin/2) is not proposed.
      None switches it off.
    """

    candidates: int = 3
    prior_sd: float = 0.03
    z_min: float = 1.0
    draws: int = 8
    drift_sd: float = 0.003
    guard_metric: str | None = "conversion_rate"
    guard_margin: float = 0.02

    def __post_init__(self) -> None:
        checks = (
            ("candidates", self.candidates >= 0),
            ("prior_sd", self.prior_sd > 0.0 and math.isfinite(self.prior_sd)),
            ("z_min", self.z_min >= 0.0 and math.isfinite(self.z_min)),
            ("draws", self.draws >= 1),
            ("drift_sd", self.drift_sd >= 0.0 and math.isfinite(self.drift_sd)),
            ("guard_margin", 0.0 < self.guard_margin < 1.0),
        )
        for name, ok in checks:
            if not ok:
                msg = (
                    f"AscentSettings.{name}: out of range ({getattr(self, name)!r}); "
                    "hint: candidates >= 0, prior_sd > 0, z_min >= 0, draws >= 1, drift_sd >= 0, guard_margin in (0, 1)"
                )
                raise AscentError(msg)
