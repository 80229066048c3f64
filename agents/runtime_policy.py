"""The agents' policy file: the Online policy and the loop settings of one surface, checked field by field.

What lives here: `parse_policy` (a JSON document `{"online": {...}, "loop":
{...}}` → `OnlinePolicy` and `LoopSettings`), `load_policy` (the same of a
file), `PolicyError` (names the field, `policy.online.stages`, and the rule)
and the fields a file may set (`LOOP_FIELDS`, `ONLINE_FIELDS`).

Who calls it: `rectune agents --policy PATH` (`rectune.agents_cli`,
`load_policy`), `rectune.demo` and the tests (`parse_policy`), all through
`agents.runtime`, which re-exports every name.  Parsing is pure;
`load_policy` only reads the file.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import msgspec

from agents.experiment import ExperimentError
from agents.insight_metrics import METRICS, insight_objective_for
from agents.loop import LoopSettings
from agents.online import OnlinePolicy


class PolicyError(ValueError):
    """A policy file breaks a rule; the message names the field (`policy.online.stages`) and the rule."""


#: `LoopSettings` fields a policy file may set (the Critic's rules and latency model stay in code; its latency
#: budget is the online guardrail's p99 SLO when the policy sets one).
LOOP_FIELDS: Final = (
    "k",
    "max_changes",
    "cooldown_s",
    "window_s",
    "min_baseline_requests",
    "objective",
    "pre_period_s",
    "ope_wait_s",
    "ope_min_requests",
)
#: `OnlinePolicy` fields a policy file may set (`surface` comes from the command line).
ONLINE_FIELDS: Final = tuple(f.name for f in dataclasses.fields(OnlinePolicy) if f.name != "surface")


def _section(doc: Mapping[str, Any], name: str, known: Sequence[str]) -> dict[str, Any]:
    section = doc.get(name, {})
    if not isinstance(section, dict):
        msg = f"policy.{name}: must be a JSON object, got {type(section).__name__}"
        raise PolicyError(msg)
    unknown = sorted(set(section) - set(known))
    if unknown:
        msg = f"policy.{name}.{unknown[0]}: unknown field; known: {', '.join(known)}"
        raise PolicyError(msg)
    return section


def _convert(section: str, values: dict[str, Any], kind: type[Any]) -> Any:
    try:
        return msgspec.convert(values, kind)
    except msgspec.ValidationError as err:
        rule, _, path = str(err).partition(" - at `$")
        path = path.rstrip("`")
        choices = _literal_choices(kind, path)
        if choices and rule.startswith("Invalid enum value"):
            rule = f"{rule}; must be one of {', '.join(repr(c) for c in choices)}"
        msg = f"policy.{section}{path}: {rule}"
        raise PolicyError(msg) from err
    except ExperimentError as err:
        msg = f"policy.{section}: {err}"
        raise PolicyError(msg) from err


def _literal_choices(kind: type[Any], path: str) -> tuple[Any, ...]:
    """The values a top-level `Literal` field of `kind` allows (empty for any other path or type)."""
    name = path.removeprefix(".")
    if not name or "." in name or "[" in name:
        return ()
    try:
        hint = typing.get_type_hints(kind).get(name)
    except (NameError, TypeError):
        return ()
    return typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else ()


def _approval(online: dict[str, Any]) -> dict[str, Any]:
    """`"approval": "required" | "none"`, the human gate's spelling in the design, as `approval_required`."""
    if "approval" not in online:
        return online
    rest = {k: v for k, v in online.items() if k != "approval"}
    value = online["approval"]
    if value not in ("required", "none"):
        msg = f"policy.online.approval: must be 'required' or 'none', got {value!r}"
        raise PolicyError(msg)
    required = value == "required"
    if rest.get("approval_required", required) != required:
        msg = f"policy.online.approval: {value!r} contradicts approval_required={rest['approval_required']!r}"
        raise PolicyError(msg)
    return {**rest, "approval_required": required}


def parse_policy(data: bytes, surface: str, *, window_s: float = 60.0) -> tuple[OnlinePolicy, LoopSettings]:
    """The Online policy and loop settings of a policy document (JSON `{"online": {...}, "loop": {...}}`).

    Called by `rectune agents --policy PATH` (through `load_policy`) and the
    tests.  Every key is optional (defaults of `OnlinePolicy` and
    `LoopSettings`; the loop's `window_s` defaults to the worker's window and
    its `objective` to the primary metric's Insight name); an unknown key, a
    wrong type, an unknown objective or a value outside its rule raises
    `PolicyError` naming the field and the rule.  The Critic's latency budget
    becomes the guardrails' p99 SLO when one is set.
    """
    try:
        doc = msgspec.json.decode(data)
    except msgspec.DecodeError as err:
        msg = f"policy: must be a JSON object ({err})"
        raise PolicyError(msg) from err
    if not isinstance(doc, dict):
        msg = 'policy: must be a JSON object like {"online": {...}, "loop": {...}}'
        raise PolicyError(msg)
    unknown = sorted(set(doc) - {"online", "loop"})
    if unknown:
        msg = f"policy.{unknown[0]}: unknown section; known: online, loop"
        raise PolicyError(msg)
    online = _approval(_section(doc, "online", (*ONLINE_FIELDS, "approval")))
    loop = _section(doc, "loop", LOOP_FIELDS)
    policy: OnlinePolicy = _convert("online", {**online, "surface": surface}, OnlinePolicy)
    # Insight and the Skillhub learn on the objective; unset, it follows the primary metric (not a fixed "ctr")
    objective = loop.get("objective", insight_objective_for(policy.primary.name))
    settings: LoopSettings = _convert("loop", {"window_s": window_s, **loop, "objective": objective}, LoopSettings)
    rules = (
        ("k", settings.k >= 1, ">= 1"),
        ("max_changes", settings.max_changes >= 1, ">= 1"),
        ("cooldown_s", settings.cooldown_s >= 0.0, ">= 0"),
        ("window_s", settings.window_s > 0.0, "> 0"),
        ("min_baseline_requests", settings.min_baseline_requests >= 0.0, ">= 0"),
        ("pre_period_s", 0.0 <= settings.pre_period_s < policy.horizon_s, "in [0, online.horizon_s)"),
        (
            "pre_period_s",
            policy.randomization_unit == "user" or settings.pre_period_s == 0.0,
            "0 when online.randomization_unit is 'request' (a paired read needs no A/A covariates)",
        ),
        ("objective", settings.objective in METRICS, f"one of {', '.join(sorted(METRICS))}"),
        ("ope_wait_s", 0.0 <= settings.ope_wait_s <= 86_400.0, "in [0, 86400] seconds (0: no off-policy screen)"),
        ("ope_min_requests", settings.ope_min_requests >= 1, ">= 1"),
    )
    for name, ok, rule in rules:
        if not ok:
            msg = f"policy.loop.{name}: must be {rule}, got {getattr(settings, name)!r}"
            raise PolicyError(msg)
    return policy, _with_latency_budget(policy, settings)


def _with_latency_budget(policy: OnlinePolicy, settings: LoopSettings) -> LoopSettings:
    """The Critic's latency budget is the policy's p99 SLO when it sets one (the guardrail the arm must hold).

    The Critic refuses a candidate whose predicted p99 is over its budget
    before any traffic; with the code default (250 ms) a surface whose SLO is
    50 ms would launch arms the guardrail can only roll back afterwards.
    """
    slo_ms = policy.guardrails.latency_p99_slo_ms
    if slo_ms is None:
        return settings
    return dataclasses.replace(settings, rules=dataclasses.replace(settings.rules, latency_budget_ms=float(slo_ms)))


def load_policy(path: Path, surface: str, *, window_s: float = 60.0) -> tuple[OnlinePolicy, LoopSettings]:
    """`parse_policy` of a file; a missing or unreadable file is a `PolicyError` naming it."""
    try:
        data = path.read_bytes()
    except OSError as err:
        msg = f"policy: cannot read {path} ({err.strerror or err})"
        raise PolicyError(msg) from err
    try:
        return parse_policy(data, surface, window_s=window_s)
    except PolicyError as err:
        msg = f"{path}: {err}"
        raise PolicyError(msg) from err
