"""The Critic's failure memory: recorded failed change-sets and when a candidate repeats one (pure, no I/O).

Lives here: `FailedMove`, `FailureRecord`, `FailureMemory` (its matching rule
is in its docstring) and the reason text of rule 5.  Callers: `agents.critic`
(rule 5, `failure_memory`), the agent loop (which persists and reloads the
records); re-exported by `agents.critic`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agents.brain import ParamChange, ParamValue, parameter_specs
from agents.critic_trust import _EPS, CriticError, _fmt
from schemas.config import CascadeConfig


@dataclass(frozen=True, slots=True)
class FailedMove:
    """One parameter move of a failed experiment: `name` went from `before` to `after`."""

    name: str
    before: ParamValue
    after: ParamValue


@dataclass(frozen=True, slots=True)
class FailureRecord:
    """A change-set that failed (lost, breached a guardrail, was rolled back), and why."""

    moves: tuple[FailedMove, ...]
    reason: str = ""
    experiment_id: str = ""

    @classmethod
    def from_changes(
        cls, incumbent: CascadeConfig, changes: Sequence[ParamChange], *, reason: str = "", experiment_id: str = ""
    ) -> FailureRecord:
        """The record of `changes` tried against `incumbent` (unknown paths are skipped)."""
        specs = {spec.name: spec for spec in parameter_specs(incumbent)}
        moves = tuple(
            FailedMove(change.name, specs[change.name].current, change.value)
            for change in changes
            if change.name in specs
        )
        return cls(moves=moves, reason=reason, experiment_id=experiment_id)


@dataclass(frozen=True, slots=True)
class FailureMemory:
    """Recorded failures, and the rule that says when a candidate repeats one.

    A candidate repeats a record when, for *every* move of the record, the
    candidate changes the same parameter and:

    - numeric: in the same direction as the failure, measured from the
      current incumbent (sign(candidate − incumbent) = sign(after − before)),
      and reaches at least (1 − `tolerance`) of the failed step, measured from
      the failure's start: d·(candidate − before) >= (1 − tolerance)·|after − before|
      with d the failure's direction.  With the default tolerance 0.5, a
      failed mmr_lambda 0.8 → 0.6 blocks 0.8 → 0.65 and 0.8 → 0.5, not 0.8 → 0.75;
    - choice: to the same value the failure chose.

    A candidate that moves more parameters than the record still repeats it
    (the failed change-set is contained in it).  Records with no move, or
    with a numeric move of zero, match nothing.
    """

    records: tuple[FailureRecord, ...] = ()
    tolerance: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.tolerance < 1.0:
            msg = f"FailureMemory.tolerance: must be in [0, 1), got {self.tolerance!r}"
            raise CriticError(msg)

    def add(self, record: FailureRecord) -> FailureMemory:
        """A memory with `record` appended."""
        return FailureMemory(records=(*self.records, record), tolerance=self.tolerance)

    def match(self, incumbent: CascadeConfig, changes: Sequence[ParamChange]) -> FailureRecord | None:
        """The first record the candidate `changes` (against `incumbent`) repeats, if any."""
        current = {spec.name: spec.current for spec in parameter_specs(incumbent)}
        proposed = {change.name: change.value for change in changes}
        for record in self.records:
            if record.moves and all(self._repeats(move, current, proposed) for move in record.moves):
                return record
        return None

    def _repeats(self, move: FailedMove, current: Mapping[str, ParamValue], proposed: Mapping[str, ParamValue]) -> bool:
        if move.name not in proposed or move.name not in current:
            return False
        new, now = proposed[move.name], current[move.name]
        if new == now:
            return False
        numbers = (move.before, move.after, new, now)
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in numbers):
            return isinstance(move.after, str) and new == move.after
        before, after, value, base = (float(v) for v in numbers)
        step = after - before
        if step == 0.0:
            return False
        direction = math.copysign(1.0, step)
        same_way = math.copysign(1.0, value - base) == direction
        return same_way and direction * (value - before) >= (1.0 - self.tolerance) * abs(step) - _EPS


def _failure_text(record: FailureRecord) -> str:
    moves = ", ".join(f"{m.name} {_fmt(m.before)} -> {_fmt(m.after)}" for m in record.moves)
    where = f" in {record.experiment_id}" if record.experiment_id else ""
    why = f" ({record.reason})" if record.reason else ""
    return f"failure_memory: repeats a recorded failure{where}: {moves}{why}"
