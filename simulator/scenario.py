"""Scenario files: every parameter of a simulated apparel world, loaded strictly (pure).

Callers: `simulator.world.World` (built from a `Scenario`), the tuning
benchmark and the demo (`load_scenario("apparel_core")`), tests.  A scenario
is a JSON object whose keys are exactly the fields of `Scenario` (nested
objects for the nested specs); shipped ones live in `simulator/scenarios/`.

Loading refuses, with a `SimulatorError` naming the field path and the rule:
unknown or missing keys, duplicate keys, wrong types (a bool is not a number),
non-finite numbers, values outside each field's range, and the cross-field
rules (shares summing to 1, distinct names, north-star fields from
`schemas.metrics.BUCKET_FIELDS`, ...).  Ranges live next to the fields as
`Annotated[..., Range(lo, hi)]`, so the file format is documented where it is
enforced.
"""

from __future__ import annotations

import json
import math
import re
import types
import typing
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Annotated, Any, Final, NoReturn, TypeVar

from schemas.metrics import BUCKET_FIELDS

SCENARIO_DIR: Final = Path(__file__).resolve().parent / "scenarios"
_HINT: Final = "see simulator/scenario.py for every field and its range"
_NAME: Final = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


class SimulatorError(Exception):
    """Root error of `simulator`: names the field (path) and the rule it breaks, plus a hint."""

    def __init__(self, field: str, rule: str, *, hint: str = "") -> None:
        self.field = field
        self.rule = rule
        self.hint = hint
        text = f"{field}: {rule}"
        super().__init__(f"{text} (hint: {hint})" if hint else text)


def refuse(field: str, rule: str, *, hint: str = _HINT, cause: BaseException | None = None) -> NoReturn:
    """Raise `SimulatorError(field, rule)` chained to `cause` (one line per rule at call sites)."""
    raise SimulatorError(field, rule, hint=hint) from cause


_refuse = refuse


@dataclass(frozen=True, slots=True)
class Range:
    """Inclusive numeric bounds of a scenario field (`None` = unbounded on that side)."""

    lo: float | None = None
    hi: float | None = None

    def rule(self) -> str:
        """Human form of the bound, for error messages."""
        if self.lo is not None and self.hi is not None:
            return f"must be in [{self.lo:g}, {self.hi:g}]"
        if self.lo is not None:
            return f"must be >= {self.lo:g}"
        return f"must be <= {self.hi:g}"


Prob = Annotated[float, Range(0.0, 1.0)]
NonNeg = Annotated[float, Range(0.0, None)]
Coef = Annotated[float, Range(-50.0, 50.0)]


@dataclass(frozen=True, slots=True)
class CategorySpec:
    """One product category: its share of styles, price level, dwell, return rate and seasonal peak.

    `season_peak_week` is the calendar week (0..51) of peak demand, or null for
    a category without seasonality.
    """

    name: str
    share: Prob
    price_median: Annotated[float, Range(1.0, 10_000.0)]
    dwell_s_median: Annotated[float, Range(1.0, 600.0)]
    return_rate: Annotated[float, Range(0.0, 0.9)]
    season_peak_week: Annotated[float, Range(0.0, 52.0)] | None


@dataclass(frozen=True, slots=True)
class CatalogueSpec:
    """The live catalogue: styles in colourways, brands, prices, sponsorship and weekly turnover.

    `duplicate_rate` is the share of styles offered in 2..`max_colourways`
    colourways; `colourway_similarity` bounds the cosine between a colourway
    and its style's centre (colourways of one style are near-duplicates).
    `turnover_per_week` is the share of live styles that retire (and are
    replaced by new arrivals) each week; items launched less than
    `fresh_weeks` weeks ago are fresh.
    """

    live_styles: Annotated[int, Range(20, 20_000)]
    duplicate_rate: Prob
    max_colourways: Annotated[int, Range(1, 12)]
    colourway_similarity: tuple[Annotated[float, Range(0.5, 0.9999)], Annotated[float, Range(0.5, 0.9999)]]
    embedding_dim: Annotated[int, Range(4, 256)]
    brands: Annotated[int, Range(1, 2_000)]
    brand_price_sigma: Annotated[float, Range(0.0, 2.0)]
    price_sigma: Annotated[float, Range(0.0, 2.0)]
    appeal_sigma: Annotated[float, Range(0.0, 3.0)]
    colourway_appeal_sigma: Annotated[float, Range(0.0, 3.0)]
    sponsored_rate: Annotated[float, Range(0.0, 0.5)]
    sponsored_appeal: Coef
    long_tail_share: Prob
    fresh_weeks: Annotated[int, Range(1, 52)]
    turnover_per_week: Annotated[float, Range(0.01, 1.0)]
    categories: tuple[CategorySpec, ...]


@dataclass(frozen=True, slots=True)
class PopulationSpec:
    """Users: a few hundred latent-preference prototypes, many users with their own multipliers.

    Each user belongs to one prototype (its cohort, taste and appetites) and
    has a click-propensity multiplier (lognormal, mean 1, `propensity_sigma`)
    and an activity weight (lognormal, `activity_sigma`: how skewed requests
    are across users).
    """

    prototypes: Annotated[int, Range(1, 5_000)]
    users: Annotated[int, Range(1, 2_000_000)]
    activity_sigma: Annotated[float, Range(0.0, 3.0)]
    propensity_sigma: Annotated[float, Range(0.0, 1.5)]
    favourite_categories: Annotated[int, Range(1, 12)]
    taste_focus: Annotated[float, Range(0.0, 10.0)]


@dataclass(frozen=True, slots=True)
class CohortSpec:
    """A user cohort: its share of users, activity and appetites.

    `click_offset` / `conversion_offset` shift the logits; `price_sensitivity`
    scales the price penalty; `diversity_appetite` scales how much a crowded
    list (same category/brand again) loses; `novelty_appetite` scales the lift
    of fresh items; `prediction_noise` scales the model's noise for these
    users (cold start: new users are predicted badly).
    """

    name: str
    share: Prob
    new_users: bool
    activity: Annotated[float, Range(0.01, 100.0)]
    click_offset: Coef
    conversion_offset: Coef
    price_sensitivity: Annotated[float, Range(0.0, 10.0)]
    diversity_appetite: Annotated[float, Range(0.0, 10.0)]
    novelty_appetite: Annotated[float, Range(0.0, 10.0)]
    prediction_noise: Annotated[float, Range(0.0, 10.0)]


@dataclass(frozen=True, slots=True)
class ClickModelSpec:
    """The true user behaviour (a position-based model with list crowding), in logits and penalties.

    P(click at position k) = examination(k) · crowding(k) · sigmoid(logit) ·
    user multiplier, with examination(k) = (1+k)^-position_exponent, times
    `beyond_fold_decay`^(k-fold+1) past the fold, and crowding(k) =
    exp(-duplicate_penalty·#same style before − diversity_appetite·(
    category_crowding·#same category before + brand_crowding·#same brand
    before)).  Conversion follows a click with P = sigmoid(conversion logit).
    """

    base_logit: Coef
    affinity: Coef
    category_affinity: Coef
    appeal: Coef
    price: Coef
    freshness: Coef
    position_exponent: Annotated[float, Range(0.0, 5.0)]
    fold: Annotated[int, Range(1, 200)]
    beyond_fold_decay: Prob
    duplicate_penalty: Annotated[float, Range(0.0, 20.0)]
    category_crowding: Annotated[float, Range(0.0, 20.0)]
    brand_crowding: Annotated[float, Range(0.0, 20.0)]
    conversion_base_logit: Coef
    conversion_affinity: Coef
    conversion_appeal: Coef
    conversion_price: Coef
    conversion_return: Coef


@dataclass(frozen=True, slots=True)
class NoiseSpec:
    """How wrong the ranker's models are (standard deviations, logit scale unless noted).

    `click`, `conversion`, `return_` (JSON key `return`): per user-item noise of
    the predicted logits; `dwell`: lognormal sigma of predicted dwell;
    `affinity_signal`: noise of the model's estimate of a user's taste;
    `popularity_signal`: noise of the popularity signal; `fresh_bias`: logit
    bias of click predictions for fresh items (models trained on history
    under-predict new arrivals when negative).
    """

    click: NonNeg
    conversion: NonNeg
    dwell: NonNeg
    return_: NonNeg
    affinity_signal: NonNeg
    popularity_signal: NonNeg
    fresh_bias: Coef


@dataclass(frozen=True, slots=True)
class DriftSpec:
    """How the world moves week by week.

    `taste_per_week`: random-walk step of each prototype's taste (relative to
    its norm); `model_lag_weeks`: how stale the ranker's taste estimate is;
    `seasonality`: logit amplitude of a category's seasonal demand;
    `season_start_week`: the calendar week at simulated time 0.
    """

    taste_per_week: Annotated[float, Range(0.0, 2.0)]
    model_lag_weeks: Annotated[int, Range(0, 52)]
    seasonality: Annotated[float, Range(0.0, 10.0)]
    season_start_week: Annotated[float, Range(0.0, 52.0)]


@dataclass(frozen=True, slots=True)
class LatencySpec:
    """The ranker latency model (see `simulator.latency` for the calibration).

    latency_ms = (base_ms + per_prerank_candidate_ms·candidate_cut +
    per_rank_candidate_ms·rank.cut + rerank_ms_per_pool_slot·rank.cut·list_size)
    · LogNormal(0, jitter_sigma).
    """

    base_ms: Annotated[float, Range(0.0, 10_000.0)]
    per_prerank_candidate_ms: Annotated[float, Range(0.0, 10.0)]
    per_rank_candidate_ms: Annotated[float, Range(0.0, 10.0)]
    rerank_ms_per_pool_slot: Annotated[float, Range(0.0, 10.0)]
    jitter_sigma: Annotated[float, Range(0.0, 2.0)]


@dataclass(frozen=True, slots=True)
class SimulationSpec:
    """Knobs of the simulation itself (not of the world).

    `exploration_draws`: how many exploration draws of each prototype's list
    a config with `exploration_rate > 0` is evaluated on (common random
    numbers, so configs compare on the same draws); `cached_plans`: how many
    (config, week) evaluations a world keeps.
    """

    exploration_draws: Annotated[int, Range(1, 64)]
    cached_plans: Annotated[int, Range(1, 10_000)]


@dataclass(frozen=True, slots=True)
class Scenario:
    """Every world parameter; `load_scenario` builds one from JSON and checks it."""

    name: str
    description: str
    north_star: tuple[str, str]
    requests_per_s: Annotated[float, Range(1e-6, 1e6)]
    latency_slo_ms: Annotated[float, Range(0.1, 100_000.0)]
    catalogue: CatalogueSpec
    population: PopulationSpec
    cohorts: tuple[CohortSpec, ...]
    click_model: ClickModelSpec
    noise: NoiseSpec
    drift: DriftSpec
    latency: LatencySpec
    simulation: SimulationSpec


T = TypeVar("T")


def _key(name: str) -> str:
    """JSON key of a dataclass field (`return_` -> `return`)."""
    return name[:-1] if name.endswith("_") else name


def _number(value: Any, path: str, kind: type) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        _refuse(path, f"must be a {'integer' if kind is int else 'number'}, got {type(value).__name__}")
    if kind is int and not isinstance(value, int):
        if not float(value).is_integer():
            _refuse(path, f"must be an integer, got {value!r}")
        return int(value)
    if not math.isfinite(value):
        _refuse(path, "must be finite")
    return int(value) if kind is int else float(value)


def _convert(value: Any, hint: Any, path: str) -> Any:
    """Check `value` against the type annotation `hint` and build it (recursive)."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        base, *extras = typing.get_args(hint)
        out = _convert(value, base, path)
        for extra in extras:
            if isinstance(extra, Range) and (
                (extra.lo is not None and out < extra.lo) or (extra.hi is not None and out > extra.hi)
            ):
                _refuse(path, f"{extra.rule()}, got {out!r}")
        return out
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, options[0], path)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, list):
            _refuse(path, f"must be a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            if not value:
                _refuse(path, "must not be empty")
            return tuple(_convert(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            _refuse(path, f"must be a list of {len(args)} values, got {len(value)}")
        return tuple(_convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if is_dataclass(hint) and isinstance(hint, type):
        return _build(hint, value, path)
    if hint is bool:
        if not isinstance(value, bool):
            _refuse(path, f"must be true or false, got {type(value).__name__}")
        return value
    if hint is str:
        if not isinstance(value, str):
            _refuse(path, f"must be a string, got {type(value).__name__}")
        return value
    if hint in (int, float):
        return _number(value, path, hint)
    msg = f"unsupported annotation {hint!r} at {path}"  # a programming error in this module
    raise TypeError(msg)


def _build(cls: type[T], data: Any, path: str) -> T:
    if not isinstance(data, dict):
        _refuse(path or "$", f"must be an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {_key(f.name): f.name for f in fields(cls)}  # type: ignore[arg-type]
    prefix = f"{path}." if path else ""
    for key in data:
        if key not in names:
            _refuse(f"{prefix}{key}", f"unknown field (known: {', '.join(names)})")
    kwargs: dict[str, Any] = {}
    for key, name in names.items():
        if key not in data:
            _refuse(f"{prefix}{key}", "is required")
        kwargs[name] = _convert(data[key], hints[name], f"{prefix}{key}")
    return cls(**kwargs)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            _refuse(key, "duplicate key in a JSON object")
        out[key] = value
    return out


def _check(s: Scenario) -> Scenario:
    """Cross-field rules (ranges are already checked)."""
    if not _NAME.match(s.name):
        _refuse("name", "must be 1-64 characters of letters, digits, '_', '.', '-'")
    for i, field in enumerate(s.north_star):
        if field not in BUCKET_FIELDS:
            _refuse(f"north_star[{i}]", f"must be one of schemas.metrics.BUCKET_FIELDS {BUCKET_FIELDS}")
    if s.north_star[0] == s.north_star[1]:
        _refuse("north_star", "numerator and denominator must differ")
    cat = s.catalogue
    lo, hi = cat.colourway_similarity
    if lo > hi:
        _refuse("catalogue.colourway_similarity", "must be [low, high] with low <= high")
    names = [c.name for c in cat.categories]
    if len(set(names)) != len(names):
        _refuse("catalogue.categories", "category names must be distinct")
    if not math.isclose(sum(c.share for c in cat.categories), 1.0, abs_tol=1e-6):
        _refuse("catalogue.categories", "shares must sum to 1")
    for i, category in enumerate(cat.categories):
        if not _NAME.match(category.name):
            _refuse(f"catalogue.categories[{i}].name", "must be 1-64 characters of letters, digits, '_', '.', '-'")
    pop = s.population
    if pop.users < pop.prototypes:
        _refuse("population.users", f"must be >= population.prototypes ({pop.prototypes})")
    if pop.favourite_categories > len(cat.categories):
        _refuse("population.favourite_categories", f"must be <= the number of categories ({len(cat.categories)})")
    cohorts = [c.name for c in s.cohorts]
    if len(set(cohorts)) != len(cohorts):
        _refuse("cohorts", "cohort names must be distinct")
    if not math.isclose(sum(c.share for c in s.cohorts), 1.0, abs_tol=1e-6):
        _refuse("cohorts", "shares must sum to 1")
    for i, c in enumerate(s.cohorts):
        if not _NAME.match(c.name):
            _refuse(f"cohorts[{i}].name", "must be 1-64 characters of letters, digits, '_', '.', '-'")
        if c.share > 0 and round(c.share * pop.prototypes) < 1:
            _refuse(f"cohorts[{i}].share", f"gives no prototype out of population.prototypes ({pop.prototypes})")
    return s


def parse_scenario(data: Any) -> Scenario:
    """Build and check a `Scenario` from decoded JSON (for callers holding a dict)."""
    return _check(_build(Scenario, data, ""))


def shipped_scenarios() -> tuple[str, ...]:
    """Names of the scenarios shipped in `simulator/scenarios/` (for CLIs, benchmarks, tests)."""
    return tuple(sorted(p.stem for p in SCENARIO_DIR.glob("*.json")))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A shipped scenario by name (`"apparel_core"`) or a JSON file by path; refuses bad files.

    Callers: the demo, the benchmarks, `World` users.  Raises `SimulatorError`
    naming the field and the rule for every defect.
    """
    text_name = str(name_or_path)
    path = SCENARIO_DIR / f"{text_name}.json" if _NAME.match(text_name) else Path(name_or_path)
    if not path.is_file():
        path = Path(name_or_path)
    if not path.is_file():
        _refuse("scenario", f"no shipped scenario or file named {text_name!r}", hint=f"shipped: {shipped_scenarios()}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as err:
        _refuse("$", f"must be valid JSON ({err})", cause=err)
    except UnicodeDecodeError as err:
        _refuse("$", "must be UTF-8 text", cause=err)
    return parse_scenario(data)
