"""The tunable-parameter catalogue of a config, and the vetting of a brain's changes against it (pure, no I/O).

Parameters.  `parameter_specs(config)` lists every tunable scalar of a config
with its kind and bounds, read from the msgspec types of `schemas.config`, so
the catalogue cannot drift from the contract.  Tunable: every numeric or
choice field of `pre_rank`, `rank` and `re_rank` (objective weights by their
wire names, e.g. `rank.objective_weights.return`), and the weight of each
*existing* fusion signal.  Not tunable by a brain: `sponsored_positions`
(a list) and `sponsored_quota` — sponsored slots are sold inventory, a
commercial commitment rather than a ranking knob, and dropping them buys
clicks with advertisers' money (the oracle keeps them fixed for the same
reason) — signal names (adding a signal the ranker does not compute is
meaningless) and surface `overrides`.

Vetting.  `apply_changes` applies `ParamChange`s to a config (known path,
value of the right kind and in bounds, the config's cross-field rules) and
refuses the committed paths with their reason; `vet_proposal` (and
`vet_in_context`, the same against a `ProposalContext`) turns a brain's
candidate into its effective changes and resulting config, or raises
`ConfigError` naming the path — the guardrails included.

Who calls it: the Gemini and offline brains (every proposal is vetted before
it is returned), the Critic (which vets again), the Actor, the offline
search space, diagnostics and ascent, Insight and the Skillhub (the
catalogue's paths and bounds), the simulator's oracle and the benches —
through the re-exports of `agents.brain`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, NoReturn, TypeAlias

import msgspec
import msgspec.inspect as mi

from agents.brain_values import MAX_CHANGES_PER_PROPOSAL, ParamChange, ParamValue, ProposalContext
from schemas.config import CascadeConfig, ConfigError, validate_config
from schemas.errors import refuse
from schemas.guardrails import Guardrails

_HINT: Final = "see agents/brain.py parameter_specs for the tunable paths and bounds"

ParamKind: TypeAlias = Literal["float", "int", "choice"]


class ParamSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One tunable parameter: its path, kind, current value and bounds (inclusive unless `open_*`)."""

    name: str
    kind: ParamKind
    current: ParamValue
    lower: float | None = None
    upper: float | None = None
    open_lower: bool = False
    open_upper: bool = False
    choices: tuple[str, ...] = ()


# A locator walks `msgspec.to_builtins(config)`: str = dict key, ("signal", name) = a fusion weight.
_Step: TypeAlias = str | tuple[Literal["signal"], str]


@dataclass(frozen=True, slots=True)
class _Slot:
    spec: ParamSpec
    locator: tuple[_Step, ...]


_STAGES: Final = ("pre_rank", "rank", "re_rank")
#: Paths a brain may not move, with the reason `apply_changes` gives (see the module docstring).
_COMMITTED: Final = {
    "re_rank.sponsored_quota": "not tunable by an agent: sponsored slots are sold inventory (a commercial commitment); "
    "change it in the config file",
}


def _leaf_spec(name: str, info: mi.Type, current: Any) -> ParamSpec | None:
    if isinstance(info, mi.FloatType | mi.IntType):
        lower, open_lower = (info.gt, True) if info.gt is not None else (info.ge, False)
        upper, open_upper = (info.lt, True) if info.lt is not None else (info.le, False)
        return ParamSpec(
            name=name,
            kind="float" if isinstance(info, mi.FloatType) else "int",
            current=current,
            lower=None if lower is None else float(lower),
            upper=None if upper is None else float(upper),
            open_lower=open_lower,
            open_upper=open_upper,
        )
    if isinstance(info, mi.LiteralType) and all(isinstance(v, str) for v in info.values):
        return ParamSpec(name=name, kind="choice", current=current, choices=tuple(str(v) for v in info.values))
    return None


def _walk(prefix: str, info: mi.StructType, data: dict[str, Any], locator: tuple[_Step, ...]) -> Iterable[_Slot]:
    for field in info.fields:
        key = field.encode_name
        path = f"{prefix}.{key}"
        value = data[key]
        ftype = field.type
        if isinstance(ftype, mi.StructType):
            yield from _walk(path, ftype, value, (*locator, key))
        elif isinstance(ftype, mi.VarTupleType) and isinstance(ftype.item_type, mi.StructType):
            item = ftype.item_type
            if item.cls.__name__ != "Signal":
                continue
            weight = next(f.type for f in item.fields if f.encode_name == "value")
            for signal in value:
                spec = _leaf_spec(f"{path}.{signal['name']}", weight, signal["value"])
                if spec is not None:
                    yield _Slot(spec, (*locator, key, ("signal", signal["name"])))
        else:
            spec = _leaf_spec(path, ftype, value)
            if spec is not None and path not in _COMMITTED:
                yield _Slot(spec, (*locator, key))


_CONFIG_INFO: Final = mi.type_info(CascadeConfig)


def _catalogue(config: CascadeConfig) -> dict[str, _Slot]:
    assert isinstance(_CONFIG_INFO, mi.StructType)  # noqa: S101 - a Struct's type info is a StructType
    data = msgspec.to_builtins(config)
    slots: dict[str, _Slot] = {}
    for field in _CONFIG_INFO.fields:
        if field.encode_name in _STAGES and isinstance(field.type, mi.StructType):
            for slot in _walk(field.encode_name, field.type, data[field.encode_name], (field.encode_name,)):
                slots[slot.spec.name] = slot
    return slots


def parameter_specs(config: CascadeConfig) -> tuple[ParamSpec, ...]:
    """Every tunable parameter of `config` (see the module docstring), in config order."""
    return tuple(slot.spec for slot in _catalogue(config).values())


def _refuse(field: str, rule: str) -> NoReturn:
    refuse(ConfigError, field, rule, hint=_HINT)


def _bounds_text(spec: ParamSpec) -> str:
    left = "(" if spec.open_lower else "["
    right = ")" if spec.open_upper else "]"
    lower = "-inf" if spec.lower is None else f"{spec.lower:g}"
    upper = "inf" if spec.upper is None else f"{spec.upper:g}"
    return f"{left}{lower}, {upper}{right}"


def _show(value: object) -> str:
    """A value for an error message: integral floats without the `.0` (a model's 1 arrives as 1.0)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _coerce(spec: ParamSpec, value: object) -> ParamValue:
    """`value` as the type `spec` needs, inside its bounds; `ConfigError` naming the path otherwise."""
    name = spec.name
    if spec.kind == "choice":
        if not isinstance(value, str) or value not in spec.choices:
            _refuse(name, f"{value!r} is not one of {list(spec.choices)}")
        return str(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        _refuse(name, f"must be a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        _refuse(name, f"must be finite, got {value!r}")
    if spec.kind == "int":
        if not number.is_integer():
            _refuse(name, f"must be an integer, got {_show(value)}")
        coerced: ParamValue = int(number)
    else:
        coerced = number
    too_low = spec.lower is not None and (number <= spec.lower if spec.open_lower else number < spec.lower)
    too_high = spec.upper is not None and (number >= spec.upper if spec.open_upper else number > spec.upper)
    if too_low or too_high:
        _refuse(name, f"{_show(value)} is outside {_bounds_text(spec)}")
    return coerced


def _assign(data: dict[str, Any], locator: tuple[_Step, ...], value: ParamValue) -> None:
    node: Any = data
    for step in locator[:-1]:
        node = node[step]
    last = locator[-1]
    if isinstance(last, tuple):
        for signal in node:
            if signal["name"] == last[1]:
                signal["value"] = value
                return
        msg = f"signal {last[1]!r} vanished"  # unreachable: the locator came from this config
        raise AssertionError(msg)
    node[last] = value


def apply_changes(config: CascadeConfig, changes: Sequence[ParamChange]) -> CascadeConfig:
    """The config with `changes` applied, validated (`validate_config`).

    Raises `ConfigError` naming the path for an unknown or committed path
    (`re_rank.sponsored_quota`), a path changed
    twice, a value of the wrong type, outside its bounds or not finite, and
    for a result that breaks a cross-field rule (e.g. `rank.cut` above
    `pre_rank.candidate_cut`).
    """
    slots = _catalogue(config)
    data = msgspec.to_builtins(config)
    seen: set[str] = set()
    for change in changes:
        slot = slots.get(change.name)
        if slot is None:
            _refuse(change.name, _COMMITTED.get(change.name, "unknown parameter"))
        if change.name in seen:
            _refuse(change.name, "changed more than once")
        seen.add(change.name)
        _assign(data, slot.locator, _coerce(slot.spec, change.value))
    try:
        updated = msgspec.convert(data, CascadeConfig)
    except msgspec.ValidationError as err:  # bounds are pre-checked; kept as a backstop
        text = str(err)
        rule, _, path = text.partition(" - at `$")
        refuse(ConfigError, path.rstrip("`").lstrip(".") or "$", rule, hint=_HINT, cause=err)
    return validate_config(updated)


def vet_proposal(
    incumbent: CascadeConfig,
    changes: Sequence[ParamChange],
    *,
    guardrails: Guardrails,
    allowed: Iterable[str] = (),
    max_changes: int = MAX_CHANGES_PER_PROPOSAL,
) -> tuple[tuple[ParamChange, ...], CascadeConfig]:
    """Check a brain's candidate and return its effective changes and resulting config.

    Changes that leave a value as it is are dropped; a candidate with no
    effective change, more than `max_changes`, a path outside `allowed` (when
    given), or any change `apply_changes` refuses, or a result that breaks a
    guardrail, raises `ConfigError` naming the path.  Never partially applies.
    """
    allow = frozenset(allowed)
    slots = _catalogue(incumbent)
    effective: list[ParamChange] = []
    for change in changes:
        if allow and change.name not in allow:
            _refuse(change.name, "not in this experiment's search space")
        slot = slots.get(change.name)
        if slot is not None and _is_same(slot.spec, change.value):
            continue
        effective.append(change)
    if not effective:
        _refuse("changes", "no change to the incumbent")
    if len(effective) > max_changes:
        _refuse("changes", f"at most {max_changes} changes per candidate (got {len(effective)})")
    config = apply_changes(incumbent, effective)
    guardrails.check(config)
    return tuple(effective), config


def vet_in_context(
    context: ProposalContext, changes: Sequence[ParamChange]
) -> tuple[tuple[ParamChange, ...], CascadeConfig]:
    """`vet_proposal` against `context`'s incumbent, guardrails, allow-list and change limit.

    The offline brain's sampler, diagnostic and ascent candidates all vet through it.
    """
    return vet_proposal(
        context.incumbent,
        changes,
        guardrails=context.guardrails,
        allowed=context.parameters,
        max_changes=context.max_changes,
    )


def _is_same(spec: ParamSpec, value: object) -> bool:
    if spec.kind == "choice":
        return value == spec.current
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return float(value) == float(spec.current)
