"""The idle phase of the loop: one proposal round (propose → critique → register the kept candidates).

What lives here: `propose_round`, the step `AgentLoop` takes in phase
`idle` once the cool-down is over and the incumbent has baseline traffic:
the Actor proposes (in the Skillhub's search space, widened to every
parameter when that space is spent or exhausted), the brain and the
Critic's rules judge (`agents.critic.critique`, with the latency model
refitted to what the arms showed, `agents.loop_latency`, and the failure
memory, `agents.loop_learn`), and every kept candidate becomes an
`AppendConfig` of kind "config"; the proposal and critique records go out
with them.  The state moves to `registering`, or cools down when the Critic
kept none.

Who calls it: `agents.loop.AgentLoop.step` (phase `idle`), passing itself
as a `agents.loop_host.LoopHost`: the round uses the loop's Actor, brain,
settings and its record, baseline, reading and cool-down helpers.  The only
awaits are the brain's calls; no other I/O.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import msgspec

from agents.brain import MAX_TITLE_CHARS, CallRecord, CritiqueContext, ProposalContext, clip_text
from agents.critic import critique
from agents.loop_baseline import baseline_marks
from agents.loop_latency import incumbent_p99, latency_model
from agents.loop_learn import failure_memory
from agents.loop_state import Action, AppendConfig, LoopInput, LoopState
from agents.skill_search import search_parameters, search_space, skill_notes

if TYPE_CHECKING:
    from agents.loop_host import LoopHost

log = logging.getLogger(__name__)


def _call_audit(call: CallRecord) -> dict[str, Any]:
    """A brain call's audit record for `rectune.decisions`, without its wall-clock latency.

    Records are identified by a hash of their content, so a step replayed from
    the same state must publish the same bytes; the latency is in the logs.
    """
    audit: dict[str, Any] = msgspec.to_builtins(call)
    audit.pop("latency_s", None)
    return audit


async def propose_round(loop: LoopHost, state: LoopState, inp: LoopInput, out: list[Action]) -> LoopState:
    """One proposal round of `loop` (phase `idle`); appends its records and config appends to `out`.

    Returns `state` unchanged while the cool-down runs or the incumbent has
    no baseline traffic yet; else the next state: `registering` with the kept
    candidates, or cooled down (`AgentLoop.cool`) when the Critic kept none.
    """
    s = loop.settings
    if inp.now_ms < state.cooldown_until_ms:
        return state
    baseline = loop.baseline_arms(inp, state)
    if not baseline:
        return state
    incumbent = inp.serving.control
    assert incumbent is not None  # noqa: S101 - checked by step
    cycle = state.cycle + 1
    # the window the gate will plan on, split here: its two parts measure the variance's persistent share
    state = msgspec.structs.replace(state, cycle=cycle, baseline_mid=baseline_marks(inp.totals))
    exp_tag = f"{loop.surface}-round{cycle}"
    space = search_space(inp.skills, loop.surface, incumbent=incumbent)
    skill_parameters = search_parameters(space)
    # A round confined to the Skillhub's parameters that ended without a promotion means the skills'
    # directions are spent for now: search every parameter (skills still inform the Actor through their
    # notes) until a promotion changes the incumbent, instead of spending round after round on them.
    widened_why = (
        "the last round in the Skillhub's parameters ended without a promotion"
        if skill_parameters and state.explore_wide
        else ""
    )
    # The Critic's latency rule, refitted to what the arms showed, is built before the Actor proposes so the
    # Actor is told what will be checked (a candidate over the budget only wastes a slot of the round).
    latency = s.latency
    if s.fit_latency:
        latency = latency_model(
            s.latency,
            state.latency_seen,
            inp.serving.configs,
            incumbent=incumbent,
            baseline=baseline,
            min_requests=s.min_latency_requests,
            surface=loop.surface,
        )
    measured_p99 = incumbent_p99(state.latency_seen, inp.serving.control_version, baseline, s.min_latency_requests)
    context = ProposalContext(
        surface=loop.surface,
        incumbent=incumbent,
        k=s.k,
        metrics=loop.metrics(inp),
        skills=tuple(skill_notes(inp.skills, loop.surface)),
        parameters=() if widened_why else skill_parameters,
        max_changes=s.max_changes,
        guardrails=s.rules.guardrails,
        latency=latency.limit(s.rules.latency_budget_ms, measured_p99),
    )
    result = await loop.actor.propose(context)
    calls = [result.brain_call]
    widened_from = list(skill_parameters)
    if not result.proposals and context.parameters:
        # The Skillhub's space can be exhausted (its parameters cannot move any further in their direction
        # within the trust region): search every parameter rather than stall the surface.
        context = msgspec.structs.replace(context, parameters=())
        result = await loop.actor.propose(context)
        calls.append(result.brain_call)
        widened_why = "the Skillhub's parameters cannot move any further"
    state = msgspec.structs.replace(state, round_restricted=bool(context.parameters))
    payload: dict[str, Any] = {
        "proposals": [{"proposal_id": p.proposal_id, "title": p.title, "changes": p.changes} for p in result.proposals],
        "dropped": [{"index": d.index, "reason": d.reason} for d in result.dropped],
        "usage": result.usage,
        # the brain's own audit of its calls: what it refused inside its answer (a Gemini proposal out of bounds,
        # say) never reaches the Actor's `dropped`, and the history must show it
        "brain_calls": [_call_audit(c) for c in calls if c is not None],
    }
    if widened_from and not context.parameters:
        payload["widened_from"] = widened_from
        payload["widened_because"] = widened_why
    out.append(loop.record(inp, "proposal", exp_tag, payload, state))
    verdicts_brain = []
    critique_call = None
    if result.proposals:
        try:
            verdicts_brain = await loop.brain.critique(
                CritiqueContext(surface=loop.surface, incumbent=incumbent, candidates=result.proposals)
            )
        except Exception as err:  # a brain must not raise; if one does, it only loses its say
            log.warning("brain critique raised %s", type(err).__name__)
        critique_call = loop.brain.last_call()
    verdicts = critique(
        result.proposals,
        incumbent,
        s.rules,
        latency_model=latency,
        failures=failure_memory(state.failures),
        brain_verdicts=verdicts_brain,
        surface=loop.surface,
        incumbent_p99_ms=measured_p99,
    )
    out.append(
        loop.record(
            inp,
            "critique",
            exp_tag,
            {
                "verdicts": [
                    {"proposal_id": v.proposal_id, "kept": v.kept, "rule": v.rule, "reasons": list(v.reasons)}
                    for v in verdicts
                ],
                "brain_calls": [_call_audit(critique_call)] if critique_call is not None else [],
            },
            state,
        )
    )
    kept_ids = {v.proposal_id for v in verdicts if v.kept}
    kept = tuple(p for p in result.proposals if p.proposal_id in kept_ids)
    if not kept:
        out.append(
            loop.record(inp, "decision", exp_tag, {"kind": "no_candidate", "reasons": ["critic kept none"]}, state)
        )
        return loop.cool(state, inp)
    out.extend(
        AppendConfig(
            kind="config",
            reason=clip_text(f"register candidate {p.proposal_id}: {p.title}", MAX_TITLE_CHARS * 2),
            config=p.config,
            proposal_id=p.proposal_id,
        )
        for p in kept
    )
    return msgspec.structs.replace(
        state,
        phase="registering",
        candidates=kept,
        screened=False,
        screen_until_ms=0,
        control_version=inp.serving.control_version,
        registered_after=inp.serving.version,
    )
