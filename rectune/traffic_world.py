"""The world as `rectune traffic` uses it: the Protocols `simulator.world.World` implements.

What lives here: `UserLike`, `ResponseLike`, `ScenarioLike`, the user type
variable `U` and `WorldLike`, the demo path of the simulator's world.  The
traffic core (`rectune.traffic_loop`) and its edge (`rectune.traffic`, which
loads the real world) are written against this contract, so neither imports
the simulator at module load and a test can pass a stand-in world.  Typing
only: no logic, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

import numpy as np

from schemas.config import CascadeConfig
from serving_sidecar.candidates import CandidateSet
from serving_sidecar.cascade import RankedList

__all__ = ["ResponseLike", "ScenarioLike", "U", "UserLike", "WorldLike"]


class UserLike(Protocol):
    """A simulated user: what the sidecar needs to assign and stamp a request."""

    @property
    def user_id(self) -> str:
        """Stable user id (the randomisation unit)."""
        ...

    @property
    def cohort(self) -> str:
        """Cohort label stamped into the events."""
        ...


class ResponseLike(Protocol):
    """What a user did with a shown list."""

    @property
    def clicks(self) -> Sequence[tuple[str, int]]:
        """(item id, position) of each click."""
        ...

    @property
    def conversions(self) -> Sequence[tuple[str, float]]:
        """(item id, revenue) of each purchase."""
        ...


class ScenarioLike(Protocol):
    """The scenario fields this process reads."""

    @property
    def name(self) -> str:
        """Scenario name."""
        ...

    @property
    def latency_slo_ms(self) -> float:
        """The p99 latency SLO (the sidecar's breaker uses it)."""
        ...


U = TypeVar("U", bound=UserLike)


class WorldLike(Protocol[U]):
    """The demo path of `simulator.world.World` (the contract this process is written against)."""

    @property
    def scenario(self) -> ScenarioLike:
        """The world's parameters."""
        ...

    def draw_user(self, rng: np.random.Generator) -> U:
        """A user, drawn by activity."""
        ...

    def candidates(self, user: U, *, at_s: float) -> CandidateSet:
        """The candidate set (noisy model predictions) for `user` at simulated time `at_s`."""
        ...

    def respond(
        self, user: U, shown: RankedList, candidates: CandidateSet, *, at_s: float, rng: np.random.Generator
    ) -> ResponseLike:
        """Clicks and conversions on the shown list."""
        ...

    def latency_ms(self, config: CascadeConfig, rng: np.random.Generator) -> float:
        """Modelled ranker latency of `config`."""
        ...
