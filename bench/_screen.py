"""Analysis: the offline Actor with an interleaving screen before each A/B test — what a screen would be worth.

Why: `bench/interleave_probe.py` found that team-draft interleaving reads a
one-trust-step move 12–20 times faster than the loop's A/B test but cannot
decide promotions (its sign is wrong on 13–28% of clear moves).  Its use
would be a screen: the Actor proposes a wider pool, the pool is interleaved
against the incumbent, and only the candidates the screen reads as gains go
on to the A/B test, which still decides every promotion.  Before building
that across the sidecar, events, pipeline and Online agent, this measures on
the tuning bench's worlds whether it would move the agents' share.

`ScreenedBrain` is the offline brain (`agents.offline_brain.OfflineBrain`)
with that screen in front:

1. when the loop asks for `k` candidates, it proposes a pool of
   `ScreenSettings.pool` instead and starts a screen; until the screen ends it
   answers with no candidate, so the loop serves the incumbent alone and the
   screen's time is time no A/B test runs (`share_of_horizon` × the A/B
   horizon at the surface's full traffic, split evenly over the pool);
2. when the screen has run, each pool candidate is read on its share of the
   screen's requests, simulated by the world's own click model
   (`interleave_probe.merged_plans`, `credits`: users drawn by activity, one
   team-draft merge per request, clicks credited to the team that placed the
   item); the candidates whose mean credit is above 0 go to the loop, best z
   first, at most `k`; when none is, a fresh pool is screened.

It reads the world's click model (through simulated requests, as the A/B
arms' reads do), never the oracle's expectations.  It is an analysis: the
system has no interleaving, and the screen's reads are not published
anywhere.  Optimistic in one respect: the screen's merge is free of latency
(a real one runs both cascades).  Called by `bench/agents_paired.py run --screen`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import msgspec
import numpy as np
from interleave_probe import credits, merged_plans

from agents.brain import Proposal, ProposalContext
from agents.offline_brain import OfflineBrain
from rectune.simloop import SimStep
from schemas.config import CascadeConfig
from simulator.world import World

FREE_REQUESTS: Final = 50_000
FREE_TRIES: Final = 4


@dataclass(frozen=True, slots=True)
class ScreenSettings:
    """The screen: how many candidates it reads per round, and for how long (a share of the A/B horizon).

    `share_of_horizon` 0 is the bound of any screen: it takes no time and reads each candidate on `FREE_REQUESTS`
    requests (a quarter of the probe's), so its sign is nearly the true credit's.
    """

    pool: int = 8
    share_of_horizon: float = 0.25
    sequences: int = 8

    def __post_init__(self) -> None:
        if not 1 <= self.pool <= 8 or not self.share_of_horizon >= 0.0 or self.sequences < 1:
            msg = f"screen: pool in [1, 8], share_of_horizon >= 0, sequences >= 1; got {self}"
            raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class _Pending:
    pool: tuple[Proposal, ...]
    incumbent: CascadeConfig
    until_s: float


class ScreenedBrain(OfflineBrain):
    """The offline brain with a simulated interleaving screen in front of its proposals (module docstring)."""

    def __init__(self, world: World, *, horizon_s: float, screen: ScreenSettings, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(seed=seed, **kwargs)
        self._world = world
        self._screen = screen
        self._duration_s = screen.share_of_horizon * horizon_s
        per_candidate = world.scenario.requests_per_s * self._duration_s / screen.pool
        self._requests = max(2, round(per_candidate)) if self._duration_s > 0 else FREE_REQUESTS
        self._seed = seed
        self._clock_s = 0.0
        self._pending: _Pending | None = None
        self.screens = 0
        self.passed = 0

    def tick(self, step: SimStep) -> None:
        """The simulated clock (`run_simloop`'s progress callback): the time at the end of `step`."""
        self._clock_s = step.start_s + step.duration_s

    def propose_sync(self, context: ProposalContext, *, tries: int = FREE_TRIES) -> list[Proposal]:
        """Start a screen of a wider pool, or, once it has run, the pool's candidates it read as gains.

        A free screen (no time) that passes none tries a fresh pool at most `tries` times per call.
        """
        pending = self._pending
        if pending is None:
            pool = super().propose_sync(msgspec.structs.replace(context, k=self._screen.pool))
            if not pool:
                return []
            self.screens += 1
            pending = _Pending(tuple(pool), context.incumbent, self._clock_s + self._duration_s)
            if self._duration_s > 0:
                self._pending = pending
                return []
            return self._read(pending, context, tries)  # the free screen: read at once
        if self._clock_s < pending.until_s:
            return []
        return self._read(pending, context, tries)

    def _read(self, pending: _Pending, context: ProposalContext, tries: int) -> list[Proposal]:
        self._pending = None
        if pending.incumbent != context.incumbent:  # the incumbent moved on: the screen read the wrong control
            return self.propose_sync(context)
        week = self._world.week_of(self._clock_s)
        control = self._world._plan(pending.incumbent.for_surface(context.surface), week)
        reads: list[tuple[float, Proposal]] = []
        for i, proposal in enumerate(pending.pool):
            seed = (self._seed * 1_000 + self.screens) * 10 + i  # a fresh draw of users and merges per read
            candidate = self._world._plan(proposal.config.for_surface(context.surface), week)
            merged = merged_plans(self._world, control, candidate, week, self._screen.sequences, seed)
            d = credits(self._world, merged, self._requests, seed)
            sd = float(d.std(ddof=1))
            z = float(d.mean()) / (sd / np.sqrt(d.size)) if sd > 0 else 0.0
            reads.append((z, proposal))
        chosen = [p for z, p in sorted(reads, key=lambda r: r[0], reverse=True) if z > 0.0][: context.k]
        if not chosen:
            return self.propose_sync(context, tries=tries - 1) if tries > 1 else []
        self.passed += len(chosen)
        return chosen
