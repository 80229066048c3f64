"""The Gemini brain: `Brain` over the real google-genai async client, with every answer vetted by code.

Each call sends one `generateContent` request with a fixed system
instruction, a prompt whose variable parts are fenced as untrusted data
(`agents.prompts`), `response_mime_type="application/json"` and a response
schema built from the pydantic models of `agents.gemini_schemas` (objects
with fixed properties only: no free-form maps, no `additionalProperties`).

Answers are data: the text is parsed by `agents.gemini_answers`, not taken
from `response.parsed` — size cap, JSON without NaN/Infinity, each item
validated strictly on its own, text clipped, proposals through
`vet_proposal`.  Whatever fails is dropped with a reason in
`last_call().dropped`; nothing raises into the loop and nothing unvetted
passes through.

Retries.  The SDK's own retries are switched off (`HttpRetryOptions(attempts=1)`
in `gemini_brain_from_env`; pass a client configured the same way) so this
class owns them: HTTP 408/429/500/502/503/504, timeouts and connection errors
are retried up to `max_retries` times with exponential backoff
(`backoff_s · 2^attempt`, at least the server's `RetryInfo.retryDelay`, at
most `max_backoff_s`, ± `jitter`); other errors (400, 401, 403, 404, schema
errors) fail at once.  Every attempt is bounded by `timeout_s`
(`asyncio.wait_for`).  A malformed answer is not retried: it cost tokens and
the loop will ask again next round.

Accounting.  `usage_metadata` of every answer that arrived: prompt tokens,
and candidates + thinking tokens as output, priced per 1,000 tokens.

Layout.  This module is the thin adapter: `GeminiBrain` (the SDK call, its
retry loop, reading the SDK's responses and errors) and
`gemini_brain_from_env`; the only one of these modules that imports
google-genai.  The pure parts live beside it and the public names are
re-exported from here (`__all__`):

- `agents.gemini_schemas` — the response schemas (`ProposalsAnswer`,
  `CandidateAnswer`, `ChangeAnswer`, `CritiqueAnswer`, `VerdictAnswer`,
  `InsightAnswer`);
- `agents.gemini_answers` — answer text → vetted proposals, verdicts and
  narrative with the drops (`MAX_ANSWER_CHARS`);
- `agents.gemini_retry` — what is retried (`RETRYABLE_STATUS`, transient
  errors) and the backoff waits;
- `agents.gemini_accounting` — a call's scratch state, token price, and its
  `CallRecord` and `Usage`.

Callers: the runtime (chosen by configuration), tests.  The API key comes
from `GEMINI_API_KEY` (`gemini_brain_from_env`).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import pydantic
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from agents.brain import (
    CallKind,
    CallRecord,
    CritiqueContext,
    CritiqueVerdict,
    Dropped,
    InsightContext,
    InsightText,
    Proposal,
    ProposalContext,
    Usage,
    clip_text,
)
from agents.gemini_accounting import _Call, finished_call, token_cost_usd
from agents.gemini_answers import (
    _MAX_ERROR_CHARS,
    MAX_ANSWER_CHARS,
    insight_from_answer,
    proposals_from_answer,
    verdicts_from_answer,
)
from agents.gemini_retry import _TRANSIENT, RETRYABLE_STATUS, backoff_delay
from agents.gemini_schemas import (
    CandidateAnswer,
    ChangeAnswer,
    CritiqueAnswer,
    InsightAnswer,
    ProposalsAnswer,
    VerdictAnswer,
)
from agents.prompts import (
    ACTOR_SYSTEM,
    CRITIC_SYSTEM,
    INSIGHT_SYSTEM,
    actor_prompt,
    critic_prompt,
    insight_prompt,
)

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_MODEL",
    "MAX_ANSWER_CHARS",
    "RETRYABLE_STATUS",
    "CandidateAnswer",
    "ChangeAnswer",
    "CritiqueAnswer",
    "GeminiBrain",
    "InsightAnswer",
    "ProposalsAnswer",
    "VerdictAnswer",
    "api_key_from_env",
    "gemini_brain_from_env",
]

DEFAULT_MODEL: Final = "gemini-2.5-flash"
API_KEY_ENV: Final = "GEMINI_API_KEY"
_RECORDS_KEPT: Final = 256


# --------------------------------------------------------------------------- the SDK's errors


_DELAY = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


def _retry_delay_hint(err: genai_errors.APIError) -> float:
    """The server's `google.rpc.RetryInfo.retryDelay` in seconds, 0 when absent."""
    details = err.details
    if isinstance(details, Mapping):
        details = details.get("error", details)
    items = details.get("details") if isinstance(details, Mapping) else None
    if not isinstance(items, list):
        return 0.0
    for item in items:
        if isinstance(item, Mapping) and str(item.get("@type", "")).endswith("google.rpc.RetryInfo"):
            match = _DELAY.match(str(item.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return 0.0


def _classify(err: Exception, timeout_s: float) -> tuple[bool, float, str]:
    """(retryable, server delay hint in seconds, short description) of a failed attempt."""
    if isinstance(err, genai_errors.APIError):
        text = clip_text(f"HTTP {err.code} {err.status or ''}: {err.message or ''}", _MAX_ERROR_CHARS)
        return err.code in RETRYABLE_STATUS, _retry_delay_hint(err), text
    if isinstance(err, TimeoutError):
        return True, 0.0, f"timeout after {timeout_s:g}s"
    text = clip_text(f"{type(err).__name__}: {err}", _MAX_ERROR_CHARS)
    return isinstance(err, _TRANSIENT), 0.0, text


# --------------------------------------------------------------------------- the brain


class GeminiBrain:
    """`Brain` over `client.aio.models.generate_content` (see the module docstring).

    `client` should have the SDK's retries off (`HttpRetryOptions(attempts=1)`).
    Prices are USD per 1,000 tokens.  `sleep` is injectable for tests.
    """

    def __init__(
        self,
        client: genai.Client,
        model: str = DEFAULT_MODEL,
        *,
        timeout_s: float = 30.0,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        jitter: float = 0.2,
        price_per_1k_input: float = 0.0,
        price_per_1k_output: float = 0.0,
        temperature: float = 0.4,
        max_output_tokens: int = 8_192,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if timeout_s <= 0 or max_retries < 0 or backoff_s < 0 or max_backoff_s < 0 or not 0 <= jitter < 1:
            msg = "timeout_s must be > 0; max_retries, backoff_s, max_backoff_s >= 0; jitter in [0, 1)"
            raise ValueError(msg)
        if price_per_1k_input < 0 or price_per_1k_output < 0:
            msg = "prices must be >= 0"
            raise ValueError(msg)
        self._client = client
        self._model = model
        self._timeout_s = timeout_s
        self._max_retries = max_retries
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._jitter = jitter
        self._price_in = price_per_1k_input
        self._price_out = price_per_1k_output
        self._temperature = temperature
        self._max_output_tokens = max_output_tokens
        self._sleep = sleep
        self._random = random.Random()  # noqa: S311 - backoff jitter, not cryptography
        self._usage = Usage()
        self._records: deque[CallRecord] = deque(maxlen=_RECORDS_KEPT)

    # ---- Brain protocol

    async def propose(self, context: ProposalContext) -> list[Proposal]:
        """Up to `context.k` vetted candidates; everything else is dropped with a reason."""
        call = await self._call("propose", ACTOR_SYSTEM, actor_prompt(context), ProposalsAnswer)
        proposals, dropped = proposals_from_answer(call.text, context)
        self._finish(call, accepted=len(proposals), dropped=dropped)
        return proposals

    async def critique(self, context: CritiqueContext) -> list[CritiqueVerdict]:
        """Verdicts for known candidates only; unknown ids, bad verdicts and repeats are dropped."""
        call = await self._call("critique", CRITIC_SYSTEM, critic_prompt(context), CritiqueAnswer)
        verdicts, dropped = verdicts_from_answer(call.text, context)
        self._finish(call, accepted=len(verdicts), dropped=dropped)
        return verdicts

    async def summarise(self, context: InsightContext) -> InsightText:
        """The narrative, clipped; `ok=False` with an empty summary when no answer was usable."""
        call = await self._call("summarise", INSIGHT_SYSTEM, insight_prompt(context), InsightAnswer)
        result, dropped = insight_from_answer(call.text)
        self._finish(call, accepted=int(result.ok), dropped=dropped)
        return result

    def usage(self) -> Usage:
        """Cumulative usage of this brain."""
        return self._usage

    def last_call(self) -> CallRecord | None:
        """The record of the most recent call."""
        return self._records[-1] if self._records else None

    def calls(self) -> tuple[CallRecord, ...]:
        """The records of the most recent calls (up to 256), oldest first."""
        return tuple(self._records)

    async def aclose(self) -> None:
        """Close the client's async HTTP session."""
        await self._client.aio.aclose()

    # ---- one call: request with retries, accounting

    async def _call(self, kind: CallKind, system: str, prompt: str, schema: type[pydantic.BaseModel]) -> _Call:
        config = types.GenerateContentConfig(
            system_instruction=system,
            response_mime_type="application/json",
            response_schema=schema,
            temperature=self._temperature,
            max_output_tokens=self._max_output_tokens,
            candidate_count=1,
        )
        call = _Call(kind)
        for attempt in range(self._max_retries + 1):
            call.attempts += 1
            try:
                response = await asyncio.wait_for(
                    self._client.aio.models.generate_content(model=self._model, contents=prompt, config=config),
                    timeout=self._timeout_s,
                )
            except Exception as err:  # every failure becomes a recorded outcome, never a crash
                retryable, hint, call.error = _classify(err, self._timeout_s)
                if not retryable or attempt == self._max_retries:
                    break
                await self._sleep(self._delay(attempt, hint))
                continue
            call.error = ""
            self._account(call, response)
            call.text = self._answer_text(response, call)
            break
        return call

    def _delay(self, attempt: int, hint: float) -> float:
        return backoff_delay(
            attempt,
            hint,
            backoff_s=self._backoff_s,
            max_backoff_s=self._max_backoff_s,
            jitter=self._jitter,
            rng=self._random,
        )

    def _account(self, call: _Call, response: types.GenerateContentResponse) -> None:
        meta = response.usage_metadata
        if meta is None:
            return
        call.prompt_tokens = meta.prompt_token_count or 0
        call.output_tokens = (meta.candidates_token_count or 0) + (meta.thoughts_token_count or 0)
        call.cost_usd = token_cost_usd(call.prompt_tokens, call.output_tokens, self._price_in, self._price_out)

    @staticmethod
    def _answer_text(response: types.GenerateContentResponse, call: _Call) -> str | None:
        candidates = response.candidates or []
        if not candidates or candidates[0].content is None:
            feedback = response.prompt_feedback
            block = feedback.block_reason if feedback is not None else None
            call.error = f"no answer (block_reason={block}, candidates={len(candidates)})"
            return None
        parts = candidates[0].content.parts or []
        text = "".join(p.text for p in parts if p.text is not None and not p.thought)
        if not text:
            call.error = f"empty answer (finish_reason={candidates[0].finish_reason})"
            return None
        return text

    def _finish(self, call: _Call, *, accepted: int, dropped: list[Dropped]) -> None:
        record, usage = finished_call(call, accepted=accepted, dropped=dropped)
        self._records.append(record)
        self._usage = self._usage.plus(usage)


def api_key_from_env(env: Mapping[str, str] | None = None) -> str:
    """The Gemini API key from `GEMINI_API_KEY` (`env`, else the process environment); `ValueError` if unset or blank.

    Called by `gemini_brain_from_env` and by the CLI's check before anything
    starts (`rectune.agents_cli.require_brain_key`), so both refuse the same keys.
    """
    source = os.environ if env is None else env
    key = source.get(API_KEY_ENV, "").strip()
    if not key:
        msg = f"{API_KEY_ENV} is not set: the Gemini brain needs an API key (or choose the offline brain)"
        raise ValueError(msg)
    return key


def gemini_brain_from_env(
    model: str = DEFAULT_MODEL,
    base_url: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
    **options: Any,
) -> GeminiBrain:
    """A `GeminiBrain` with the key from `GEMINI_API_KEY` (Gemini Developer API; SDK retries off).

    `base_url` points the client elsewhere (tests use a local server).  The
    HTTP timeout is set a second beyond `timeout_s` as a backstop; `options`
    are passed on to `GeminiBrain`.  Raises `ValueError` when the key is unset.
    """
    key = api_key_from_env(env)
    http_options = types.HttpOptions(
        base_url=base_url,
        timeout=int((timeout_s + 1.0) * 1000),
        retry_options=types.HttpRetryOptions(attempts=1),
    )
    client = genai.Client(api_key=key, vertexai=False, http_options=http_options)
    return GeminiBrain(client, model, timeout_s=timeout_s, **options)
