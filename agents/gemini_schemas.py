"""The Gemini brain's response schemas: the pydantic models of the JSON answers it asks for (pure, no I/O).

`agents.gemini_brain.GeminiBrain` passes `ProposalsAnswer`, `CritiqueAnswer`
and `InsightAnswer` as `response_schema` with every request, and
`agents.gemini_answers` validates each answer item strictly against the same
models.  The schemas use only objects with fixed properties, arrays, strings,
numbers and enums: no free-form maps (`dict[...]` would become
`additionalProperties`, which the Gemini Developer API refuses) and no
`additionalProperties: false` either.

Field descriptions are sent to the model.  Lengths are clipped after
parsing (`agents.gemini_answers`), not enforced by the schema.

Callers: `agents.gemini_brain` (the request's schema; re-exported from
there), `agents.gemini_answers` (strict validation of each item).  No
google-genai import: the SDK turns these models into its schema itself.
"""

from __future__ import annotations

from typing import Annotated, Literal

import pydantic

from agents.brain import (
    MAX_CANDIDATES_PER_CALL,
    MAX_CHANGES_PER_PROPOSAL,
    MAX_FINDING_CHARS,
    MAX_HYPOTHESIS_CHARS,
    MAX_RATIONALE_CHARS,
    MAX_REASON_CHARS,
    MAX_SUMMARY_CHARS,
    MAX_TITLE_CHARS,
)


class ChangeAnswer(pydantic.BaseModel):
    """One parameter change as the model writes it."""

    name: Annotated[str, pydantic.Field(description="dotted parameter path, exactly as listed in `parameters`")]
    value: Annotated[
        float | str, pydantic.Field(description="new value: a number, or one of the listed choices for a choice")
    ]
    hypothesis: Annotated[
        str, pydantic.Field(description=f"which metric moves, which way, how much (<= {MAX_HYPOTHESIS_CHARS} chars)")
    ]
    rationale: Annotated[str, pydantic.Field(description=f"why, from the evidence (<= {MAX_RATIONALE_CHARS} chars)")]


class CandidateAnswer(pydantic.BaseModel):
    """One candidate configuration: a title and its changes."""

    title: Annotated[str, pydantic.Field(description=f"short label (<= {MAX_TITLE_CHARS} chars)")]
    changes: Annotated[list[ChangeAnswer], pydantic.Field(min_length=1, max_length=MAX_CHANGES_PER_PROPOSAL)]


class ProposalsAnswer(pydantic.BaseModel):
    """The Actor's answer."""

    proposals: Annotated[list[CandidateAnswer], pydantic.Field(max_length=MAX_CANDIDATES_PER_CALL)]


class VerdictAnswer(pydantic.BaseModel):
    """One Critic verdict."""

    proposal_id: Annotated[str, pydantic.Field(description="the candidate's proposal_id, exactly")]
    verdict: Literal["keep", "reject"]
    reason: Annotated[str, pydantic.Field(description=f"one sentence (<= {MAX_REASON_CHARS} chars)")]


class CritiqueAnswer(pydantic.BaseModel):
    """The Critic's answer."""

    verdicts: Annotated[list[VerdictAnswer], pydantic.Field(max_length=2 * MAX_CANDIDATES_PER_CALL)]


class InsightAnswer(pydantic.BaseModel):
    """The Insight answer."""

    summary: Annotated[str, pydantic.Field(description=f"a few sentences (<= {MAX_SUMMARY_CHARS} chars)")]
    # No maxItems here: extra findings are cut after parsing rather than costing the whole answer.
    findings: Annotated[list[str], pydantic.Field(description=f"up to 5 findings (<= {MAX_FINDING_CHARS} chars each)")]
