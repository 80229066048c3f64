"""The loop's learning step: Insight and Skill on a decided experiment, and the Critic's failure memory.

What lives here: `learn` (the terminal step of an experiment: the Insight
report with the brain's narrative and the running Pareto front of tried
configs, the Skillhub update, the failed moves remembered) and
`failure_memory` (the persisted `FailureRec`s as the Critic's
`FailureMemory`).

Who calls it: `agents.loop.AgentLoop` (`learn` when an experiment ends) and
`agents.loop_propose.propose_round` on its behalf (`failure_memory` before
each critique).  The only await is the brain's
`summarise`; no other I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import msgspec

from agents.brain import Brain, InsightContext, ParamChange
from agents.critic import FailedMove, FailureMemory, FailureRecord
from agents.experiment import ExperimentState
from agents.insight import (
    ALL_COHORTS,
    ArmChanges,
    effect_readings,
    experiment_insights,
    update_front,
)
from agents.loop_baseline import pre_period_totals
from agents.loop_records import agent_record
from agents.loop_state import Action, FailedMoveRec, FailureRec, LoopInput, LoopState, UpsertSkills
from agents.skills import changed_skills, update_skills
from schemas.metrics import ArmTotals

log = logging.getLogger(__name__)


def failure_memory(failures: Sequence[FailureRec]) -> FailureMemory:
    """The Critic's memory of failed moves (called by `agents.loop_propose.propose_round` before each critique)."""
    return FailureMemory(
        records=tuple(
            FailureRecord(
                moves=tuple(FailedMove(m.name, m.before, m.after) for m in f.moves),
                reason=f.reason,
                experiment_id=f.experiment_id,
            )
            for f in failures
        )
    )


async def learn(
    brain: Brain,
    surface: str,
    objective: str,
    state: LoopState,
    exp: ExperimentState,
    arms: Mapping[str, ArmTotals],
    inp: LoopInput,
    out: list[Action],
) -> LoopState:
    """Insight + Skill on the decided experiment `exp`; appends the records and Skillhub upserts to `out`.

    Called by `AgentLoop` on the step an experiment ends (before the
    cool-down): returns the state with the losers' moves added to the failure
    memory and the experiment's outcome to the history.
    """
    control = inp.serving.configs.get(exp.plan.control.config_version) or inp.serving.control
    assert control is not None  # noqa: S101 - checked by step
    by_id = {p.proposal_id: p for p in state.candidates}
    cohorts = cohort_reads(exp.plan.arm_ids, inp.cohorts)
    arm_changes = [
        ArmChanges(arm_id=t.arm_id, changes=by_id[t.proposal_id].changes)
        for t in exp.plan.treatments
        if t.proposal_id in by_id
    ]
    report = experiment_insights(
        experiment_id=exp.experiment_id,
        surface=surface,
        control_config=control,
        control_arm=exp.plan.control.arm_id,
        arms=arm_changes,
        totals={ALL_COHORTS: arms, **cohorts},
        objective=objective,
        at_ms=inp.now_ms,
        paired=exp.plan.paired,
        covariates={
            ALL_COHORTS: pre_period_totals(exp.plan, inp.totals),
            **{c: pre_period_totals(exp.plan, by_arm) for c, by_arm in inp.cohorts.items() if c in cohorts},
        },
    )
    front, compared = update_front(state.front, report, objective, control_id=exp.plan.control.arm_id)
    narrative = None
    changes: tuple[ParamChange, ...] = tuple(c for a in arm_changes for c in a.changes)[:64]
    try:
        narrative = await brain.summarise(
            InsightContext(
                surface=surface,
                experiment_id=exp.experiment_id,
                decision=exp.status,
                changes=changes,
                effects=effect_readings(report)[:32],
            )
        )
    except Exception as err:  # a brain must not raise; the statistical report stands alone
        log.warning("brain summarise raised %s", type(err).__name__)
    out.append(
        agent_record(
            surface,
            inp,
            "insight",
            exp.experiment_id,
            {
                "status": exp.status,
                "outcome": exp.outcome,
                "insights": report.insights,
                "skipped": report.skipped,
                "summary": narrative,
                "pareto_front": [{"config_id": p.config_id, "metrics": dict(p.metrics)} for p in front],
                "pareto_metrics": list(compared),
            },
            state,
        )
    )
    updated, skill_changes = update_skills(inp.skills, report.insights, inp.now_ms)
    touched = changed_skills(updated, skill_changes)
    if touched:
        out.append(UpsertSkills(touched))
    out.append(agent_record(surface, inp, "skill", exp.experiment_id, {"changes": skill_changes}, state))
    failures = state.failures
    if exp.status in ("stopped_loser", "rolled_back"):
        for a in arm_changes:
            arm = exp.arm(a.arm_id)
            if arm.status in ("stopped_loser", "rolled_back", "stopped_futile"):
                rec = FailureRecord.from_changes(
                    control, a.changes, reason=arm.reason[:200], experiment_id=exp.experiment_id
                )
                failures = (
                    *failures,
                    FailureRec(
                        moves=tuple(FailedMoveRec(m.name, m.before, m.after) for m in rec.moves),
                        reason=rec.reason,
                        experiment_id=rec.experiment_id,
                    ),
                )
    history = (*state.history, f"{exp.experiment_id}:{exp.status}")[-50:]
    return msgspec.structs.replace(state, failures=failures[-100:], history=history, front=front)


def cohort_reads(
    arm_ids: Sequence[str], cohorts: Mapping[str, Mapping[str, ArmTotals]]
) -> dict[str, dict[str, ArmTotals]]:
    """cohort → the experiment's arms' totals, for Insight's per-cohort reads beside the pooled one.

    Called by `learn`.  Only when the traffic holds two or more cohorts: a
    single cohort is the pooled read again.  A cohort named like the pooled
    read (`ALL_COHORTS`) is left out rather than allowed to replace it.
    """
    named = {c: by_arm for c, by_arm in cohorts.items() if c != ALL_COHORTS}
    if len(named) < 2:
        return {}
    return {c: {a: by_arm[a] for a in arm_ids if a in by_arm} for c, by_arm in sorted(named.items())}
