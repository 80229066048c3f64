"""The tuning benchmark's ceiling: the real agents loop fed proposals ranked by the oracle (scoring only).

Why: the agents' share of the oracle's lift mixes two limits — how good the
Actor's proposals are, and what the rest of the loop lets any proposal reach
in the budget: the Critic's trust region (one step per parameter per
experiment), `max_changes`, the latency budget and diversity floor, and the
Online agent's power (an arm must beat the MDE the traffic resolves before it
is promoted, at the policy's α).  `OracleGuidedBrain` removes the first limit:
it proposes what a perfect Actor restricted to the same moves would, so the
share it reaches is the ceiling of the second.  It is an analysis tool, never
a method: it reads `World.expected`, which no agent sees.

How it proposes, on each call: every one-trust-step move of every tunable
the context allows (`agents.diagnostics.step_toward`, the move the offline
brain's ascent makes) is scored by the oracle; a config whose true p99
breaks the latency SLO is never proposed (`simulator.oracle.meets_slo`, the
rule the oracle's own search applies: a perfect Actor knows the true
latency, and such a config would only be rejected by the Critic or rolled
back, and then, never proposed again, block the greedy sets that contain
it); the candidate sets are built
greedily — add the move that raises the oracle's value of the set most, up
to `context.max_changes`, while it still raises it (moves interact: a
combination is scored as a whole) — and each set after the first uses
parameters the earlier ones did not.  Each candidate is vetted like any
brain answer (`vet_in_context`); a config it proposed before is proposed
again only when every set worth proposing was (an inconclusive experiment
is no evidence against a config the oracle ranks best, and a fresh one is
fresh evidence; before session 15 it never re-proposed, and stalled the
surface for the rest of the budget); the Critic and Online agent then treat
it as they treat the offline brain's.

Called by `bench/tuning.py --ceiling` (method `ceiling`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from agents.brain import (
    MAX_TITLE_CHARS,
    ParamChange,
    ParamValue,
    Proposal,
    ProposalContext,
    apply_changes,
    clip_text,
    parameter_specs,
    proposal_id_for,
    vet_in_context,
)
from agents.critic import TrustRegion
from agents.diagnostics import step_toward
from agents.offline_brain import OfflineBrain
from schemas.config import CascadeConfig
from schemas.errors import SchemaError
from schemas.guardrails import Guardrails
from simulator.oracle import meets_slo
from simulator.world import World

#: How many of the best single moves the greedy set search considers (the rest rarely help a set).
SHORTLIST = 12
_GAIN_EPS = 1e-4  # a move must raise the set's oracle value by at least this (relative) to join it


@dataclass(frozen=True, slots=True)
class Move:
    """One one-trust-step move of one parameter and its relative oracle gain alone."""

    gain: float
    name: str
    value: ParamValue


def moved(incumbent: CascadeConfig, moves: Sequence[Move]) -> CascadeConfig | None:
    """`incumbent` with `moves` applied together; None when they break a config rule."""
    try:
        return apply_changes(incumbent, [ParamChange(name=m.name, value=m.value) for m in moves])
    except SchemaError:
        return None


def single_moves(
    incumbent: CascadeConfig,
    value_of: Callable[[CascadeConfig], float],
    trust: TrustRegion,
    guardrails: Guardrails,
    parameters: Collection[str] = (),
) -> list[Move]:
    """The `SHORTLIST` best one-trust-step moves of one parameter that raise `value_of`, best first.

    `value_of` is the oracle's value of a config (−inf for one it never
    proposes); `parameters` narrows the tunables when not empty.  Called by
    `OracleGuidedBrain` and `bench/arm_trace.py --next-step`.
    """
    moves = [m for m in every_single_move(incumbent, value_of, trust, guardrails, parameters) if m.gain > 0.0]
    return sorted(moves, key=lambda m: m.gain, reverse=True)[:SHORTLIST]


def every_single_move(
    incumbent: CascadeConfig,
    value_of: Callable[[CascadeConfig], float],
    trust: TrustRegion,
    guardrails: Guardrails,
    parameters: Collection[str] = (),
) -> list[Move]:
    """Every one-trust-step move of one parameter, up and down, with its relative gain (−1: breaks a config rule).

    Called by `single_moves` and `bench/interleave_probe.py` (which also needs the moves that lose).
    """
    base = value_of(incumbent)
    moves: list[Move] = []
    for spec in parameter_specs(incumbent):
        if parameters and spec.name not in parameters:
            continue
        for sign in (-1, 1):
            value = step_toward(spec, trust, guardrails, sign, 1.0)
            if value is None or value == spec.current:
                continue
            config = moved(incumbent, [Move(0.0, spec.name, value)])
            gain = -1.0 if config is None else value_of(config) / base - 1.0
            moves.append(Move(gain, spec.name, value))
    return moves


def greedy_set(
    incumbent: CascadeConfig,
    value_of: Callable[[CascadeConfig], float],
    moves: Sequence[Move],
    max_changes: int,
    *,
    used: Collection[str] = (),
    skip: Callable[[CascadeConfig], bool] = lambda _config: False,
) -> tuple[list[Move], float]:
    """The greedy set of `moves` (module docstring) and its relative oracle gain over `incumbent`.

    Parameters in `used` are left out, and so are sets whose config `skip`
    says was proposed before.  Called by `OracleGuidedBrain` and
    `bench/arm_trace.py --next-step`.
    """
    base = value_of(incumbent)
    chosen: list[Move] = []
    value = 0.0
    while len(chosen) < max_changes:
        best: tuple[float, Move] | None = None
        names = {*used, *(m.name for m in chosen)}
        for move in moves:
            if move.name in names:
                continue
            config = moved(incumbent, [*chosen, move])
            if config is None or skip(config):
                continue
            gain = value_of(config) / base - 1.0
            if gain > value + _GAIN_EPS and (best is None or gain > best[0]):
                best = (gain, move)
        if best is None:
            break
        value, move = best
        chosen.append(move)
    return chosen, value


def feasible_value(
    view: Callable[[CascadeConfig], tuple[float, bool]], incumbent: CascadeConfig
) -> Callable[[CascadeConfig], float]:
    """The ceiling's value of a config around `incumbent`: the oracle's north star of one that meets the SLO, else
    −inf (never a gain); the incumbent itself keeps its own value even over the SLO (gains are relative to it).

    Called by `OracleGuidedBrain.propose_sync` and `bench/arm_trace.py --next-step`.
    """
    base = view(incumbent)[0]

    def value_of(config: CascadeConfig) -> float:
        if config is incumbent:
            return base
        value, feasible = view(config)
        return value if feasible else -math.inf

    return value_of


class OracleGuidedBrain(OfflineBrain):
    """An `OfflineBrain` whose proposals come from the oracle (module docstring); critique and insight as before.

    `view(config)` is the oracle's (expected north star, whether the config
    meets the latency SLO) — `oracle_view(world)`, at the time the shares
    are scored at.
    """

    def __init__(self, view: Callable[[CascadeConfig], tuple[float, bool]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._view = view
        self._proposed: set[bytes] = set()

    def propose_sync(self, context: ProposalContext) -> list[Proposal]:
        """Up to `context.k` oracle-ranked candidates (see the module docstring)."""
        incumbent = context.incumbent
        value_of = feasible_value(self._view, incumbent)
        moves = single_moves(incumbent, value_of, self._rules.trust, context.guardrails, context.parameters)
        proposals = self._sets(context, value_of, moves, lambda config: msgspec.json.encode(config) in self._proposed)
        if not proposals:
            # every set worth proposing was proposed before and none was promoted: a perfect Actor proposes the
            # best again (a fresh experiment is fresh evidence) rather than stall the surface
            proposals = self._sets(context, value_of, moves, lambda _config: False)
        return proposals

    def _sets(
        self,
        context: ProposalContext,
        value_of: Callable[[CascadeConfig], float],
        moves: Sequence[Move],
        skip: Callable[[CascadeConfig], bool],
    ) -> list[Proposal]:
        used: set[str] = set()
        proposals: list[Proposal] = []
        for _ in range(context.k):
            chosen, gain = greedy_set(context.incumbent, value_of, moves, context.max_changes, used=used, skip=skip)
            if not chosen:
                break
            used.update(m.name for m in chosen)
            try:
                effective, config = vet_in_context(context, [ParamChange(name=m.name, value=m.value) for m in chosen])
            except SchemaError:
                continue
            self._proposed.add(msgspec.json.encode(config))
            title = f"oracle-guided (+{100 * gain:.2g}% true): " + ", ".join(f"{m.name} -> {m.value}" for m in chosen)
            proposal = Proposal(
                proposal_id=proposal_id_for(effective),
                title=clip_text(title, MAX_TITLE_CHARS),
                changes=effective,
                config=config,
            )
            self.register_arm(proposal.proposal_id, config)
            proposals.append(proposal)
        return proposals


def oracle_view(world: World, at_s: float = 0.0) -> Callable[[CascadeConfig], tuple[float, bool]]:
    """`OracleGuidedBrain`'s view of `world` at `at_s`: a config's expected north star and whether it meets the SLO.

    Called by `bench/tuning.py --ceiling` and `bench/arm_trace.py --ceiling`.
    """

    def view(config: CascadeConfig) -> tuple[float, bool]:
        expected = world.expected(config, at_s=at_s)
        return expected.north_star, meets_slo(world, expected)

    return view
