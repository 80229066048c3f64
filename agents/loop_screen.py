"""The loop's off-policy screen: registered candidates judged on the sidecars' exploration replays, before traffic.

What lives here: `screen_round`, run by the `registering` phase
(`agents.loop_plan.plan_round`) once every candidate is visible in the
serving state.  When sidecars replay this surface (`LoopInput.replay_active`),
it waits — up to `LoopSettings.ope_wait_s` — until each candidate has
`ope_min_requests` replayed requests logged by the incumbent, then applies
the Critic's rule 7 (`agents.critic.harm_verdict`) to each candidate's SNIPS
estimate of candidate minus incumbent clicks per shown slot
(`agents.ope_replay.harm_estimate`): a reliable estimate whose upper bound
is below −`harm_threshold` drops the candidate; an unreliable one, or none,
keeps it and says so.  The verdicts go out as a `critique` record of stage
`off_policy`.  Without replays the screen is skipped silently, so a loop
without replay sampling (and the simulated loop of the tuning bench) runs
exactly as before.

Who calls it: `agents.loop_plan.plan_round`.  Pure: no I/O, no awaits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from agents.critic import harm_verdict
from agents.loop_state import Action, LoopInput, LoopState
from agents.ope_replay import harm_estimate

if TYPE_CHECKING:
    from agents.loop_host import LoopHost


def screen_round(
    loop: LoopHost, state: LoopState, inp: LoopInput, versions: dict[str, int], out: list[Action]
) -> tuple[LoopState, bool]:
    """(next state, whether planning may go on): wait, judge, or pass through (see the module docstring).

    Not ready while the screen waits for rows.  When it drops every
    candidate, the returned state has no candidates left and the caller
    cools down.
    """
    s = loop.settings
    if state.screened or not inp.replay_active or s.ope_wait_s <= 0.0:
        return state, True
    if state.screen_until_ms == 0:
        state = msgspec.structs.replace(state, screen_until_ms=inp.now_ms + round(s.ope_wait_s * 1000))
    counts = {
        p.proposal_id: (inp.replay[versions[p.proposal_id]].requests if versions[p.proposal_id] in inp.replay else 0)
        for p in state.candidates
    }
    if min(counts.values(), default=0) < s.ope_min_requests and inp.now_ms < state.screen_until_ms:
        return state, False
    verdicts = []
    for proposal in state.candidates:
        rows = inp.replay.get(versions[proposal.proposal_id])
        estimate = harm_estimate(rows) if rows is not None else None
        missing = f"{counts[proposal.proposal_id]} replayed request(s) within {s.ope_wait_s:g} s"
        verdicts.append(harm_verdict(proposal, estimate, s.rules.harm_threshold, missing=missing))
    exp_tag = f"{loop.surface}-round{state.cycle}"
    payload = {
        "stage": "off_policy",
        "verdicts": [
            {
                "proposal_id": v.proposal_id,
                "config_version": versions[v.proposal_id],
                "kept": v.kept,
                "rule": v.rule,
                "reasons": list(v.reasons),
                "replayed_requests": counts[v.proposal_id],
            }
            for v in verdicts
        ],
    }
    out.append(loop.record(inp, "critique", exp_tag, payload, state))
    kept_ids = {v.proposal_id for v in verdicts if v.kept}
    kept = tuple(p for p in state.candidates if p.proposal_id in kept_ids)
    state = msgspec.structs.replace(state, screened=True, screen_until_ms=0, candidates=kept)
    if not kept:
        reasons = ["the off-policy screen dropped every candidate (estimated harm on the exploration replays)"]
        out.append(loop.record(inp, "decision", exp_tag, {"kind": "no_candidate", "reasons": reasons}, state))
    return state, bool(kept)
