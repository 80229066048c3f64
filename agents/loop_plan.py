"""The planning phases of the loop: the registered candidates → the Online power gate's plan → the approval release.

What lives here: `registered_versions` (the config version each kept
candidate was registered at), `plan_round` (phase `registering`: once every
candidate is visible in the serving state and through the off-policy screen
when sidecars replay the surface, `agents.loop_screen`, the Online agent plans on the
incumbent's baseline since the last round, `agents.loop_baseline`, its
variance projected to the horizon by the variance curve the last
experiments' reads followed or, before any, by the persistent share the
window's two parts show (`agents.stats.persistence`): refuse,
hold for approval — or for the A/A pre-period, whose allocation it holds —
or allocate) and `approve_round` (phase `pending_approval`: releases the
held allocation once the pre-period is over and, when the plan needs one,
`rectune approve` was given).

Who calls it: `agents.loop.AgentLoop.step` (phases `registering` and
`pending_approval`), passing itself as a `agents.loop_host.LoopHost`: the
phases use the loop's Online agent, settings and its emit, baseline and
cool-down helpers.  Pure functions: no I/O and no awaits.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import msgspec

from agents.experiment import Candidate
from agents.loop_baseline import baseline_parts, pool_persistent_share, pre_period_allocation
from agents.loop_screen import screen_round
from agents.loop_state import Action, LoopInput, LoopState
from agents.online import baseline_from_totals, persistent_share_of
from schemas.config_log import ServingState

if TYPE_CHECKING:
    from agents.loop_host import LoopHost


def registered_versions(state: LoopState, serving: ServingState) -> dict[str, int]:
    """Proposal id → the first config version after `state.registered_after` holding its config (none: not yet)."""
    found: dict[str, int] = {}
    for p in state.candidates:
        for version in sorted(serving.configs):
            if version > state.registered_after and serving.configs[version] == p.config:
                found[p.proposal_id] = version
                break
    return found


def plan_round(loop: LoopHost, state: LoopState, inp: LoopInput, out: list[Action]) -> LoopState:
    """Phase `registering` of `loop`: plan the experiment once every candidate is registered (see the module docstring).

    Returns `state` unchanged while a candidate is not visible yet or the
    baseline is empty; cools down when the incumbent moved meanwhile or the
    plan was refused; else `running` or `pending_approval` with the plan.
    """
    versions = registered_versions(state, inp.serving)
    missing = [p for p in state.candidates if p.proposal_id not in versions]
    if missing:  # a crash between registering and planning: register what is not there yet
        return state
    if inp.serving.control_version != state.control_version:
        return loop.cool(state, inp)  # the incumbent moved meanwhile (a human change): start over
    state, ready = screen_round(loop, state, inp, versions, out)
    if not ready:
        return state if state.candidates else loop.cool(state, inp)
    baseline_arms = loop.baseline_arms(inp, state)
    if not baseline_arms:
        return state
    seconds = max(t.windows for t in baseline_arms) * loop.settings.window_s
    traffic, baseline = baseline_from_totals(baseline_arms, loop.online.policy.primary, seconds)
    state = msgspec.structs.replace(state, curve_reference=baseline.variance_per_request, curve_points=())
    curve = state.variance_curve()
    window_s = baseline.window_s or seconds
    if curve is not None:
        # what the last experiments' reads showed (CUPED-adjusted when they were), relative to their baseline
        baseline = dataclasses.replace(
            baseline,
            variance_per_request=baseline.variance_per_request * curve.at(window_s),
            persistent_share=min(1.0, curve.share_at(window_s)),
        )
    else:  # no experiment has ended yet: the persistent share the window's two parts show, pooled over rounds
        min_part = loop.settings.min_baseline_requests / 2
        parts = baseline_parts(inp.totals, state.baseline_mark, state.baseline_mid, min_part)
        share, reads = pool_persistent_share(
            state.persistent_share, state.persistent_reads, persistent_share_of(parts, loop.online.policy.primary)
        )
        state = msgspec.structs.replace(state, persistent_share=share, persistent_reads=reads)
        if reads > 0:
            # returning users: the part of the variance they carry does not shrink with a longer horizon
            baseline = dataclasses.replace(baseline, persistent_share=share)
    pre_s = loop.settings.pre_period_s
    candidates = [
        Candidate(proposal_id=p.proposal_id, config_version=versions[p.proposal_id], title=p.title)
        for p in state.candidates
    ]
    hold = (
        f"A/A pre-period of {pre_s:g} s first: every arm serves the incumbent (same salt, final-stage lanes), "
        "its per-arm bucket sums become the CUPED covariates"
        + (
            f"; planned on the variance the last {curve.reads} experiment(s)' adjusted reads showed "
            f"({curve.at(window_s):.2f}x the raw variance per request at this window)"
            if curve is not None
            else ""
        )
        if pre_s > 0.0
        else None
    )
    exp, decisions = loop.online.plan(candidates, state.control_version, traffic, baseline, inp.now_ms, hold=hold)
    if hold is not None and exp is not None and exp.status == "pending_approval":
        aa = pre_period_allocation(exp.plan)
        decisions = [
            msgspec.structs.replace(d, allocation=aa) if d.kind == "hold_for_approval" else d for d in decisions
        ]
    state = msgspec.structs.replace(
        state,
        pre_version=inp.serving.version,
        pre_period_until_ms=inp.now_ms + round(pre_s * 1000) if hold is not None else 0,
    )
    loop.emit(state, inp, decisions, out)
    if exp is None or exp.terminal:
        return loop.cool(state, inp)
    kept = {t.proposal_id for t in exp.plan.treatments}
    state = msgspec.structs.replace(
        state,
        experiment=exp.to_bytes(),
        candidates=tuple(p for p in state.candidates if p.proposal_id in kept),
        phase="running" if exp.status == "running" else "pending_approval",
    )
    return state


def approve_round(loop: LoopHost, state: LoopState, inp: LoopInput, out: list[Action]) -> LoopState:
    """Phase `pending_approval` of `loop`: release the held allocation once approved and the pre-period is over."""
    exp = state.experiment_state()
    if exp is None:
        return loop.cool(state, inp)
    if inp.now_ms < state.pre_period_until_ms:
        return state  # the A/A pre-period is still measuring the covariates
    if exp.plan.approval_required and exp.experiment_id not in inp.approved:
        return state
    reason = (
        "approved: releasing the held allocation"
        if exp.plan.approval_required
        else "A/A pre-period over: releasing the first stage"
    )
    exp, decisions = loop.online.approve(exp, inp.now_ms, reason=reason)
    loop.emit(state, inp, decisions, out)
    return msgspec.structs.replace(state, experiment=exp.to_bytes(), phase="running")
