"""Insight's vocabulary and records: stages, parameter paths → stage, and the frozen findings (pure, no I/O).

Lives here: the `Stage` / `Direction` / `Role` vocabularies, `STAGES`,
`ALL_COHORTS`, `stage_of` (which cascade stage a parameter path belongs to),
and the msgspec records an experiment's read produces — `ArmChanges` (its
input), `Insight`, `InsightReport` and `Skipped`.  Callers:
`agents.insight.experiment_insights` builds them, `agents.insight_pareto`
reads `InsightReport`, `agents.skills` / `agents.skill_search` fold `Insight`s
into the Skillhub, and the runtime publishes them to `rectune.decisions`;
everything public is re-exported by `agents.insight`.
"""

from __future__ import annotations

from typing import Final, Literal, TypeAlias

import msgspec

from agents.brain import ParamChange, ParamValue
from agents.insight_metrics import EffectVerdict, MetricEffect

Stage: TypeAlias = Literal["pre_rank", "rank", "re_rank", "routing"]
Direction: TypeAlias = Literal["+", "-", "="]
Role: TypeAlias = Literal["objective", "guardrail"]

STAGES: Final[tuple[Stage, ...]] = ("pre_rank", "rank", "re_rank", "routing")
#: The cohort name of pooled (all-users) reads; skills for it apply where no cohort-specific skill exists.
ALL_COHORTS: Final = "all"
#: Parameters that route candidates between stages (the cuts): stage "routing", whatever their prefix.
ROUTING_PARAMETERS: Final = frozenset({"pre_rank.candidate_cut", "rank.cut"})


def stage_of(path: str) -> Stage:
    """The cascade stage a parameter path belongs to.

    Candidate cuts between stages (`ROUTING_PARAMETERS`, any `*_cut` leaf, and
    anything under `routing.`) are "routing"; otherwise the path's first
    segment (`pre_rank`, `rank`, `re_rank`).  Raises `ValueError` for a path
    outside the cascade.  Callers: `experiment_insights`, `agents.skills`.
    """
    head, _, rest = path.partition(".")
    if head == "routing" or path in ROUTING_PARAMETERS or (rest and path.rsplit(".", 1)[-1].endswith("_cut")):
        return "routing"
    if head == "pre_rank":
        return "pre_rank"
    if head == "rank":
        return "rank"
    if head == "re_rank":
        return "re_rank"
    msg = f"parameter: {path!r} is not a cascade parameter path (pre_rank.*, rank.*, re_rank.*, routing.*)"
    raise ValueError(msg)


class Skipped(msgspec.Struct, frozen=True, kw_only=True):
    """A read that could not be made (thin or empty traffic, unknown parameter) and why."""

    cohort: str
    arm_id: str
    what: str
    reason: str


class ArmChanges(msgspec.Struct, frozen=True, kw_only=True):
    """One treatment arm of a decided experiment and its changes against the control config."""

    arm_id: str
    changes: tuple[ParamChange, ...]


class Insight(msgspec.Struct, frozen=True, kw_only=True):
    """One finding: moving `parameter` `direction`-wards in arm `arm_id` moved `metric` by `effect`.

    `before`/`after` are the control and treatment values (`direction` "+"/"−"
    for numbers, "=" for a choice switched to `after`); `co_changed` is how
    many parameters the arm changed together (attribution is shared);
    `role` says whether `metric` was the experiment's objective or a
    guardrail; `verdict` reads the effect in the metric's sense.
    Published to `rectune.decisions`; folded into the Skillhub.
    """

    experiment_id: str
    surface: str
    cohort: str
    arm_id: str
    stage: Stage
    parameter: str
    direction: Direction
    before: ParamValue
    after: ParamValue
    co_changed: int
    metric: str
    role: Role
    control_value: float
    treatment_value: float
    effect: float
    lower: float
    upper: float
    level: float
    significant: bool
    verdict: EffectVerdict
    at_ms: int


class InsightReport(msgspec.Struct, frozen=True, kw_only=True):
    """What `experiment_insights` found (`insights`), the raw per-arm effects, and the reads it had to skip."""

    experiment_id: str
    surface: str
    insights: tuple[Insight, ...]
    effects: tuple[tuple[str, str, tuple[MetricEffect, ...]], ...]  # (cohort, arm_id, effects)
    skipped: tuple[Skipped, ...] = ()
