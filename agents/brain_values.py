"""The values exchanged with a brain, and the bounds on the free text they carry (pure, no I/O).

What lives here: the text and size limits (`MAX_*_CHARS`, `MAX_FINDINGS`,
`MAX_CANDIDATES_PER_CALL`, `MAX_CHANGES_PER_PROPOSAL`), `clip_text` (untrusted
text made inert and bounded), the msgspec Structs a brain is given —
`ProposalContext`, `CritiqueContext`, `InsightContext`, with their
`MetricReading`s and `SkillNote`s — and the ones it answers with —
`ParamChange`, `Proposal`, `CritiqueVerdict`, `InsightText` — plus two pure
reads of them: `proposal_id_for` (the stable id of a set of changes) and
`llm_rejections` (the candidates a brain's critique rejected).

Who calls it: every side of the brain boundary — the Actor, Critic and
Insight agents, the loop, the Gemini and offline brains, `agents.prompts`, the
benches — through the re-exports of `agents.brain`; `agents.brain_params`
(which applies and vets `ParamChange`s) and `agents.brain_port` (the Protocol's
signatures) import it directly.  Why: whatever a brain writes is data, and
every text field it fills is bounded when the value is built (`__post_init__`),
so an oversized answer cannot travel on as a value.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Final, Literal, TypeAlias

import msgspec

from schemas.config import CascadeConfig
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

ParamValue: TypeAlias = float | int | str
Verdict: TypeAlias = Literal["keep", "reject"]


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


class LatencyLimit(msgspec.Struct, frozen=True, kw_only=True):
    """The Critic's latency rule as the Actor sees it: the p99 budget and the model it predicts with.

    Predicted p99 (ms) = `intercept_ms` + `per_candidate_ms`·pre_rank.candidate_cut
    + `per_rank_ms`·rank.cut + `per_list_item_ms`·re_rank.list_size + `margin_ms`;
    a candidate that does no more work than the incumbent is predicted at
    most `incumbent_p99_ms` (its measured p99) when that is known.  The
    Critic rejects a candidate predicted above `budget_ms`, so a brain that
    proposes one wastes a slot of its round.  Built by the loop from the
    latency model it refitted (`agents.critic_latency.LatencyModel.limit`).
    """

    budget_ms: float
    intercept_ms: float
    per_candidate_ms: float
    per_rank_ms: float
    per_list_item_ms: float
    margin_ms: float = 0.0
    incumbent_p99_ms: float | None = None


class ProposalContext(msgspec.Struct, frozen=True, kw_only=True):
    """What the Actor's brain is given.

    `parameters`, when non-empty, is the only set of paths that may change
    (the Skillhub tightens the search space); `max_changes` bounds a
    candidate's size; `guardrails` are checked on every candidate;
    `latency`, when given, is the Critic's latency rule (candidates it would
    reject are not worth proposing).
    """

    surface: str
    incumbent: CascadeConfig
    k: int = 3
    metrics: tuple[MetricReading, ...] = ()
    skills: tuple[SkillNote, ...] = ()
    parameters: tuple[str, ...] = ()
    max_changes: int = 4
    guardrails: Guardrails = msgspec.field(default_factory=Guardrails)
    latency: LatencyLimit | None = None

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


def proposal_id_for(changes: Sequence[ParamChange]) -> str:
    """A stable id of a set of changes (order-independent; text is not part of it)."""
    canonical = msgspec.json.encode(sorted([c.name, c.value] for c in changes))
    return "p-" + hashlib.sha256(canonical).hexdigest()[:12]


def llm_rejections(verdicts: Iterable[CritiqueVerdict]) -> dict[str, str]:
    """The candidates a brain rejected, with its reason (the first one wins).  "keep" approves nothing."""
    rejected: dict[str, str] = {}
    for verdict in verdicts:
        if verdict.verdict == "reject":
            rejected.setdefault(verdict.proposal_id, verdict.reason)
    return rejected
