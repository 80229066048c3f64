"""The pure half of the runtime's Kafka adapters: the config log folded as a sidecar folds it, and decision records.

What lives here: `fold_config_log` (the `rectune.config` records in offset
order → `ConfigLogView`: the serving state every sidecar derives, plus the
action ids, accepted offsets and authors the writer needs to append exactly
once), `action_id_of` (the loop's `[action ID]` marker of a change),
`decision_line` (the one terse log line per decision record) and
`decode_record` (a `rectune.decisions` record as a dict).

Who calls it: `agents.runtime_kafka` (`KafkaConfigWriter.view` folds what it
read; `KafkaSink` logs `decision_line`); tests and tools through
`agents.runtime`, which re-exports every name.  Pure functions: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from schemas.config import ConfigError
from schemas.config_log import ConfigChange, Keyring, ServingState, apply, decode_change
from schemas.errors import SignatureError
from schemas.guardrails import Guardrails

_ACTION: Final = re.compile(r"^\[action ([0-9A-Za-z.:_-]{1,64})\] ")


@dataclass(frozen=True, slots=True)
class ConfigLogView:
    """The config topic folded as the sidecars fold it, plus what the writer needs to append exactly once.

    `actions`: action id → version of the accepted change carrying it;
    `accepted`: offset → version of every accepted record; `authors`:
    version → author of the change accepted there.
    """

    state: ServingState
    actions: Mapping[str, int]
    accepted: Mapping[int, int]
    authors: Mapping[int, str]


def action_id_of(change: ConfigChange) -> str | None:
    """The loop's action id a change carries at the start of its reason (`[action ID] …`), if any."""
    match = _ACTION.match(change.reason)
    return match.group(1) if match else None


def fold_config_log(
    records: Sequence[tuple[int, bytes | None]], keyring: Keyring, guardrails: Guardrails | None
) -> ConfigLogView:
    """Fold (offset, value) records in offset order; refused records change nothing (pure, as the sidecar)."""
    state = ServingState()
    actions: dict[str, int] = {}
    accepted: dict[int, int] = {}
    authors: dict[int, str] = {}
    for offset, value in records:
        if value is None:
            continue
        try:
            change = decode_change(value)
            state = apply(state, change, keyring, guardrails)
        except (ConfigError, SignatureError):
            continue
        accepted[offset] = state.version
        authors[state.version] = change.author
        action = action_id_of(change)
        if action is not None:
            actions.setdefault(action, state.version)
    return ConfigLogView(state, actions, accepted, authors)


def decision_line(record: Mapping[str, Any]) -> str:
    """One terse line for a decision record (what `rectune agents` logs to stderr per record)."""
    payload = record.get("payload")
    body = payload if isinstance(payload, dict) else {}
    what = str(body.get("kind") or record.get("kind", "?"))
    reasons = body.get("reasons")
    first = str(reasons[0]) if isinstance(reasons, list) and reasons else ""
    if record.get("kind") == "proposal":
        first = f"{len(body.get('proposals') or [])} proposal(s), {len(body.get('dropped') or [])} dropped"
    elif record.get("kind") == "critique":
        kept = [v.get("proposal_id") for v in body.get("verdicts") or [] if isinstance(v, dict) and v.get("kept")]
        first = f"kept {len(kept)}" + (" (off-policy screen)" if body.get("stage") == "off_policy" else "")
        verdicts = [v for v in body.get("verdicts") or [] if isinstance(v, dict)]
        if body.get("stage") == "off_policy" and verdicts:
            reasons = [str(r) for v in verdicts for r in v.get("reasons") or [] if str(r).startswith("ope_harm")]
            first += f": {reasons[0]}" if reasons else ""
    text = " ".join(first.split())
    return (
        f"{record.get('surface', '?')} epoch={record.get('epoch', '?')} cycle={record.get('cycle', '?')} "
        f"{record.get('kind', '?')}/{what} {record.get('experiment_id', '')}" + (f": {text[:160]}" if text else "")
    )


def decode_record(data: bytes) -> dict[str, object]:
    """A `rectune.decisions` agent record as a dict (tests, tools)."""
    out: dict[str, object] = msgspec.json.decode(data)
    return out
