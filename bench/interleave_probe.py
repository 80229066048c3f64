"""Probe: would team-draft interleaving tell a good one-trust-step move from a bad one with less traffic than A/B?

Why: the tuning bench's perfect-Actor bound (`bench/arm_trace.py --climb
--bound`) prices every step at the loop's A/B reads, and at those reads 0.9
of the oracle's lift is out of reach (README, "How well it tunes").  A more
sensitive read could move the bound if it could decide promotions, or, as a
screen before the A/B test, narrow the Actor's gap to the ceiling.  Interleaving (Radlinski,
Kurup and Joachims 2008; Chapelle et al. 2012) shows each request one list
merged from control's and the candidate's and credits each click to the list
that contributed the item; for ranking changes it is known to need far fewer
requests than an A/B test.  This probe measures, on the simulated worlds and
before anything is built, how much less, and whether it agrees in sign with
the A/B north star (clicks per request in every shipped scenario).

For one world (scenario, seed) and every one-trust-step move of one parameter
from the start config (`_tuning_ceiling.every_single_move`, up and down):

- the true A/B lift Δ = E[B] / E[A] − 1 (`World.expected`, the oracle view);
- interleaving: per prototype and exploration draw, `--sequences` team-draft
  merges of A's and B's shown lists (the world's own plans); the click model
  (`simulator.plans.truth`, with crowding by the slots above) on each merged
  list; `--requests` simulated requests (users drawn by activity, their click
  multipliers applied, one merge drawn per request); per request the credit
  d = clicks on B's items − clicks on A's;
- z-scores at the requests of one horizon of the loop (all of the surface's
  traffic, as the loop's one-arm experiment): interleaving's
  z = mean(d) / (sd(d) / √n), A/B's z = 2.80 · Δ / MDE with the loop's
  measured one-arm MDE (80% power at two-sided α = 0.05 is z = 2.80; the MDE
  is the loop's own planned one, measured as `--bound` does, or `--mde`);
- the traffic factor (z_interleaving / z_AB)²: how many times fewer requests
  interleaving needs for the same evidence.

Moves of `re_rank.list_size` are left out (a merged list has one length;
interleaving cannot read a list-length change), and so are latency's effects
(one merged list runs both cascades).  Sponsored slots are merged like any
item.  The probe is an analysis, not a method: it reads the oracle.

Run: `.venv/bin/python bench/interleave_probe.py --scenario apparel_core --seed 0 [--requests 200000]
[--sequences 16] [--mde 0.0184]`.  Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from _tuning_ceiling import every_single_move, moved, oracle_view
from _tuning_world import bench_world
from arm_trace import OVERESTIMATE_NOTE, loop_mde
from numpy.typing import NDArray

from agents.critic import CriticRules
from schemas.config import CascadeConfig
from simulator.plans import Plan, truth
from simulator.world import World

I64 = NDArray[np.int64]
F64 = NDArray[np.float64]
Z_POWER: Final = 2.80  # 1.96 + 0.84: the z a true effect of one MDE reaches on average (80% power, α = 0.05)
MIN_LIFT: Final = 0.0025  # moves with a smaller true |lift| are left out of the sign agreement (noise in both)
SKIPPED: Final = ("re_rank.list_size",)


def team_draft(a: I64, b: I64, rng: np.random.Generator) -> tuple[I64, I64]:
    """Team-draft merge of two ranked lists of item rows: (merged rows, team per slot: 0 = A, 1 = B).

    The team with fewer picks so far picks next (a coin decides a tie); it
    adds its highest-ranked item not already shown.  The merged list is as
    long as the shorter input.  Called by `merged_plans`; pure but for `rng`.
    """
    length = min(a.size, b.size)
    rows = np.full(length, -1, dtype=np.int64)
    team = np.zeros(length, dtype=np.int64)
    shown: set[int] = set()
    picks = [0, 0]
    heads = [0, 0]
    lists = (a, b)
    for k in range(length):
        side = int(rng.random() < 0.5) if picks[0] == picks[1] else int(picks[1] < picks[0])
        for candidate in (side, 1 - side):
            items = lists[candidate]
            while heads[candidate] < items.size and int(items[heads[candidate]]) in shown:
                heads[candidate] += 1
            if heads[candidate] < items.size:
                side = candidate
                break
        else:
            return rows[:k], team[:k]
        item = int(lists[side][heads[side]])
        rows[k], team[k] = item, side
        shown.add(item)
        picks[side] += 1
    return rows, team


@dataclass(frozen=True, slots=True)
class Merged:
    """Every prototype's merged lists (P, M, L) with each slot's team and click probability (multiplier 1)."""

    rows: I64
    team: I64
    click_p: F64


def merged_plans(world: World, a: Plan, b: Plan, week: int, sequences: int, seed: int) -> Merged:
    """`sequences` team-draft merges per prototype and exploration draw of `a`'s and `b`'s shown lists.

    Uses the world's week state and the real click model (`simulator.plans.truth`) on the merged lists, so
    crowding counts the slots above each merged slot.  Called by `probe` and `bench/_screen.py`.
    """
    n_protos = a.rows.shape[0]
    draws = max(a.rows.shape[1], b.rows.shape[1])
    length = max(a.rows.shape[2], b.rows.shape[2])
    rows = np.full((n_protos, draws * sequences, length), -1, dtype=np.int64)
    team = np.zeros_like(rows)
    rng = np.random.default_rng([seed, 97])
    for p in range(n_protos):
        for r in range(draws):
            ra = a.rows[p, r % a.rows.shape[1]]
            rb = b.rows[p, r % b.rows.shape[1]]
            ra, rb = ra[ra >= 0], rb[rb >= 0]
            for s in range(sequences):
                m_rows, m_team = team_draft(ra, rb, rng)
                rows[p, r * sequences + s, : m_rows.size] = m_rows
                team[p, r * sequences + s, : m_team.size] = m_team
    valid = rows >= 0
    protos = np.arange(n_protos, dtype=np.int64)
    click, _, _ = truth(world.scenario, world.prototypes, world._week(week), protos, rows, valid)
    return Merged(rows, np.where(valid, team, -1), click)


def credits(world: World, merged: Merged, requests: int, seed: int) -> F64:
    """Per simulated request: clicks on B's items − clicks on A's (users by activity, their multipliers).

    Called by `probe` and `bench/_screen.py`; `requests` users are drawn with the world's own activity weights.
    """
    rng = np.random.default_rng([seed, 98])
    users = world._draw_users(rng, requests)
    protos = world.users.prototype[users]
    pick = rng.integers(merged.rows.shape[1], size=requests)
    q = np.minimum(merged.click_p[protos, pick] * world.users.multiplier[users][:, None], 1.0)
    clicks = rng.random(q.shape) < q
    sign = np.where(merged.team[protos, pick] == 1, 1.0, np.where(merged.team[protos, pick] == 0, -1.0, 0.0))
    out: F64 = (clicks * sign).sum(axis=1)
    return out


@dataclass(frozen=True, slots=True)
class MoveRead:
    """One move: its true A/B lift, interleaving's mean credit per request (sd, and the probe's own standard
    error of the mean), and both z at one horizon."""

    name: str
    value: object
    lift: float
    credit_mean: float
    credit_sd: float
    credit_se: float
    z_interleaving: float
    z_ab: float

    @property
    def factor(self) -> float:
        """How many times fewer requests interleaving needs for the same z (its z over A/B's, squared)."""
        return (self.z_interleaving / self.z_ab) ** 2 if self.z_ab else math.nan


def probe(
    world: World,
    start: CascadeConfig,
    rules: CriticRules,
    *,
    horizon_requests: float,
    mde: float,
    requests: int,
    sequences: int,
    seed: int,
) -> list[MoveRead]:
    """Every one-trust-step move from `start`, read both ways (module docstring).  Called by `main`."""
    view = oracle_view(world)
    reads: list[MoveRead] = []
    plan_a = world._plan(start, 0)
    for move in every_single_move(start, lambda c: view(c)[0], rules.trust, rules.guardrails):
        config = moved(start, [move])
        if config is None or move.name in SKIPPED:
            continue
        merged = merged_plans(world, plan_a, world._plan(config, 0), 0, sequences, seed)
        d = credits(world, merged, requests, seed)
        mean, sd = float(d.mean()), float(d.std(ddof=1))
        z_il = mean / (sd / math.sqrt(horizon_requests)) if sd > 0 else 0.0
        se = sd / math.sqrt(requests)
        reads.append(MoveRead(move.name, move.value, move.gain, mean, sd, se, z_il, Z_POWER * move.gain / mde))
    return reads


def summary(reads: Sequence[MoveRead]) -> dict[str, float | int]:
    """How interleaving's sign compares with the A/B lift's, on the clear moves, and its traffic factor.

    A move is clear when its true |lift| is at least `MIN_LIFT` and the probe's own estimate of its credit is at
    least two standard errors from 0 (so the probe's sampling noise does not count as disagreement).  As a screen
    before an A/B test: the share of clear gains interleaving passes (credit > 0) and of clear losses it passes.
    """
    clear = [r for r in reads if abs(r.lift) >= MIN_LIFT and abs(r.credit_mean) >= 2.0 * r.credit_se]
    agree = [r for r in clear if math.copysign(1.0, r.credit_mean) == math.copysign(1.0, r.lift)]
    gains = [r for r in clear if r.lift > 0]
    losses = [r for r in clear if r.lift < 0]
    return {
        "moves": len(reads),
        "clear_moves": len(clear),
        "sign_agreement": len(agree) / len(clear) if clear else math.nan,
        "gains": len(gains),
        "gains_passed": sum(r.credit_mean > 0 for r in gains),
        "losses": len(losses),
        "losses_passed": sum(r.credit_mean > 0 for r in losses),
        "median_factor": statistics.median(r.factor for r in clear) if clear else math.nan,
        "median_factor_gains": statistics.median(r.factor for r in gains) if gains else math.nan,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, measure the loop's MDE (unless given), read every move both ways, print a table and JSON."""
    parser = argparse.ArgumentParser(prog="bench/interleave_probe.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="apparel_core")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--days", type=float, default=28.0, help="the budget the loop's horizon derives from")
    parser.add_argument("--requests", type=int, default=200_000, help="simulated requests per move")
    parser.add_argument("--sequences", type=int, default=16, help="team-draft merges per prototype list")
    parser.add_argument("--mde", type=float, default=None, help="the loop's one-arm MDE (default: measured)")
    args = parser.parse_args(argv)
    if args.requests < 2 or args.sequences < 1:
        parser.error("--requests must be >= 2 and --sequences >= 1")
    bw = bench_world(args.scenario, args.seed, args.days)
    mde = args.mde
    if mde is None:
        mde, overestimate = loop_mde(bw.run_loop())
        if mde is None:
            parser.error("the loop planned no experiment: pass --mde")
        if overestimate:
            print(OVERESTIMATE_NOTE)
    horizon_requests = bw.scenario.requests_per_s * bw.preset.policy.horizon_s
    reads = probe(
        bw.world,
        bw.start,
        bw.preset.settings.rules,
        horizon_requests=horizon_requests,
        mde=mde,
        requests=args.requests,
        sequences=args.sequences,
        seed=args.seed,
    )
    print(
        f"{bw.scenario.name} seed {args.seed}: one horizon = {horizon_requests:,.0f} requests, one-arm MDE "
        f"{100 * mde:.2f}%"
    )
    print(f"{'move':<48} {'A/B lift':>9} {'credit/req':>11} {'z A/B':>7} {'z inter':>8} {'factor':>7}")
    for r in sorted(reads, key=lambda r: r.lift, reverse=True):
        print(
            f"{r.name + ' -> ' + str(r.value):<48} {100 * r.lift:+8.2f}% {r.credit_mean:+11.5f} {r.z_ab:+7.2f} "
            f"{r.z_interleaving:+8.2f} {r.factor:7.1f}"
        )
    result = {"scenario": bw.scenario.name, "seed": args.seed, "mde": mde, **summary(reads)}
    print(json.dumps(result, allow_nan=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
