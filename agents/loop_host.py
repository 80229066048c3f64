"""What a phase of the loop may use of its `AgentLoop`: the narrow interface the phase modules are typed with.

`agents.loop_propose.propose_round` and `agents.loop_plan.plan_round` /
`approve_round` take the loop that runs them; they are typed with `LoopHost`
instead of `AgentLoop`, so what a phase may touch is written down here and
checked by mypy: the surface and settings, the Actor, the brain and the
Online agent, and five helpers the loop shares with its phases (the brain's
readings, the baseline since the last round, a decision record, the Online
agent's decisions as actions, and the cool-down that ends a round).
Nothing else of the loop's state is reachable from a phase.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from agents.actor import ActorAgent
    from agents.brain import Brain, MetricReading
    from agents.experiment import Decision
    from agents.loop import LoopSettings
    from agents.loop_records import RecordKind
    from agents.loop_state import Action, LoopInput, LoopState, PublishRecord
    from agents.online import OnlineAgent
    from schemas.metrics import ArmTotals


class LoopHost(Protocol):
    """The part of `agents.loop.AgentLoop` its phases use (see the module docstring)."""

    @property
    def surface(self) -> str: ...

    @property
    def settings(self) -> LoopSettings: ...

    @property
    def actor(self) -> ActorAgent: ...

    @property
    def brain(self) -> Brain: ...

    @property
    def online(self) -> OnlineAgent: ...

    def metrics(self, inp: LoopInput) -> tuple[MetricReading, ...]:
        """The brain's readings of `inp`."""
        ...

    def baseline_arms(self, inp: LoopInput, state: LoopState) -> list[ArmTotals]:
        """The incumbent's totals since the last round ended."""
        ...

    def record(
        self, inp: LoopInput, kind: RecordKind, experiment_id: str, payload: Any, state: LoopState
    ) -> PublishRecord:
        """One `rectune.decisions` record of the surface."""
        ...

    def emit(self, state: LoopState, inp: LoopInput, decisions: Sequence[Decision], out: list[Action]) -> None:
        """The Online agent's decisions appended to `out` as records and actions."""
        ...

    def cool(self, state: LoopState, inp: LoopInput) -> LoopState:
        """End the round: idle after the cool-down, with a new baseline mark."""
        ...
