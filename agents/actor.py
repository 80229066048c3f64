"""The Actor: asks a brain for candidate configs and trusts none of its answer (pure orchestration, no I/O).

`ActorAgent(brain).propose(context)` calls `brain.propose(context)` once and
checks every returned `Proposal` again, whatever the brain claims to have
done (defence in depth: a brain is data, and a buggy or compromised one must
not get a candidate past this point):

- it must be a `Proposal`; its changes pass `vet_proposal` against the
  context (known paths, bounds, cross-field rules, guardrails, allow-list,
  `max_changes`);
- the proposal is rebuilt from the vetted changes: the config is the one the
  changes make of the incumbent (a claimed config that differs is dropped, not
  repaired: the brain's claim and its changes disagree), and the id is
  `proposal_id_for(changes)` (a different claimed id is dropped too);
- duplicates (same id or same config) and the incumbent itself are dropped;
- at most `context.k` are kept, in the brain's order.

Every drop is a `Dropped(index, reason)`.  A brain that raises (the Protocol
says it never should) gives no proposals and one `Dropped(-1, ...)`.  `usage`
is what this call cost (the brain's cumulative usage after minus before).

Callers: the runtime's Actor step; the Critic then judges `ActorResult.proposals`.
"""

from __future__ import annotations

from dataclasses import dataclass

from agents.brain import (
    MAX_REASON_CHARS,
    MAX_TITLE_CHARS,
    Brain,
    CallRecord,
    Dropped,
    Proposal,
    ProposalContext,
    Usage,
    clip_text,
    proposal_id_for,
    vet_proposal,
)
from schemas.errors import SchemaError


@dataclass(frozen=True, slots=True)
class ActorResult:
    """What one Actor step produced: vetted proposals, what was dropped and why, and what it cost."""

    proposals: tuple[Proposal, ...]
    dropped: tuple[Dropped, ...]
    usage: Usage
    brain_call: CallRecord | None = None


def usage_delta(after: Usage, before: Usage) -> Usage:
    """`after − before`, field by field (the cost of the calls in between)."""
    return Usage(
        calls=after.calls - before.calls,
        failed_calls=after.failed_calls - before.failed_calls,
        requests=after.requests - before.requests,
        prompt_tokens=after.prompt_tokens - before.prompt_tokens,
        output_tokens=after.output_tokens - before.output_tokens,
        cost_usd=after.cost_usd - before.cost_usd,
    )


def screen(context: ProposalContext, answer: object) -> tuple[tuple[Proposal, ...], tuple[Dropped, ...]]:
    """The proposals of a brain's answer that survive the Actor's checks (see the module docstring)."""
    if not isinstance(answer, list | tuple):
        return (), (Dropped(-1, f"brain answer is not a list of proposals ({type(answer).__name__})"),)
    kept: list[Proposal] = []
    dropped: list[Dropped] = []
    seen_ids: set[str] = set()
    seen_configs = [context.incumbent]
    for index, item in enumerate(answer):
        if len(kept) >= context.k:
            dropped.append(Dropped(index, f"beyond the {context.k} candidates asked for"))
            continue
        if not isinstance(item, Proposal):
            dropped.append(Dropped(index, f"not a Proposal ({type(item).__name__})"))
            continue
        try:
            changes, config = vet_proposal(
                context.incumbent,
                item.changes,
                guardrails=context.guardrails,
                allowed=context.parameters,
                max_changes=context.max_changes,
            )
        except SchemaError as err:
            dropped.append(Dropped(index, clip_text(f"{err.field}: {err.rule}", MAX_REASON_CHARS)))
            continue
        pid = proposal_id_for(changes)
        if item.config != config:
            dropped.append(Dropped(index, "claimed config is not what its changes make of the incumbent"))
            continue
        if item.proposal_id != pid:
            dropped.append(Dropped(index, f"claimed proposal_id {item.proposal_id!r} is not its changes' id {pid!r}"))
            continue
        if pid in seen_ids or config in seen_configs:
            dropped.append(Dropped(index, "duplicate of an earlier candidate or of the incumbent"))
            continue
        seen_ids.add(pid)
        seen_configs.append(config)
        title = clip_text(item.title, MAX_TITLE_CHARS) or pid
        kept.append(Proposal(proposal_id=pid, title=title, changes=changes, config=config))
    return tuple(kept), tuple(dropped)


class ActorAgent:
    """The Actor step over any `Brain` (see the module docstring)."""

    def __init__(self, brain: Brain) -> None:
        self._brain = brain

    @property
    def brain(self) -> Brain:
        """The brain this Actor asks."""
        return self._brain

    async def propose(self, context: ProposalContext) -> ActorResult:
        """Ask the brain once; return the candidates that pass the Actor's own checks."""
        before = self._brain.usage()
        try:
            answer: object = await self._brain.propose(context)
        except Exception as err:  # a brain must not raise; if one does, the loop records it and goes on
            reason = clip_text(f"brain raised {type(err).__name__}: {err}", MAX_REASON_CHARS)
            return ActorResult((), (Dropped(-1, reason),), usage_delta(self._brain.usage(), before))
        proposals, dropped = screen(context, answer)
        return ActorResult(
            proposals=proposals,
            dropped=dropped,
            usage=usage_delta(self._brain.usage(), before),
            brain_call=self._brain.last_call(),
        )
