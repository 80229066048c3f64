"""The Online agent's value types: an experiment's frozen plan, its running state, and the decisions it emits.

Who uses what:

- `agents.online.OnlineAgent` builds an `ExperimentPlan` (everything the
  experiment will be judged by, frozen at launch: arms, salt, ramp, power
  figures, τ², guardrails) and returns a new `ExperimentState` and a list
  of `Decision`s from each pure call (`plan`, `approve`, `step`);
- the agents runtime persists `ExperimentState` in Redis between steps
  (`to_bytes` / `from_bytes`: msgpack, exact — floats travel as IEEE doubles,
  ±inf included), and publishes every `Decision` to `rectune.decisions`
  (`Decision.to_json`), turning the ones with an `alert` into
  `schemas.alerts.Alert`s on `rectune.alerts` and the ones with an
  `allocation` (or `ends_experiment`) into config changes;
- `rectune` tools and the tests read them.

Everything is a frozen msgspec Struct (the statistics' `SequentialState`, a
frozen dataclass, nests inside).  Decisions carry no NaN or infinity: a figure
that does not exist yet (a lift with a zero control rate, an unbounded
confidence sequence) is `None`, so the JSON on the decision topic passes the
strict decoders.  Pure: no I/O.
"""

from __future__ import annotations

import math
from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta

from agents.stats.sequential import SequentialState
from schemas.alerts import AlertKind
from schemas.config import Allocation, RandomizationUnit
from schemas.metrics import FIELD_INDEX

SCHEMA_VERSION: Final = 1

#: Experiment status.  `pending_approval` → `running` → one terminal status:
#: `promoted` (a winner at the final stage), `stopped_loser` (every treatment
#: arm stopped early as a significant loser or for futility), `stopped_horizon`
#: (the horizon passed without a promotable winner), `rolled_back` (arms ended
#: and at least one by a guardrail breach), `halted_srm` (sample-ratio
#: mismatch), `refused` (the power gate or the candidates said no).
Status = Literal[
    "pending_approval",
    "running",
    "stopped_loser",
    "stopped_horizon",
    "promoted",
    "rolled_back",
    "halted_srm",
    "refused",
]
TERMINAL: Final[frozenset[str]] = frozenset(
    {"stopped_loser", "stopped_horizon", "promoted", "rolled_back", "halted_srm", "refused"}
)
ArmStatus = Literal["active", "stopped_loser", "stopped_futile", "rolled_back", "promoted", "ended"]
DecisionKind = Literal[
    "allocate",
    "ramp",
    "interim_read",
    "stop_arm",
    "promote",
    "rollback",
    "halt",
    "refuse",
    "hold_for_approval",
    "stop",
]
GuardrailName = Literal["latency_p99", "conversion", "revenue", "diversity"]
Verdict = Literal["winner", "loser", "futile", "open"]

Share = Annotated[float, Meta(gt=0.0, lt=1.0)]
Positive = Annotated[float, Meta(gt=0.0)]
Level = Annotated[float, Meta(gt=0.0, lt=1.0)]


class ExperimentError(ValueError):
    """A plan or state breaks a rule of the contract (message names the field and the rule)."""


def _finite(value: float) -> float | None:
    """`value` when finite, else None (decisions never carry NaN or infinity)."""
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------- plan


class MetricSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A ratio metric over user buckets: Σ numerator / Σ denominator (rows of `ArmTotals.sums`).

    Examples: `ctr` = clicks / impressions, `conversion` = conversions / requests,
    `revenue` = revenue / requests, `diversity` = distinct_categories / requests.
    """

    name: str
    numerator: str
    denominator: str

    def __post_init__(self) -> None:
        """Refuse rows that are not bucket fields of this build."""
        for role, field in (("numerator", self.numerator), ("denominator", self.denominator)):
            if field not in FIELD_INDEX:
                msg = f"MetricSpec.{role}: {field!r} is not a bucket field; known: {sorted(FIELD_INDEX)}"
                raise ExperimentError(msg)


CTR: Final = MetricSpec(name="ctr", numerator="clicks", denominator="impressions")
CONVERSION: Final = MetricSpec(name="conversion", numerator="conversions", denominator="requests")
REVENUE: Final = MetricSpec(name="revenue", numerator="revenue", denominator="requests")
DIVERSITY: Final = MetricSpec(name="diversity", numerator="distinct_categories", denominator="requests")


class Candidate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A vetted proposal whose config is registered on `rectune.config` at `config_version`.

    The runtime hands the Critic's survivors to `OnlineAgent.plan` in priority
    order; when the power gate cuts arms it keeps the first ones.
    """

    proposal_id: str
    config_version: Annotated[int, Meta(ge=1)]
    title: str = ""


class ArmSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One arm of an experiment: its id (stamped into events by the sidecar), config version and proposal."""

    arm_id: str
    config_version: Annotated[int, Meta(ge=1)]
    proposal_id: str | None = None


class GuardrailSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Guardrails checked on every step, per treatment arm; None switches one off.

    - `latency_p99_slo_ms`: the arm's p99 (from its latency histogram, accurate
      to one bin, ~12%) must stay at or below it once `min_latency_requests`
      requests are in the histogram; breach when the always-valid exceedance
      test shows more than 1% of its requests at or over it (a p99 that only
      reads over it holds the arm back from promotion);
    - `conversion_margin`, `revenue_margin`: relative non-inferiority margins
      m (0.02 = 2%); breach when the always-valid upper bound on the lift vs
      control is below −m;
    - `diversity_floor`: mean distinct categories per list; breach when the
      always-valid upper bound on the arm's mean is below it.

    The τ² of these always-valid tests is fixed here at launch
    (`agents.online` derives them from the margins and `diversity_resolution`).
    """

    latency_p99_slo_ms: Positive | None = None
    min_latency_requests: Annotated[int, Meta(ge=1)] = 1_000
    conversion_margin: Annotated[float, Meta(gt=0.0, lt=1.0)] | None = None
    revenue_margin: Annotated[float, Meta(gt=0.0, lt=1.0)] | None = None
    diversity_floor: Positive | None = None
    diversity_resolution: Positive = 0.25
    alpha: Level = 0.05
    conversion_tau2: float = 0.0
    revenue_tau2: float = 0.0
    diversity_tau2: float = 0.0

    def __post_init__(self) -> None:
        """Check the bounds at construction too (msgspec checks `Meta` bounds only when decoding)."""
        bad = [
            name
            for name, ok in (
                ("latency_p99_slo_ms > 0", self.latency_p99_slo_ms is None or self.latency_p99_slo_ms > 0.0),
                ("min_latency_requests >= 1", self.min_latency_requests >= 1),
                ("conversion_margin in (0, 1)", self.conversion_margin is None or 0.0 < self.conversion_margin < 1.0),
                ("revenue_margin in (0, 1)", self.revenue_margin is None or 0.0 < self.revenue_margin < 1.0),
                ("diversity_floor > 0", self.diversity_floor is None or self.diversity_floor > 0.0),
                ("diversity_resolution > 0", self.diversity_resolution > 0.0),
                ("alpha in (0, 1)", 0.0 < self.alpha < 1.0),
            )
            if not ok
        ]
        if bad:
            msg = f"GuardrailSpec: need {', '.join(bad)}"
            raise ExperimentError(msg)


class PowerFigures(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the power gate computed at launch (from `agents.stats.power.PowerPlan`), kept for the audit."""

    baseline: float
    variance_per_request: float
    requests_per_second: float
    exposure: float
    treatments_requested: int
    treatments: int
    target_mde: float
    mde_relative: float
    mde_absolute: float
    tau2: float
    feasible: bool
    horizon_needed_s: float | None
    reason: str
    persistent_share: float = 0.0
    variance_window_s: float | None = None


class ExperimentPlan(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything an experiment is judged by, frozen when it is planned (a later policy change cannot move it).

    `stages` are the TOTAL treatment shares of the ramp (e.g. 1% → 5% → 25% →
    50%); each treatment arm gets stage / K (K = treatment arms at launch:
    the lanes of `schemas.config.Allocation`).  `min_dwell_s[i]` and
    `min_stage_requests[i]` gate leaving stage i (and promoting in the last).
    `tau2` is the primary test's mixing variance (absolute difference scale),
    `mde_absolute` × `futility_fraction` the futility line (`futility_absolute`;
    plans from before the fraction existed read 1).  `final_alpha` (of `alpha`) is kept
    for the fixed-horizon final look; the always-valid test runs at
    `sequential_alpha` (plans from before the final look have 0).
    `randomization_unit` is the allocation's unit (`OnlinePolicy`; plans
    from before it existed are per-user).
    """

    experiment_id: str
    surface: str
    created_ms: int
    salt: str
    control: ArmSpec
    treatments: tuple[ArmSpec, ...]
    stages: tuple[Share, ...]
    min_dwell_s: tuple[float, ...]
    min_stage_requests: tuple[float, ...]
    horizon_s: Positive
    alpha: Level
    power: Level
    primary: MetricSpec
    guardrails: GuardrailSpec
    approval_required: bool
    tau2: float
    mde_absolute: float
    power_figures: PowerFigures
    srm_threshold: Level = 1e-3
    srm_min_expected_requests: float = 100.0
    settle_s: float = 300.0
    min_read_requests: float = 2_000.0
    min_read_bucket_fraction: float = 0.5
    max_history: int = 1_000
    final_alpha: Annotated[float, Meta(ge=0.0, lt=1.0)] = 0.0
    futility_fraction: Annotated[float, Meta(ge=0.0, le=1.0)] = 1.0
    randomization_unit: RandomizationUnit = "user"

    @property
    def paired(self) -> bool:
        """The arms hold the same users (per-request allocation): reads pair them per bucket."""
        return self.randomization_unit == "request"

    @property
    def futility_absolute(self) -> float:
        """The futility line: an arm whose always-valid interval lies below it stops (`mde_absolute` × fraction)."""
        if self.futility_fraction == 0.0:  # "not better than control", even on a plan with no finite MDE
            return 0.0
        return self.futility_fraction * self.mde_absolute

    @property
    def sequential_alpha(self) -> float:
        """The always-valid test's family-wise level: `alpha` less what the final look keeps."""
        return self.alpha - self.final_alpha

    @property
    def arm_ids(self) -> tuple[str, ...]:
        """Control first, then the treatments, in allocation order."""
        return (self.control.arm_id, *(t.arm_id for t in self.treatments))

    @property
    def final_stage(self) -> int:
        """Index of the last ramp stage."""
        return len(self.stages) - 1


# --------------------------------------------------------------------------- state


class ArmState(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One treatment arm's running state: its always-valid tests and how (if) it ended.

    `primary` is the test on the primary metric's absolute difference vs
    control; `conversion` and `revenue` are on the log ratio (non-inferiority);
    `diversity` is on the arm's own mean.  Each is None until its first read.
    `verdict` is the Holm-adjusted verdict (+1 better, −1 worse, 0 open),
    fixed at the first look Holm rejected the arm.
    """

    arm_id: str
    status: ArmStatus = "active"
    primary: SequentialState | None = None
    conversion: SequentialState | None = None
    revenue: SequentialState | None = None
    diversity: SequentialState | None = None
    verdict: int = 0
    verdict_ms: int | None = None
    ended_ms: int | None = None
    reason: str = ""


class Snapshot(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Cumulative per-arm request buckets and latency histograms at the start of the current SRM window.

    Taken `settle_s` after each allocation change, so traffic still served
    (or still in open metric windows) under the previous allocation is not
    judged against the new shares.  Rows follow `ExperimentPlan.arm_ids`.
    """

    taken_ms: int
    requests: tuple[tuple[float, ...], ...]
    latency: tuple[tuple[int, ...], ...]


class PeriodMark(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, array_like=True):
    """Cumulative per-arm sums when an allocation period after the first began: the reads stratify on them.

    Taken with the SRM snapshot (`settle_s` after a ramp, a stopped arm or a
    rollback changed the shares); `sums[i]` is arm `ExperimentPlan.arm_ids[i]`'s
    (fields × buckets) table, flattened row by row.  See
    `agents.stats.ratio.compare_sums` for why a read must not pool periods.
    """

    taken_ms: int
    sums: tuple[tuple[float, ...], ...]


class PrePeriod(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One arm's pre-period bucket sums of the primary metric (its own users, before the experiment): CUPED."""

    arm_id: str
    numerator: tuple[float, ...]
    denominator: tuple[float, ...]


class ReadPoint(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, array_like=True):
    """One interim read of one arm on the primary metric (compact: history rows)."""

    at_ms: int
    stage: int
    arm_id: str
    estimate: float
    se: float
    p_value: float
    holm_p: float
    lower: float | None
    upper: float | None


class ExperimentState(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An experiment between two steps: persisted by the runtime (Redis), advanced only by `OnlineAgent`.

    `started_ms` is when traffic was first allocated (after approval when
    required; the horizon counts from it); `stage_started_ms` when the
    current ramp stage began; `allocation_ms` when the allocation last
    changed (ramp, stopped arm, rollback), which restarts the SRM window.
    `stage_start_requests` are the cumulative requests per arm when the stage
    began (minimum samples per stage).  `periods` marks where each allocation
    period after the first began (the primary and non-inferiority reads are
    stratified by period).  `history` keeps the last
    `plan.max_history` primary reads; `seq` numbers the decisions.
    """

    plan: ExperimentPlan
    status: Status
    stage: int = 0
    started_ms: int | None = None
    stage_started_ms: int | None = None
    allocation_ms: int | None = None
    allocation: Allocation | None = None
    snapshot: Snapshot | None = None
    stage_start_requests: tuple[float, ...] = ()
    periods: tuple[PeriodMark, ...] = ()
    arms: tuple[ArmState, ...] = ()
    pre_period: tuple[PrePeriod, ...] | None = None
    history: tuple[ReadPoint, ...] = ()
    seq: int = 0
    ended_ms: int | None = None
    outcome: str = ""

    @property
    def experiment_id(self) -> str:
        """The plan's experiment id."""
        return self.plan.experiment_id

    @property
    def terminal(self) -> bool:
        """True once the experiment has ended (promoted, stopped, rolled back, halted or refused)."""
        return self.status in TERMINAL

    def arm(self, arm_id: str) -> ArmState:
        """The state of treatment arm `arm_id`."""
        for arm in self.arms:
            if arm.arm_id == arm_id:
                return arm
        msg = f"arm_id: {arm_id!r} is not a treatment arm of {self.plan.experiment_id}"
        raise ExperimentError(msg)

    def to_bytes(self) -> bytes:
        """msgpack bytes for the runtime's store; `from_bytes(to_bytes(s)) == s` bit for bit."""
        return _state_encoder.encode(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> ExperimentState:
        """Decode what `to_bytes` wrote (strict: unknown fields or wrong types raise `ExperimentError`)."""
        try:
            return _state_decoder.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError) as err:
            msg = f"state: not a valid experiment state ({err})"
            raise ExperimentError(msg) from err


# --------------------------------------------------------------------------- decisions


class Figure(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One named number behind a decision (None when it does not exist yet); lists of pairs, not maps."""

    name: str
    value: float | None

    @classmethod
    def of(cls, name: str, value: float) -> Figure:
        """A figure with non-finite values mapped to None."""
        return cls(name, _finite(float(value)))


class ArmRead(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An interim read of one treatment arm vs control on the primary metric.

    `difference` is treatment − control (absolute), `lower`/`upper` the
    always-valid confidence sequence on it (running intersection), `p_value`
    the always-valid p-value and `holm_p` the Holm-adjusted one across the
    experiment's treatment arms.  `cuped` says whether pre-period covariates
    adjusted the read, `variance_ratio` by how much (Var adjusted / raw).
    """

    arm_id: str
    metric: str
    control: float
    treatment: float
    difference: float
    difference_se: float
    lift: float | None
    lower: float | None
    upper: float | None
    p_value: float
    holm_p: float
    looks: int
    treatment_requests: float
    control_requests: float
    cuped: bool = False
    variance_ratio: float | None = None
    verdict: Verdict = "open"


class GuardrailRead(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One guardrail of one arm at one step: the observed value, the always-valid bound used, the threshold.

    Latency: `value` is the arm's p99 in ms, `bound` the share of its
    requests at or over the SLO (the first histogram edge at or above it),
    `breached` the always-valid exceedance test (`schemas.slo`)
    at the guardrails' alpha; a p99 read over the SLO without a breach holds
    the arm back from promotion.  Conversion/revenue:
    `value` is the lift vs control, `bound` the upper end of its confidence
    sequence, `threshold` −margin.  Diversity: `value` the mean distinct
    categories per list, `bound` its upper confidence-sequence end.
    """

    arm_id: str
    guardrail: GuardrailName
    value: float | None
    bound: float | None
    threshold: float
    breached: bool
    note: str = ""


class Decision(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="type", tag="online_decision"
):
    """One step of the Online agent, for `rectune.decisions` (and, with `alert` set, `rectune.alerts`).

    `allocation` is what the runtime must publish as the experiment's
    allocation (a `kind: allocation` config change) when set; with
    `ends_experiment` the runtime ends the allocation instead (everyone gets
    control).  A `promote` decision names the winning `arm_id`,
    `config_version` and `proposal_id` (the runtime activates that config).
    `decision_id` is `<experiment_id>#<seq>`: stable across a crash and a
    replay, so the runtime can publish idempotently.
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    decision_id: str
    seq: int
    experiment_id: str
    surface: str
    kind: DecisionKind
    at_ms: int
    stage: int
    reasons: tuple[str, ...]
    arm_id: str | None = None
    config_version: int | None = None
    proposal_id: str | None = None
    figures: tuple[Figure, ...] = ()
    reads: tuple[ArmRead, ...] = ()
    guardrails: tuple[GuardrailRead, ...] = ()
    allocation: Allocation | None = None
    ends_experiment: bool = False
    alert: AlertKind | None = None
    severity: Literal["info", "warning", "critical"] = "info"

    def figure(self, name: str) -> float | None:
        """The value of figure `name` (KeyError when absent)."""
        for figure in self.figures:
            if figure.name == name:
                return figure.value
        raise KeyError(name)

    def to_json(self) -> bytes:
        """The decision as a `rectune.decisions` record value (JSON, `type` + `schema_version`)."""
        return _json_encoder.encode(self)


_state_encoder: Final = msgspec.msgpack.Encoder()
_state_decoder: Final = msgspec.msgpack.Decoder(ExperimentState)
_json_encoder: Final = msgspec.json.Encoder()
_decision_decoder: Final = msgspec.json.Decoder(Decision)


def decode_decision(data: bytes) -> Decision:
    """Parse a `rectune.decisions` record written by `Decision.to_json` (tests, dashboards, `rectune`)."""
    try:
        return _decision_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as err:
        msg = f"decision: not a valid online decision ({err})"
        raise ExperimentError(msg) from err
