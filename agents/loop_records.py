"""What a step emits: the decision records of `rectune.decisions`, and the actions an Online decision implies.

What lives here: the record constants (`SCHEMA_VERSION`, `RECORD_TYPE`,
`AUTHOR`, `RecordKind`), `agent_record` (one `PublishRecord` with its
deterministic `record_id`) and `decision_actions` (an `agents.experiment.Decision`
→ its record, alert and config appends).

Who calls it: `agents.loop.AgentLoop` (`record`, `emit`).  The constants are
re-exported by `agents.loop` (`AUTHOR` is the writer's author name in
`agents.memory_ports`).  Pure functions: no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Final, Literal, TypeAlias

import msgspec

from agents.brain import clip_text
from agents.experiment import Decision
from agents.loop_state import Action, AppendConfig, LoopInput, LoopState, PublishAlert, PublishRecord
from schemas.alerts import Alert

SCHEMA_VERSION: Final = 1
RECORD_TYPE: Final = "agent_record"
AUTHOR: Final = "rectune-agents"
RecordKind: TypeAlias = Literal[
    "proposal", "critique", "allocation", "interim_read", "decision", "insight", "skill", "brain_call"
]


def agent_record(
    surface: str, inp: LoopInput, kind: RecordKind, experiment_id: str, payload: Any, state: LoopState
) -> PublishRecord:
    """One `rectune.decisions` record of `surface` (called by `AgentLoop.record` for every record a step emits).

    `record_id` hashes (surface, cycle, kind, experiment, payload), so a
    replayed outbox publishes the same id again.
    """
    body = msgspec.to_builtins(payload)
    key = f"{surface}|{state.cycle}|{kind}|{experiment_id}|{msgspec.json.encode(body).decode()}"
    return PublishRecord(
        {
            "type": RECORD_TYPE,
            "schema_version": SCHEMA_VERSION,
            "record_id": hashlib.sha256(key.encode()).hexdigest()[:16],
            "surface": surface,
            "experiment_id": experiment_id,
            "kind": kind,
            "cycle": state.cycle,
            "epoch": inp.epoch,
            "at_ms": inp.now_ms,
            "payload": body,
        }
    )


def decision_actions(
    surface: str, state: LoopState, inp: LoopInput, decisions: Sequence[Decision], out: list[Action]
) -> None:
    """Append to `out` each decision's record, its alert, and the config change it implies.

    Called by `AgentLoop.emit` after every Online plan, approval and run
    step: a promote registers and activates the winner's config and ends the
    allocation; a rollback that ends the experiment restores
    `LoopState.pre_version`; other decisions end or set the allocation.
    """
    by_id = {p.proposal_id: p for p in state.candidates}
    for d in decisions:
        kind: RecordKind = (
            "interim_read"
            if d.kind == "interim_read"
            else "allocation"
            if d.kind in ("allocate", "ramp", "hold_for_approval")
            else "decision"
        )
        out.append(agent_record(surface, inp, kind, d.experiment_id, msgspec.json.decode(d.to_json()), state))
        if d.alert is not None:
            out.append(
                PublishAlert(
                    Alert(
                        schema_version=1,
                        kind=d.alert,
                        severity=d.severity,
                        source=AUTHOR,
                        message=clip_text("; ".join(d.reasons) or d.kind, 4000),
                        at_ms=inp.now_ms,
                        surface=surface,
                        arm_id=d.arm_id,
                        config_version=d.config_version,
                    )
                )
            )
        reason = clip_text(f"{d.decision_id} {d.kind}: {'; '.join(d.reasons)}", 3900)
        if d.kind == "promote" and d.proposal_id in by_id:
            out.append(
                AppendConfig(
                    kind="config",
                    reason=reason,
                    config=by_id[d.proposal_id].config,
                    activate=True,
                    proposal_id=d.proposal_id,
                )
            )
            out.append(AppendConfig(kind="allocation", reason=reason))
        elif d.kind == "rollback" and (
            d.ends_experiment or (d.allocation is not None and all(a.share == 0.0 for a in d.allocation.arms[1:]))
        ):
            out.append(AppendConfig(kind="rollback", reason=reason, restores_version=state.pre_version))
        elif d.ends_experiment:
            out.append(AppendConfig(kind="allocation", reason=reason))
        elif d.allocation is not None:
            out.append(AppendConfig(kind="allocation", reason=reason, allocation=d.allocation))
