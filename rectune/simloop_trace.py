"""What a simulated run did: the served mix per step, promotions, and the whole trace (`SimTrace`).

What lives here: `ServedArm`, `SimStep`, `Promotion` and `SimTrace`, the
frozen records `rectune.simloop.run_simloop` returns.  Re-exported by
`rectune.simloop`; callers: `bench/tuning.py` (`bench/_tuning_methods.py`
turns a trace into a scored path), the tests.  Pure values: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rectune.simloop_preset import SimPreset
from schemas.config import CascadeConfig

# --------------------------------------------------------------------------- trace


@dataclass(frozen=True, slots=True)
class ServedArm:
    """One arm served during a step: its id, config version, share of users (as routed) and requests drawn."""

    arm_id: str
    config_version: int
    share: float
    requests: float
    latency_p99_ms: float = math.nan


@dataclass(frozen=True, slots=True)
class SimStep:
    """One simulated step (its metric windows) and the loop's tick at its end."""

    index: int
    start_s: float
    duration_s: float
    control_version: int
    served: tuple[ServedArm, ...]
    phase: str
    decisions: tuple[str, ...] = ()
    promoted: tuple[int, ...] = ()
    rollbacks: int = 0
    alerts: tuple[str, ...] = ()

    @property
    def requests(self) -> float:
        """Requests served in the step, over all arms."""
        return sum(a.requests for a in self.served)


@dataclass(frozen=True, slots=True)
class Promotion:
    """A promotion: at the end of step `step`, config `new_version` replaced `old_version` as control."""

    step: int
    at_s: float
    old_version: int
    new_version: int


@dataclass(frozen=True, slots=True)
class SimTrace:
    """Everything a simulated run did (see the module docstring)."""

    scenario: str
    seed: int
    budget_s: float
    preset: SimPreset
    steps: tuple[SimStep, ...]
    configs: Mapping[int, CascadeConfig]
    promotions: tuple[Promotion, ...]
    records: tuple[dict[str, Any], ...]
    alerts: tuple[str, ...]
    final_version: int
    history: tuple[str, ...] = field(default=())

    @property
    def start(self) -> CascadeConfig:
        """The config served before any tuning (version 1)."""
        return self.configs[1]

    @property
    def final(self) -> CascadeConfig:
        """The control config at the end of the budget."""
        return self.configs[self.final_version]

    def decision_kinds(self) -> list[str]:
        """Every decision kind in order (allocate, ramp, promote, stop, rollback, refuse, no_candidate, ...)."""
        return [k for s in self.steps for k in s.decisions]

    def experiments(self) -> int:
        """Experiments that got traffic (an `allocate` decision each)."""
        return self.decision_kinds().count("allocate")

    def rollbacks(self) -> int:
        """Treatment arms rolled back by a guardrail."""
        return sum(s.rollbacks for s in self.steps)
