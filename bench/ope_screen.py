"""The Critic's off-policy screen on exploration replays, in the demo's world: what it costs and what it can tell.

For `--requests` requests of the demo world (`apparel_core`, seed 7) served by
the demo's starting config (`examples/start_no_diversity.json`) at each
`--eps` exploration rate, the sidecar's replay (`serving_sidecar.replay.
target_probabilities`) is run for a set of one-step candidates, the simulated
users click (`World.respond`), and the rows (`agents.ope_replay`) give the
screen's SNIPS estimate of candidate minus incumbent clicks per shown slot.

- **Cost**: the replay's time per request and candidate against the
  cascade's own `rank` on the same requests in the same run (a ratio: this
  machine is shared), i.e. what a sampled request adds to the ranker.
- **Verdicts**: per candidate the estimate, its 95% interval, whether the
  reliability rule lets it count as evidence (and why not), the screen's
  verdict, and the candidate's true change in clicks per shown slot from the
  world's oracle (`World.expected`, never shown to the agents) for reference.

    .venv/bin/python bench/ope_screen.py            # 10,000 requests per rate (~30 s)
    .venv/bin/python bench/ope_screen.py --quick    # 300

The last stdout line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from agents.critic import harm_verdict
from agents.ope_replay import harm_estimate, replay_rows
from schemas.config import CascadeConfig, validate_config
from schemas.replay import ReplayRecord
from serving_sidecar.cascade import rank
from serving_sidecar.replay import ReplaySettings, target_probabilities
from serving_sidecar.tracking import TrackingToken
from simulator.scenario import load_scenario
from simulator.world import Expected, World

START = Path(__file__).resolve().parent.parent / "examples" / "start_no_diversity.json"
T0_MS = 1_764_000_000_000


def with_re_rank(config: CascadeConfig, **changes: Any) -> CascadeConfig:
    """`config` with re-rank fields changed (validated)."""
    return validate_config(msgspec.structs.replace(config, re_rank=msgspec.structs.replace(config.re_rank, **changes)))


def candidates_for(start: CascadeConfig) -> dict[str, CascadeConfig]:
    """One-step moves of the kind the Actor proposes from the demo's start (diversity, list length, ranking)."""
    rank_weights = msgspec.structs.replace(
        start.rank, objective_weights=msgspec.structs.replace(start.rank.objective_weights, conversion=2.0)
    )
    return {
        "mmr_lambda 1.0->0.85": with_re_rank(start, mmr_lambda=0.85),
        "max_per_category 6->3": with_re_rank(start, max_per_category=3),
        "list_size 12->9": with_re_rank(start, list_size=9),
        "near_duplicate_threshold 1.0->0.9": with_re_rank(start, near_duplicate_threshold=0.9),
        "rank conversion 3.0->2.0": validate_config(msgspec.structs.replace(start, rank=rank_weights)),
    }


def per_slot(expected: Expected) -> float:
    """Clicks per shown item: the unit of the screen's estimate."""
    return expected.clicks / expected.impressions


def run_rate(world: World, start: CascadeConfig, eps: float, requests: int, seed: int) -> dict[str, Any]:
    """Serve `requests` with `start` at exploration `eps`, replay every candidate, judge each; one rate's figures."""
    logging = with_re_rank(start, exploration_rate=eps)
    moves = {name: with_re_rank(c, exploration_rate=eps) for name, c in candidates_for(start).items()}
    rng = np.random.default_rng(seed)
    records: list[ReplayRecord] = []
    # the sidecar's own recorder joins the clicks and builds the records (everything sampled, no window)
    recorder = ReplaySettings(sample_rate=1.0, attribution_s=0.0).build(records.append)
    rank_s = replay_s = 0.0
    for i in range(requests):
        user = world.draw_user(rng)
        cands = world.candidates(user, at_s=0.0)
        began = time.perf_counter()
        ranked = rank(cands, logging, rng)
        rank_s += time.perf_counter() - began
        began = time.perf_counter()
        targets = [(v, target_probabilities(cands, c, ranked.indices)) for v, c in enumerate(moves.values(), start=2)]
        replay_s += time.perf_counter() - began
        token = TrackingToken(f"r{i}", user.user_id, user.cohort, "home", "control", 1, T0_MS)
        ids = [str(x) for x in cands.item_ids[ranked.indices].tolist()]
        recorder.record(token, ids, ranked.propensities.tolist(), targets, now_s=0.0)
        for item, position in world.respond(user, ranked, cands, at_s=0.0, rng=rng).clicks:
            recorder.click(token.click(str(item), int(position), T0_MS))
        recorder.flush(0.0)
    base = world.expected(logging, at_s=0.0)
    verdicts = []
    for v, (name, config) in enumerate(moves.items(), start=2):
        estimate = harm_estimate(replay_rows(records, v, 1))
        truth = world.expected(config, at_s=0.0)
        proposal_stub = msgspec.defstruct("P", [("proposal_id", str)])(name)
        verdict = harm_verdict(proposal_stub, estimate, 0.0)  # type: ignore[arg-type]
        verdicts.append(
            {
                "candidate": name,
                "estimate": None if estimate is None else round(estimate.value, 5),
                "ci95": None if estimate is None else [round(estimate.lower, 5), round(estimate.upper, 5)],
                "reliable": None if estimate is None else estimate.reliable,
                "why": "" if estimate is None else estimate.candidate.reason.split(" [")[0],
                "kept": verdict.kept,
                "true_clicks_per_slot_change": round(per_slot(truth) - per_slot(base), 5),
            }
        )
    return {
        "exploration_rate": eps,
        "requests": requests,
        "replay_over_rank_per_candidate": round(replay_s / len(moves) / rank_s, 3),
        "rank_ms_per_request": round(1000 * rank_s / requests, 3),
        "replay_ms_per_request_and_candidate": round(1000 * replay_s / requests / len(moves), 3),
        "verdicts": verdicts,
        "reliable": sum(1 for v in verdicts if v["reliable"]),
    }


def main() -> None:
    """Run every rate and print a table per rate, then the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.02, 0.1])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="300 requests per rate")
    args = parser.parse_args()
    requests = 300 if args.quick else args.requests
    world = World(load_scenario("apparel_core"), seed=7)
    start = msgspec.json.decode(START.read_bytes(), type=CascadeConfig)
    began = time.perf_counter()
    rates = [run_rate(world, start, eps, requests, args.seed) for eps in args.eps]
    for r in rates:
        cost = r["replay_ms_per_request_and_candidate"]
        print(
            f"exploration {r['exploration_rate']:g}, {r['requests']} requests: replay {cost} ms"
            f" per request and candidate = {r['replay_over_rank_per_candidate']}x the cascade's own rank"
            f" ({r['rank_ms_per_request']} ms); reliable estimates {r['reliable']} of {len(r['verdicts'])}"
        )
        for v in r["verdicts"]:
            ci = "-" if v["ci95"] is None else f"[{v['ci95'][0]:+.4f}, {v['ci95'][1]:+.4f}]"
            print(
                f"  {v['candidate']:<36} est {v['estimate']:+.4f} {ci} reliable={v['reliable']} kept={v['kept']}"
                f"  true {v['true_clicks_per_slot_change']:+.4f}  {v['why'][:90]}"
            )
    print(json.dumps({"bench": "ope_screen", "seconds": round(time.perf_counter() - began, 1), "rates": rates}))


if __name__ == "__main__":
    main()
