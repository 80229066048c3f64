"""Step 4 of `OnlineAgent.step`: the stage logic — ramp, promote the best winner at the final stage,
or end the experiment (every arm ended, or the horizon reached: first the final look, when the plan keeps
`final_alpha` for it).

Called by `agents.online.OnlineAgent.step`.
"""

from __future__ import annotations

import math
from collections.abc import Set as AbstractSet

import msgspec

from agents.experiment import (
    ArmRead,
    DecisionKind,
    ExperimentState,
    Figure,
    Status,
)
from agents.online_guard import _reallocate
from agents.online_ramp import _span
from agents.online_reads import _Arrays, _Log, _num, _spec
from agents.stats.distributions import two_sided_p
from agents.stats.multiple import holm

# ---- 4. stage logic


def _advance(
    state: ExperimentState,
    data: _Arrays,
    log: _Log,
    now_ms: int,
    winners: list[str],
    reads: list[ArmRead],
    *,
    held: AbstractSet[str] = frozenset(),
) -> ExperimentState:
    """Promote, end at the horizon, or ramp; arms in `held` (p99 reading over the SLO) are not promoted this step."""
    plan = state.plan
    active = [a for a in state.arms if a.status == "active"]
    if not active:
        rolled = any(a.status == "rolled_back" for a in state.arms)
        status: Status = "rolled_back" if rolled else "stopped_loser"
        why = "every treatment arm ended (" + "; ".join(f"{a.arm_id}: {a.status}" for a in state.arms) + ")"
        return _end(state, log, now_ms, status, "stop", [why, "the incumbent stays"])
    assert state.stage_started_ms is not None  # noqa: S101 - set at launch
    dwell_ok = now_ms - state.stage_started_ms >= plan.min_dwell_s[state.stage] * 1000.0
    stage_requests = min(
        data.requests(a.arm_id) - state.stage_start_requests[plan.arm_ids.index(a.arm_id)] for a in active
    )
    samples_ok = stage_requests >= plan.min_stage_requests[state.stage]
    active_winners = [w for w in winners if state.arm(w).status == "active"]
    live_winners = [w for w in active_winners if w not in held]
    if state.stage == plan.final_stage and live_winners and dwell_ok and samples_ok:
        by_id = {r.arm_id: r for r in reads}
        best = max(live_winners, key=lambda a: (by_id[a].difference, by_id[a].lower or -math.inf))
        return _promote(state, log, now_ms, best, by_id[best], live_winners)
    horizon_ms = (state.started_ms or 0) + plan.horizon_s * 1000.0
    if now_ms >= horizon_ms and state.stage == plan.final_stage and not live_winners and samples_ok:
        final = {a: p for a, p in _final_look(state, reads).items() if a not in held}
        if final:
            by_id = {r.arm_id: r for r in reads}
            best = max(final, key=lambda a: by_id[a].difference)
            return _promote(state, log, now_ms, best, by_id[best], list(final), final_look=final[best])
    if now_ms >= horizon_ms:
        extra = (
            [f"significant winner(s) {', '.join(live_winners)} not promoted: final stage dwell/samples not met"]
            if live_winners
            else []
        )
        held_winners = [w for w in active_winners if w in held]
        if held_winners:
            extra.append(
                f"winner(s) {', '.join(held_winners)} not promoted: p99 reads over the latency SLO "
                "(no breach shown, so not rolled back)"
            )
        return _end(
            state,
            log,
            now_ms,
            "stopped_horizon",
            "stop",
            [
                f"horizon of {_span(plan.horizon_s)} reached without a promotable winner",
                *extra,
                "no promotion: the incumbent stays",
            ],
        )
    if state.stage < plan.final_stage and dwell_ok and samples_ok:
        return _ramp(state, data, log, now_ms, stage_requests)
    return state


def _ramp(state: ExperimentState, data: _Arrays, log: _Log, now_ms: int, stage_requests: float) -> ExperimentState:
    plan = state.plan
    assert state.stage_started_ms is not None  # noqa: S101 - set at launch
    dwelt = (now_ms - state.stage_started_ms) / 1000.0
    nxt = state.stage + 1
    state = msgspec.structs.replace(
        state,
        stage=nxt,
        stage_started_ms=now_ms,
        stage_start_requests=tuple(data.requests(a) for a in plan.arm_ids),
    )
    state = _reallocate(state, now_ms)
    assert state.allocation is not None  # noqa: S101 - just set
    shares = "/".join(f"{100 * a.share:.3g}%" for a in state.allocation.arms)
    log.add(
        "ramp",
        [
            f"stage {nxt}/{len(plan.stages)} done: dwelt {_span(dwelt)} (min {_span(plan.min_dwell_s[nxt - 1])}), "
            f"{stage_requests:.0f} requests per treatment arm (min {plan.min_stage_requests[nxt - 1]:.0f}), "
            f"no guardrail breach",
            f"ramp to stage {nxt + 1}/{len(plan.stages)}: control/treatments {shares}",
        ],
        nxt,
        figures=(
            Figure.of("stage_share", plan.stages[nxt]),
            Figure.of("dwelt_s", dwelt),
            Figure.of("stage_requests", stage_requests),
        ),
        allocation=state.allocation,
    )
    return state


def _final_look(state: ExperimentState, reads: list[ArmRead]) -> dict[str, tuple[float, float]]:
    """Arms the fixed-horizon final look promotes: arm id → (two-sided p, Holm p), improvements only.

    One z-test per treatment arm on its last read (CUPED-adjusted when the
    read was), Holm across every arm launched at the plan's `final_alpha`
    (arms already ended, or without a read now, count as p = 1).  Called
    once, at the horizon, by `_advance`; the always-valid test ran at
    `alpha − final_alpha`, so the two together keep the family-wise α.
    """
    plan = state.plan
    if plan.final_alpha <= 0.0:
        return {}
    by_id = {r.arm_id: r for r in reads}
    order = [t.arm_id for t in plan.treatments]
    p_values = []
    for arm_id in order:
        read = by_id.get(arm_id)
        live = state.arm(arm_id).status == "active"
        p_values.append(two_sided_p(read.difference, read.difference_se**2) if read and live else 1.0)
    result = holm(p_values, plan.final_alpha)
    return {
        arm_id: (p, holm_p)
        for arm_id, p, holm_p, rejected in zip(order, p_values, result.adjusted, result.reject, strict=True)
        if rejected and by_id[arm_id].difference > 0.0
    }


def _promote(
    state: ExperimentState,
    log: _Log,
    now_ms: int,
    best: str,
    read: ArmRead,
    winners: list[str],
    *,
    final_look: tuple[float, float] | None = None,
) -> ExperimentState:
    plan = state.plan
    spec = _spec(plan, best)
    arms = tuple(
        msgspec.structs.replace(a, status="promoted", ended_ms=now_ms, reason="promoted")
        if a.arm_id == best
        else (
            msgspec.structs.replace(a, status="ended", ended_ms=now_ms, reason=f"{best} promoted")
            if a.status == "active"
            else a
        )
        for a in state.arms
    )
    others = [w for w in winners if w != best]
    evidence = (
        f"always-valid CS [{_num(read.lower)}, {_num(read.upper)}], Holm p={read.holm_p:.3g}"
        if final_look is None
        else f"fixed-horizon final look: z={read.difference / read.difference_se:.3g}, p={final_look[0]:.3g}, "
        f"Holm p={final_look[1]:.3g} at final_alpha={plan.final_alpha:g}; the always-valid test at "
        f"{plan.sequential_alpha:g} had not decided"
    )
    reasons = [
        f"promote {best} ({spec.proposal_id}, config {spec.config_version}): {plan.primary.name} "
        f"{read.treatment:.5g} vs {read.control:.5g}, difference {read.difference:+.4g} "
        f"({evidence}) at the final stage "
        f"after {_span((now_ms - (state.started_ms or now_ms)) / 1000.0)} of a {_span(plan.horizon_s)} horizon",
        *([f"also significant, smaller difference: {', '.join(others)}"] if others else []),
    ]
    state = msgspec.structs.replace(
        state, arms=arms, status="promoted", ended_ms=now_ms, outcome=reasons[0], allocation=None
    )
    log.add(
        "promote",
        reasons,
        state.stage,
        arm_id=best,
        config_version=spec.config_version,
        proposal_id=spec.proposal_id,
        reads=(read,),
        figures=(
            Figure.of("difference", read.difference),
            Figure.of("lift", math.nan if read.lift is None else read.lift),
            Figure.of("holm_p", read.holm_p if final_look is None else final_look[1]),
            Figure.of("elapsed_s", (now_ms - (state.started_ms or now_ms)) / 1000.0),
            *((Figure.of("final_look_p", final_look[0]),) if final_look is not None else ()),
        ),
        ends_experiment=True,
    )
    return state


def _end(
    state: ExperimentState, log: _Log, now_ms: int, status: Status, kind: DecisionKind, reasons: list[str]
) -> ExperimentState:
    arms = tuple(
        msgspec.structs.replace(a, status="ended", ended_ms=now_ms, reason=reasons[0]) if a.status == "active" else a
        for a in state.arms
    )
    state = msgspec.structs.replace(
        state, arms=arms, status=status, ended_ms=now_ms, outcome=reasons[0], allocation=None
    )
    log.add(kind, reasons, state.stage, ends_experiment=True)
    return state


def _end_if_horizon(state: ExperimentState, log: _Log, reasons: list[str], now_ms: int) -> ExperimentState:
    horizon_ms = (state.started_ms or 0) + state.plan.horizon_s * 1000.0
    if now_ms < horizon_ms:
        return state
    return _end(
        state,
        log,
        now_ms,
        "stopped_horizon",
        "stop",
        [*reasons, f"horizon of {_span(state.plan.horizon_s)} reached with no traffic read", "the incumbent stays"],
    )
