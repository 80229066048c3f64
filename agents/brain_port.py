"""The `Brain` Protocol port, the `ArmRegistry` side port, and the accounting of brain calls (no I/O).

A `Brain` answers three questions:

- `propose` (Actor): up to K candidate configs, each a set of `ParamChange`s;
- `critique` (Critic): per candidate "keep" or "reject" with a reason;
- `summarise` (Insight): a short narrative of what an experiment showed.

and accounts for itself: `usage()` (cumulative `Usage`: calls, attempts,
tokens, money) and `last_call()` (the `CallRecord` of the last call: its
`CallKind`, `CallOutcome` and the items `Dropped`, with why).

Who calls it: the runtime and the loop hold a `Brain` (`agents.runtime`,
`agents.loop_learn`); the loop registers experiment arms with brains that
implement `ArmRegistry` (`agents.loop`); the Gemini and offline brains
implement the port and build the records (`agents.gemini_accounting`), which
the Actor and the loop publish to `rectune.decisions` — all through the
re-exports of `agents.brain`.  Why apart: this is the seam the agents depend
on, whatever thinks behind it.
"""

from __future__ import annotations

from typing import Literal, Protocol, TypeAlias, runtime_checkable

import msgspec

from agents.brain_values import (
    CritiqueContext,
    CritiqueVerdict,
    InsightContext,
    InsightText,
    Proposal,
    ProposalContext,
)
from schemas.config import CascadeConfig

CallKind: TypeAlias = Literal["propose", "critique", "summarise"]
CallOutcome: TypeAlias = Literal["ok", "partial", "malformed", "failed"]


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
