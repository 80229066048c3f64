"""The loop's values: `LoopState` and the structs it persists, a step's input (`LoopInput`) and its `Action`s.

What lives here: `LoopState` (msgpack bytes in the `StateStore`) and the
structs it persists (`FailureRec`, `FailedMoveRec`, `BaselineMark`); the
`Action`s a step returns (`PublishRecord`, `PublishAlert`, `AppendConfig`,
`UpsertSkills`); `LoopInput`, what one step sees.

Who uses it: `agents.loop.AgentLoop` builds states and actions,
`agents.loop_driver.LoopDriver` persists and executes them (its outbox encodes
the actions), the adapters (`agents.runtime`, `agents.memory_ports`,
`agents.state_store`) read them.  Every name is re-exported by `agents.loop`.
Pure values: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias

import msgspec

from agents.brain import Proposal
from agents.experiment import ExperimentState
from agents.insight import TriedConfig
from agents.ope_replay import ReplayRows
from agents.skills import Skill
from agents.stats.persistence import VarianceCurve
from schemas.alerts import Alert
from schemas.config import Allocation, CascadeConfig
from schemas.config_log import ServingState
from schemas.metrics import ArmTotals

Phase: TypeAlias = Literal["idle", "registering", "pending_approval", "running"]


# --------------------------------------------------------------------------- state


class FailedMoveRec(msgspec.Struct, frozen=True, array_like=True):
    """A persisted `agents.critic.FailedMove`."""

    name: str
    before: float | int | str
    after: float | int | str


class FailureRec(msgspec.Struct, frozen=True, kw_only=True):
    """A persisted `agents.critic.FailureRecord`."""

    moves: tuple[FailedMoveRec, ...]
    reason: str = ""
    experiment_id: str = ""


class BaselineMark(msgspec.Struct, frozen=True, array_like=True):
    """A baseline arm's cumulative totals when the last round ended (`LoopState.baseline_mark`)."""

    arm_id: str
    windows: int
    sums: tuple[float, ...]
    latency_hist: tuple[int, ...]
    buckets: int


class LoopState(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the loop needs between steps (persisted by the `StateStore` as msgpack bytes).

    `experiment` is `ExperimentState.to_bytes()` of the current experiment;
    `candidates` the proposals being registered or tested (arm changes for
    Insight); `registered_after` the config head before registration (a
    candidate's version is the first later version holding its config);
    `pre_version` the head before the first allocation (what a rollback
    restores); `cooldown_until_ms` when the next proposal round may start;
    `baseline_mark` the baseline arms' totals when the last round ended (the
    power gate plans on the incumbent's traffic since then, not on all
    history) and `baseline_mid` when the round proposed (it splits that
    window in two parts, whose buckets measure the persistent share of the
    variance); `persistent_share` the pooled estimate of that share over the
    last `persistent_reads` rounds (`agents.loop_baseline.pool_persistent_share`;
    estimated only until the first variance curve is learnt, which then serves);
    `curve_points` the current experiment's reads as (seconds since start,
    variance per request relative to `curve_reference`, the raw variance it
    was planned on), fitted when it ends into the surface's variance curve
    `curve_intercept` + `curve_slope_per_s`·T pooled over `curve_reads`
    experiments (`variance_curve`; what the next gate plans on);
    `pre_period_until_ms` when the A/A pre-period (if any) ends; `outbox`
    the actions of the step this state results from while they are being
    executed (`LoopDriver`: saved before, cleared after; see `encode_actions`);
    `front` the running Pareto front of tried configs (`agents.insight.update_front`);
    `round_restricted` whether the current round searched only the Skillhub's
    parameters, `explore_wide` whether such a round ended without a
    promotion since the last promotion (the next rounds then search every
    parameter, see `agents.loop_propose`); `latency_seen` the (config version,
    p99 ms) its arms showed (`agents.loop_latency`); `screen_until_ms` when the
    off-policy screen stops waiting for replay rows, `screened` whether this
    round's candidates went through it (`agents.loop_screen`).
    """

    surface: str
    phase: Phase = "idle"
    cycle: int = 0
    experiment: bytes | None = None
    candidates: tuple[Proposal, ...] = ()
    control_version: int = 0
    registered_after: int = 0
    pre_version: int = 0
    cooldown_until_ms: int = 0
    failures: tuple[FailureRec, ...] = ()
    history: tuple[str, ...] = ()
    baseline_mark: tuple[BaselineMark, ...] = ()
    baseline_mid: tuple[BaselineMark, ...] = ()
    persistent_share: float = 0.0
    persistent_reads: int = 0
    pre_period_until_ms: int = 0
    outbox: bytes | None = None
    curve_points: tuple[tuple[float, float], ...] = ()
    curve_reference: float = 0.0
    curve_intercept: float = 0.0
    curve_slope_per_s: float = 0.0
    curve_reads: int = 0
    front: tuple[TriedConfig, ...] = ()
    round_restricted: bool = False
    explore_wide: bool = False
    latency_seen: tuple[tuple[int, float], ...] = ()
    screen_until_ms: int = 0
    screened: bool = False

    def to_bytes(self) -> bytes:
        """msgpack bytes (exact round trip)."""
        return _state_encoder.encode(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> LoopState:
        """Decode what `to_bytes` wrote."""
        return _state_decoder.decode(data)

    def variance_curve(self) -> VarianceCurve | None:
        """The learned variance curve (`agents.stats.persistence.VarianceCurve`), None before any experiment ended."""
        if self.curve_reads <= 0:
            return None
        return VarianceCurve(self.curve_intercept, self.curve_slope_per_s, self.curve_reads)

    def experiment_state(self) -> ExperimentState | None:
        """The decoded current experiment, if any."""
        return None if self.experiment is None else ExperimentState.from_bytes(self.experiment)


_state_encoder: Final = msgspec.msgpack.Encoder()
_state_decoder: Final = msgspec.msgpack.Decoder(LoopState)


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class PublishRecord:
    """A record for `rectune.decisions` (already JSON-ready)."""

    record: dict[str, Any]

    def to_json(self) -> bytes:
        """The record value."""
        return msgspec.json.encode(self.record)


@dataclass(frozen=True, slots=True)
class PublishAlert:
    """An alert for `rectune.alerts`."""

    alert: Alert


@dataclass(frozen=True, slots=True)
class AppendConfig:
    """A config change to append as the next version (signed by the writer).

    `action_id` is set by `LoopDriver` when it saves the step's intent; a
    writer that finds an accepted change carrying it on the log already
    (a replay after a crash) returns that version instead of appending again.
    """

    kind: Literal["config", "allocation", "rollback"]
    reason: str
    config: CascadeConfig | None = None
    activate: bool = False
    allocation: Allocation | None = None
    restores_version: int | None = None
    proposal_id: str | None = None
    action_id: str = ""


@dataclass(frozen=True, slots=True)
class UpsertSkills:
    """Skillhub entries to store."""

    skills: tuple[Skill, ...]


Action: TypeAlias = PublishRecord | PublishAlert | AppendConfig | UpsertSkills


@dataclass(frozen=True, slots=True)
class LoopInput:
    """What one step sees: merged per-arm totals of the surface, the serving state, skills, approvals, time.

    `cohorts` (cohort → arm id → totals) splits `totals` by the requests'
    cohort; only Insight reads it (`agents.loop_learn`), and empty means no split.
    `opened_arms` are the arms the serving sidecar's SLO breaker cut back
    (`agents.alerts_feed`); the Online agent rolls them back.  `replay` holds
    the registered candidates' exploration rows by config version and
    `replay_active` whether sidecars replay this surface at all
    (`agents.replay_feed`; the off-policy screen, `agents.loop_screen`).
    """

    totals: Mapping[str, ArmTotals]
    serving: ServingState
    now_ms: int
    skills: Sequence[Skill] = ()
    approved: frozenset[str] = frozenset()
    epoch: int = 0
    cohorts: Mapping[str, Mapping[str, ArmTotals]] = field(default_factory=dict)
    opened_arms: frozenset[str] = frozenset()
    replay: Mapping[int, ReplayRows] = field(default_factory=dict)
    replay_active: bool = False
