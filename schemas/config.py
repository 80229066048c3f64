"""The configuration surface the agents tune, and its traffic allocation (pure).

`CascadeConfig` is the "glue" of a multi-stage recommender: pre-rank value
fusion and candidate cut, rank objective weights and combination form, re-rank
diversity policy, per-surface overrides.  `Allocation` splits users between
arms (each arm names the config version it serves).  Both are frozen msgspec
structs with hard bounds; `validate_config` / `validate_allocation` add the
cross-field rules.  Every refusal is a `ConfigError` naming the field and the
rule.  Parameters are lists of `{name, value}` pairs rather than free-form maps
so the same schema works as an LLM response schema.
"""

from __future__ import annotations

import math
from typing import Annotated, Final, Literal, NoReturn, TypeAlias

import msgspec
from msgspec import Meta

from schemas.errors import SchemaError, refuse
from schemas.events import Id

MAX_CANDIDATES: Final = 200_000
MAX_LIST_SIZE: Final = 200
MAX_WEIGHT: Final = 100.0
ASSIGNMENT_BUCKETS: Final = 10_000
_HINT: Final = "see schemas/config.py for the bounds"

Weight = Annotated[float, Meta(ge=0.0, le=MAX_WEIGHT)]
Unit = Annotated[float, Meta(ge=0.0, le=1.0)]


class ConfigError(SchemaError):
    """A config, allocation or config change breaks a rule."""


class Signal(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One named value signal and its fusion weight (e.g. `{"name": "ctr_model", "value": 0.6}`)."""

    name: Id
    value: Weight


class PreRank(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Pre-rank: fuse cheap value signals over the whole candidate set, keep the best `candidate_cut`."""

    fusion_weights: Annotated[tuple[Signal, ...], Meta(min_length=1, max_length=32)]
    candidate_cut: Annotated[int, Meta(ge=1, le=MAX_CANDIDATES)]


class Objectives(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Rank objective weights.  `return_` penalises predicted returns (weight >= 0 subtracts)."""

    click: Weight
    conversion: Weight
    dwell: Weight
    return_: Annotated[float, Meta(ge=0.0, le=MAX_WEIGHT)] = msgspec.field(name="return")
    revenue: Weight


class Rank(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Rank: combine calibrated objective predictions, keep the best `cut` for re-rank.

    `weighted_sum`: sum of w_k * p_k.  `weighted_product`: prod of p_k ** w_k
    (a log-linear blend of calibrated probabilities).
    """

    objective_weights: Objectives
    combination: Literal["weighted_sum", "weighted_product"]
    cut: Annotated[int, Meta(ge=1, le=MAX_CANDIDATES)]


class ReRank(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Re-rank: the diversity policy that shapes the shown list.

    `mmr_lambda`: 1 = pure relevance, 0 = pure novelty.  Items whose embedding
    cosine similarity to a chosen item exceeds `near_duplicate_threshold` are
    collapsed (skipped).  `sponsored_positions` are the slots a sponsored item
    may take, at most `sponsored_quota` of them.  `exploration_rate` is the
    chance that a slot is filled uniformly at random from the remaining pool
    (so every shown item has a known propensity).
    """

    list_size: Annotated[int, Meta(ge=1, le=MAX_LIST_SIZE)]
    mmr_lambda: Unit
    max_per_category: Annotated[int, Meta(ge=1, le=MAX_LIST_SIZE)]
    max_per_brand: Annotated[int, Meta(ge=1, le=MAX_LIST_SIZE)]
    near_duplicate_threshold: Annotated[float, Meta(ge=0.5, le=1.0)]
    freshness_boost: Unit
    sponsored_quota: Annotated[int, Meta(ge=0, le=10)]
    sponsored_positions: Annotated[tuple[int, ...], Meta(max_length=10)]
    exploration_rate: Annotated[float, Meta(ge=0.0, le=0.5)]


class SurfaceOverride(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Whole stages replaced for one surface (absent stages inherit the base)."""

    surface: Id
    pre_rank: PreRank | None = None
    rank: Rank | None = None
    re_rank: ReRank | None = None


class CascadeConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything the agents may tune in the cascade; versions live on `rectune.config`."""

    pre_rank: PreRank
    rank: Rank
    re_rank: ReRank
    overrides: tuple[SurfaceOverride, ...] = ()

    def for_surface(self, surface: str) -> CascadeConfig:
        """The config a request on `surface` is served with (overrides applied)."""
        for override in self.overrides:
            if override.surface == surface:
                return CascadeConfig(
                    pre_rank=override.pre_rank or self.pre_rank,
                    rank=override.rank or self.rank,
                    re_rank=override.re_rank or self.re_rank,
                )
        return self


class ArmShare(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One arm of an experiment: the config version it serves and its traffic share."""

    arm_id: Id
    config_version: Annotated[int, Meta(ge=1)]
    share: Unit


#: What an allocation randomises: each user to one arm for the whole experiment (`user`), or each
#: request on its own (`request`: every user's requests are spread over all arms).
RandomizationUnit: TypeAlias = Literal["user", "request"]


class Allocation(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which users (or requests) see which config: `hash(salt, key) -> bucket -> arm`.

    `arms[0]` is control and takes every bucket no treatment arm holds.  Each
    treatment arm owns a fixed lane of the bucket space and fills it from the
    lane's start, so raising its share only adds users (ramp-stable).

    `unit` is what the key is.  `user` (the default): the user id, so a user
    sees one arm for the whole experiment.  `request`: the request id, so the
    arms hold the same users and a comparison can pair them per user bucket
    (`agents.stats.ratio.paired_comparison`), which removes the between-user
    variance a returning population leaves in a user-level read.  The price is
    an inconsistent experience within a user and carry-over between arms
    (what a user saw under one arm can change what they do under another):
    fine for small ranking-weight changes, not for visible redesigns.
    """

    experiment_id: Id
    salt: Id
    arms: Annotated[tuple[ArmShare, ...], Meta(min_length=1, max_length=16)]
    unit: RandomizationUnit = "user"


def _refuse(field: str, rule: str, *, hint: str = _HINT, cause: BaseException | None = None) -> NoReturn:
    refuse(ConfigError, field, rule, hint=hint, cause=cause)


def _check_stages(prefix: str, pre: PreRank, rank: Rank, rerank: ReRank) -> None:
    names = [s.name for s in pre.fusion_weights]
    if len(set(names)) != len(names):
        _refuse(f"{prefix}pre_rank.fusion_weights", "signal names must be distinct")
    if not any(s.value > 0 for s in pre.fusion_weights):
        _refuse(f"{prefix}pre_rank.fusion_weights", "at least one weight must be > 0")
    w = rank.objective_weights
    if w.click + w.conversion + w.dwell + w.revenue <= 0:
        _refuse(f"{prefix}rank.objective_weights", "click + conversion + dwell + revenue must be > 0")
    if rank.cut > pre.candidate_cut:
        _refuse(f"{prefix}rank.cut", f"must be <= pre_rank.candidate_cut ({pre.candidate_cut})")
    if rerank.list_size > rank.cut:
        _refuse(f"{prefix}re_rank.list_size", f"must be <= rank.cut ({rank.cut})")
    positions = rerank.sponsored_positions
    if len(set(positions)) != len(positions) or any(p < 0 or p >= rerank.list_size for p in positions):
        _refuse(f"{prefix}re_rank.sponsored_positions", f"must be distinct positions in [0, {rerank.list_size})")
    if rerank.sponsored_quota > len(positions):
        _refuse(f"{prefix}re_rank.sponsored_quota", "must be <= the number of sponsored_positions")


def validate_config(config: CascadeConfig) -> CascadeConfig:
    """Cross-field rules of a config (bounds are in the types); returns it unchanged."""
    _check_stages("", config.pre_rank, config.rank, config.re_rank)
    seen: set[str] = set()
    for i, override in enumerate(config.overrides):
        if override.surface in seen:
            _refuse(f"overrides[{i}].surface", "surfaces must be distinct")
        seen.add(override.surface)
        resolved = config.for_surface(override.surface)
        _check_stages(f"overrides[{i}].", resolved.pre_rank, resolved.rank, resolved.re_rank)
    return config


def validate_allocation(allocation: Allocation) -> Allocation:
    """Cross-field rules of an allocation; returns it unchanged."""
    ids = [a.arm_id for a in allocation.arms]
    if len(set(ids)) != len(ids):
        _refuse("arms", "arm ids must be distinct")
    treatments = allocation.arms[1:]
    lane = 1.0 / len(treatments) if treatments else 1.0
    for i, arm in enumerate(treatments, start=1):
        if arm.share > lane + 1e-12:
            _refuse(f"arms[{i}].share", f"must be <= {lane:g} (one lane of {len(treatments)} treatment arms)")
    total = sum(a.share for a in treatments)
    control = allocation.arms[0].share
    if not math.isclose(control + total, 1.0, abs_tol=1e-9):
        _refuse("arms[0].share", f"control share must be 1 - sum of treatment shares ({1.0 - total:g})")
    return allocation


_config_decoder: Final = msgspec.json.Decoder(CascadeConfig)


def decode_config(data: bytes | str) -> CascadeConfig:
    """Parse and validate a config from JSON (files, CLI, LLM answers)."""
    try:
        config = _config_decoder.decode(data)
    except msgspec.ValidationError as err:
        text = str(err)
        rule, _, path = text.partition(" - at `$")
        _refuse(path.rstrip("`").lstrip(".") or "$", rule, cause=err)
    except msgspec.DecodeError as err:
        _refuse("$", f"must be valid JSON ({err})", cause=err)
    return validate_config(config)


def default_config() -> CascadeConfig:
    """A sensible hand-tuned starting config (what a retailer runs before tuning)."""
    return CascadeConfig(
        pre_rank=PreRank(
            fusion_weights=(Signal("popularity", 0.4), Signal("personal_affinity", 0.5), Signal("freshness", 0.1)),
            candidate_cut=1_000,
        ),
        rank=Rank(
            objective_weights=Objectives(click=1.0, conversion=3.0, dwell=0.2, return_=0.5, revenue=0.01),
            combination="weighted_sum",
            cut=100,
        ),
        re_rank=ReRank(
            list_size=12,
            mmr_lambda=0.8,
            max_per_category=4,
            max_per_brand=3,
            near_duplicate_threshold=0.95,
            freshness_boost=0.1,
            sponsored_quota=1,
            sponsored_positions=(2, 7),
            exploration_rate=0.02,
        ),
    )
