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
choice field of `pre_rank`, `rank` and `re_rank` and the weight of each
*existing* fusion signal; not tunable by a brain: the sponsored settings
(sold inventory, a commercial commitment), signal names and surface
`overrides` (details in `agents.brain_params`).

Layout.  This module is the front door: it holds no code of its own and
re-exports (`__all__`) what lives beside it, so callers import `agents.brain`
only:

- `agents.brain_values` — the text limits (`MAX_*`), `clip_text`, the values
  exchanged with a brain (`ParamValue`, `ParamChange`, `Proposal`,
  `CritiqueVerdict`, `Verdict`, `InsightText`, `MetricReading`, `SkillNote`,
  `ProposalContext`, `CritiqueContext`, `InsightContext`), `proposal_id_for`
  and `llm_rejections`;
- `agents.brain_params` — the tunable-parameter catalogue (`ParamSpec`,
  `ParamKind`, `parameter_specs`), the committed parameters, `apply_changes`
  and the vetting (`vet_proposal`, `vet_in_context`);
- `agents.brain_port` — the Protocols (`Brain`, `ArmRegistry`) and the call
  accounting (`Usage`, `CallRecord`, `Dropped`, `CallKind`, `CallOutcome`).

Callers: the Actor, Critic and Insight agents (through the Protocol), the
Gemini and offline brains (`vet_proposal`, the value types), `agents.prompts`.
"""

from __future__ import annotations

from agents.brain_params import ParamKind, ParamSpec, apply_changes, parameter_specs, vet_in_context, vet_proposal
from agents.brain_port import ArmRegistry, Brain, CallKind, CallOutcome, CallRecord, Dropped, Usage
from agents.brain_values import (
    MAX_CANDIDATES_PER_CALL,
    MAX_CHANGES_PER_PROPOSAL,
    MAX_FINDING_CHARS,
    MAX_FINDINGS,
    MAX_HYPOTHESIS_CHARS,
    MAX_NAME_CHARS,
    MAX_PATTERN_CHARS,
    MAX_RATIONALE_CHARS,
    MAX_REASON_CHARS,
    MAX_SUMMARY_CHARS,
    MAX_TITLE_CHARS,
    CritiqueContext,
    CritiqueVerdict,
    InsightContext,
    InsightText,
    LatencyLimit,
    MetricReading,
    ParamChange,
    ParamValue,
    Proposal,
    ProposalContext,
    SkillNote,
    Verdict,
    clip_text,
    llm_rejections,
    proposal_id_for,
)

__all__ = [
    "MAX_CANDIDATES_PER_CALL",
    "MAX_CHANGES_PER_PROPOSAL",
    "MAX_FINDINGS",
    "MAX_FINDING_CHARS",
    "MAX_HYPOTHESIS_CHARS",
    "MAX_NAME_CHARS",
    "MAX_PATTERN_CHARS",
    "MAX_RATIONALE_CHARS",
    "MAX_REASON_CHARS",
    "MAX_SUMMARY_CHARS",
    "MAX_TITLE_CHARS",
    "ArmRegistry",
    "Brain",
    "CallKind",
    "CallOutcome",
    "CallRecord",
    "CritiqueContext",
    "CritiqueVerdict",
    "Dropped",
    "InsightContext",
    "InsightText",
    "LatencyLimit",
    "MetricReading",
    "ParamChange",
    "ParamKind",
    "ParamSpec",
    "ParamValue",
    "Proposal",
    "ProposalContext",
    "SkillNote",
    "Usage",
    "Verdict",
    "apply_changes",
    "clip_text",
    "llm_rejections",
    "parameter_specs",
    "proposal_id_for",
    "vet_in_context",
    "vet_proposal",
]
