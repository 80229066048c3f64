"""The brain the agents think with, behind one Protocol, and the pure value types it speaks (no I/O).

A `Brain` answers three questions:

- `propose` (Actor): up to K candidate configs, each a set of `ParamChange`s —
  a dotted path into `CascadeConfig` (`re_rank.mmr_lambda`,
  `pre_rank.fusion_weights.personal_affinity`, `rank.objective_weights.conversion`),
  a new value, and per change a hypothesis and a rationale;
- `critique` (Critic): per candidate "keep" or "reject" with a reason.  A
  brain may only prune more: the caller ignores "keep" for anything the hard
  rules rejected, and a missing verdict means "no objection";
- `summarise` (Insight): a short narrative of what an experiment showed.

Brains are the Gemini brain (`agents.gemini_brain`) and the offline one; the
runtime chooses by configuration.  Whatever a brain answers is *data*: every
proposal goes through `vet_proposal` (known parameter, value in bounds, the
config's cross-field rules, the guardrails) and is dropped, with a reason,
when it fails; free text is clipped (`clip_text`) and never used as an
instruction — prompts (`agents.prompts`) fence it off as untrusted data.

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

Callers: the Actor, Critic and Insight agents (through the Protocol), the
Gemini and offline brains (`vet_proposal`, the value types), `agents.prompts`.
"""

from __future__ import annotations

import hashlib
import math
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, NoReturn, Protocol, TypeAlias, runtime_checkable

import msgspec
import msgspec.inspect as mi

from schemas.config import CascadeConfig, ConfigError, validate_config
from schemas.errors import refuse
from schemas.guardrails import Guardrails

MAX_NAME_CHARS: Final = 160
MAX_TITLE_CHARS: Final = 120
MAX_HYPOTHESIS_CHARS: Final = 400
MAX_RATIONALE_CHARS: Final = 800
MAX_REASON_CHARS: Final = 400
MAX_SUMMARY_CHARS: Final = 2_000
MAX_FINDING_CHARS: Final = 400
MAX_FINDINGS: Final = 12
MAX_PATTERN_CHARS: Final = 400
MAX_CANDIDATES_PER_CALL: Final = 8
MAX_CHANGES_PER_PROPOSAL: Final = 8
_ELLIPSIS: Final = "…"
_HINT: Final = "see agents/brain.py parameter_specs for the tunable paths and bounds"

ParamValue: TypeAlias = float | int | str
ParamKind: TypeAlias = Literal["float", "int", "choice"]
Verdict: TypeAlias = Literal["keep", "reject"]
CallKind: TypeAlias = Literal["propose", "critique", "summarise"]
CallOutcome: TypeAlias = Literal["ok", "partial", "malformed", "failed"]


def clip_text(text: str, limit: int) -> str:
    """Untrusted text made inert and bounded: control characters become spaces, at most `limit` characters.

    Newlines and tabs are kept (they carry no power once the text sits inside
    a fenced data block); every other control or format character (NUL, ANSI
    escapes, bidi overrides, zero-width joiners) is replaced by a space so the
    text renders as it reads.  Longer text is cut and ends with an ellipsis.
    """
    cleaned = "".join(ch if ch in "\n\t" or unicodedata.category(ch)[0] != "C" else " " for ch in text).strip()
    if len(cleaned) <= limit:
        return cleaned
    return cleaned[: max(limit - 1, 0)] + _ELLIPSIS


def _check_text(field: str, text: str, limit: int) -> None:
    if len(text) > limit:
        msg = f"{field}: at most {limit} characters (got {len(text)}); use clip_text"
        raise ValueError(msg)


# --------------------------------------------------------------------------- value types


class ParamChange(msgspec.Struct, frozen=True, kw_only=True):
    """One change: `name` is a dotted path into `CascadeConfig`, `value` its new value.

    `hypothesis` (which metric should move, which way) and `rationale` (why,
    from the metrics and skills) are free text from a brain: data, bounded.
    """

    name: str
    value: ParamValue
    hypothesis: str = ""
    rationale: str = ""

    def __post_init__(self) -> None:
        """Bound the text fields (construct with `clip_text` for untrusted input)."""
        _check_text("name", self.name, MAX_NAME_CHARS)
        _check_text("hypothesis", self.hypothesis, MAX_HYPOTHESIS_CHARS)
        _check_text("rationale", self.rationale, MAX_RATIONALE_CHARS)


class Proposal(msgspec.Struct, frozen=True, kw_only=True):
    """A vetted candidate: its changes and the config they produce from the incumbent.

    `proposal_id` is derived from the changes (`proposal_id_for`), so the same
    set of changes always has the same id (dedupe, critique mapping).
    """

    proposal_id: str
    title: str
    changes: tuple[ParamChange, ...]
    config: CascadeConfig

    def __post_init__(self) -> None:
        """Bound the title."""
        _check_text("title", self.title, MAX_TITLE_CHARS)


class CritiqueVerdict(msgspec.Struct, frozen=True, kw_only=True):
    """A brain's opinion of one candidate.  "keep" never overrides a hard rule."""

    proposal_id: str
    verdict: Verdict
    reason: str

    def __post_init__(self) -> None:
        """Bound the reason."""
        _check_text("reason", self.reason, MAX_REASON_CHARS)


class InsightText(msgspec.Struct, frozen=True, kw_only=True):
    """The Insight narrative: a summary and a few findings.  `ok` is False when no brain answer was usable."""

    summary: str
    findings: tuple[str, ...] = ()
    ok: bool = True

    def __post_init__(self) -> None:
        """Bound the text."""
        _check_text("summary", self.summary, MAX_SUMMARY_CHARS)
        if len(self.findings) > MAX_FINDINGS:
            msg = f"findings: at most {MAX_FINDINGS}"
            raise ValueError(msg)
        for finding in self.findings:
            _check_text("findings[]", finding, MAX_FINDING_CHARS)


class MetricReading(msgspec.Struct, frozen=True, kw_only=True):
    """One metric value (optionally per arm / cohort, with an interval) shown to a brain."""

    name: str
    value: float
    lower: float | None = None
    upper: float | None = None
    arm: str = ""
    cohort: str = ""


class SkillNote(msgspec.Struct, frozen=True, kw_only=True):
    """A Skillhub entry as a brain sees it.  `pattern` may come from an earlier brain answer: data."""

    stage: str
    cohort: str
    pattern: str
    confidence: float


class ProposalContext(msgspec.Struct, frozen=True, kw_only=True):
    """What the Actor's brain is given.

    `parameters`, when non-empty, is the only set of paths that may change
    (the Skillhub tightens the search space); `max_changes` bounds a
    candidate's size; `guardrails` are checked on every candidate.
    """

    surface: str
    incumbent: CascadeConfig
    k: int = 3
    metrics: tuple[MetricReading, ...] = ()
    skills: tuple[SkillNote, ...] = ()
    parameters: tuple[str, ...] = ()
    max_changes: int = 4
    guardrails: Guardrails = msgspec.field(default_factory=Guardrails)

    def __post_init__(self) -> None:
        """Check the sizes."""
        if not 1 <= self.k <= MAX_CANDIDATES_PER_CALL:
            msg = f"k: must be in [1, {MAX_CANDIDATES_PER_CALL}] (got {self.k})"
            raise ValueError(msg)
        if not 1 <= self.max_changes <= MAX_CHANGES_PER_PROPOSAL:
            msg = f"max_changes: must be in [1, {MAX_CHANGES_PER_PROPOSAL}] (got {self.max_changes})"
            raise ValueError(msg)


class CritiqueContext(msgspec.Struct, frozen=True, kw_only=True):
    """What the Critic's brain is given: the candidates that survived the hard rules."""

    surface: str
    incumbent: CascadeConfig
    candidates: tuple[Proposal, ...]
    metrics: tuple[MetricReading, ...] = ()
    skills: tuple[SkillNote, ...] = ()


class InsightContext(msgspec.Struct, frozen=True, kw_only=True):
    """What the Insight brain is given after a decision: what changed, what it did."""

    surface: str
    experiment_id: str
    decision: str
    changes: tuple[ParamChange, ...] = ()
    effects: tuple[MetricReading, ...] = ()
    skills: tuple[SkillNote, ...] = ()


class Dropped(msgspec.Struct, frozen=True):
    """An answer item a brain gave that was not used, and why.  `index` -1 means the whole answer."""

    index: int
    reason: str


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """Cumulative cost of a brain: calls, HTTP attempts, tokens and money.

    `output_tokens` includes thinking tokens (billed as output).  Tokens are
    counted from every answer that arrived, usable or not; attempts that
    timed out or failed cost no visible tokens.
    """

    calls: int = 0
    failed_calls: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    def plus(self, other: Usage) -> Usage:
        """The sum of two usages."""
        return Usage(
            calls=self.calls + other.calls,
            failed_calls=self.failed_calls + other.failed_calls,
            requests=self.requests + other.requests,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
        )


class CallRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The audit record of one brain call (published to `rectune.decisions` by the runtime).

    `outcome`: "ok" (every item used), "partial" (some dropped), "malformed"
    (an answer arrived but nothing in it was usable), "failed" (no answer:
    transport errors, timeouts, refusals after retries).  `error` is the last
    transport error, `dropped` the items not used and why.
    """

    kind: CallKind
    outcome: CallOutcome
    attempts: int
    accepted: int
    dropped: tuple[Dropped, ...] = ()
    error: str = ""
    prompt_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0


@runtime_checkable
class ArmRegistry(Protocol):
    """A brain that learns from past arms: the loop tells it which config each experiment arm serves.

    `AgentLoop.step` calls `register_arm` for the running experiment's arms on
    every tick (idempotent), so arm readings (`MetricReading.arm`) resolve to
    configs; a brain without it just sees readings.
    """

    def register_arm(self, arm: str, config: CascadeConfig) -> None:
        """Remember that `arm` serves `config`."""


@runtime_checkable
class Brain(Protocol):
    """What the agents think with.  Implementations never raise for a bad or missing answer.

    A failed or unusable answer gives `[]` (propose, critique) or an
    `InsightText` with `ok=False`; `last_call()` says what happened.
    """

    async def propose(self, context: ProposalContext) -> list[Proposal]:
        """Up to `context.k` vetted candidates (each passes `vet_proposal`)."""
        ...

    async def critique(self, context: CritiqueContext) -> list[CritiqueVerdict]:
        """Verdicts for some of `context.candidates` (ids not among them are never returned)."""
        ...

    async def summarise(self, context: InsightContext) -> InsightText:
        """The narrative of a decided experiment."""
        ...

    def usage(self) -> Usage:
        """Cumulative usage so far."""
        ...

    def last_call(self) -> CallRecord | None:
        """The record of the most recent call, if any."""
        ...


# --------------------------------------------------------------------------- parameters


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


def proposal_id_for(changes: Sequence[ParamChange]) -> str:
    """A stable id of a set of changes (order-independent; text is not part of it)."""
    canonical = msgspec.json.encode(sorted([c.name, c.value] for c in changes))
    return "p-" + hashlib.sha256(canonical).hexdigest()[:12]


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


def llm_rejections(verdicts: Iterable[CritiqueVerdict]) -> dict[str, str]:
    """The candidates a brain rejected, with its reason (the first one wins).  "keep" approves nothing."""
    rejected: dict[str, str] = {}
    for verdict in verdicts:
        if verdict.verdict == "reject":
            rejected.setdefault(verdict.proposal_id, verdict.reason)
    return rejected
