"""The Gemini brain's accounting: one call's scratch state, its price, its audit record and usage (pure, no I/O).

`usage_metadata` of every answer that arrived counts: prompt tokens, and
candidates + thinking tokens as output (`agents.gemini_brain` reads them
into `_Call`), priced per 1,000 tokens (`token_cost_usd`).  When the call
is over, `finished_call` turns the scratch state into the frozen
`CallRecord` (outcome "ok", "partial", "malformed" or "failed") and the
`Usage` it adds to the brain's total.

Callers: `agents.gemini_brain.GeminiBrain` (`_call` fills a `_Call`,
`_account` prices it, `_finish` records it).  No google-genai import; the
only outside read is the monotonic clock for the call's latency.
"""

from __future__ import annotations

import time

from agents.brain import CallKind, CallOutcome, CallRecord, Dropped, Usage


class _Call:
    """Mutable scratch state of one call in progress (private; the record is the frozen `CallRecord`)."""

    __slots__ = ("attempts", "cost_usd", "error", "kind", "output_tokens", "prompt_tokens", "started", "text")

    def __init__(self, kind: CallKind) -> None:
        self.kind: CallKind = kind
        self.attempts = 0
        self.error = ""
        self.text: str | None = None
        self.prompt_tokens = 0
        self.output_tokens = 0
        self.cost_usd = 0.0
        self.started = time.monotonic()


def token_cost_usd(prompt_tokens: int, output_tokens: int, price_in: float, price_out: float) -> float:
    """The price in USD of `prompt_tokens` and `output_tokens` at `price_in` / `price_out` USD per 1,000 tokens."""
    return prompt_tokens / 1000.0 * price_in + output_tokens / 1000.0 * price_out


def finished_call(call: _Call, *, accepted: int, dropped: list[Dropped]) -> tuple[CallRecord, Usage]:
    """The audit record of the finished `call` (`accepted` items used, `dropped` not) and the usage it adds.

    The outcome is "failed" without an answer, "malformed" when an answer arrived but nothing in it was used
    and something was dropped, else "partial" when anything was dropped, else "ok".  The latency runs from
    the `_Call`'s creation to now.
    """
    outcome: CallOutcome
    if call.text is None:
        outcome = "failed"
    elif accepted == 0 and dropped:
        outcome = "malformed"
    else:
        outcome = "partial" if dropped else "ok"
    record = CallRecord(
        kind=call.kind,
        outcome=outcome,
        attempts=call.attempts,
        accepted=accepted,
        dropped=tuple(dropped),
        error=call.error,
        prompt_tokens=call.prompt_tokens,
        output_tokens=call.output_tokens,
        cost_usd=call.cost_usd,
        latency_s=time.monotonic() - call.started,
    )
    usage = Usage(
        calls=1,
        failed_calls=int(outcome in ("failed", "malformed")),
        requests=call.attempts,
        prompt_tokens=call.prompt_tokens,
        output_tokens=call.output_tokens,
        cost_usd=call.cost_usd,
    )
    return record, usage
