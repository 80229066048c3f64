"""The Gemini brain's retry policy: which failures are retried and how long to wait between attempts (pure).

HTTP 408/429/500/502/503/504 (`RETRYABLE_STATUS`), timeouts and connection
errors (`_TRANSIENT`: the builtin ones and the transport errors of aiohttp
and httpx, when installed) are retried; everything else fails at once.  The
wait before retry `attempt + 1` is `backoff_s · 2^attempt`, at least the
server's `RetryInfo.retryDelay`, at most `max_backoff_s`, ± `jitter`
(`backoff_delay`).

Callers: `agents.gemini_brain` — `_classify` (which failures are retryable)
and `GeminiBrain._delay` (the waits); `RETRYABLE_STATUS` is re-exported
from there.  No google-genai import: reading the SDK's errors (status code,
`RetryInfo`) stays in `agents.gemini_brain`.
"""

from __future__ import annotations

import random
from typing import Final

RETRYABLE_STATUS: Final = frozenset({408, 429, 500, 502, 503, 504})


def _transient_errors() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [TimeoutError, ConnectionError, OSError]
    try:
        import aiohttp

        found += [aiohttp.ClientConnectionError, aiohttp.ClientPayloadError]
    except ImportError:  # pragma: no cover - aiohttp ships with our stack
        pass
    for module in ("httpx", "httpx2"):
        try:
            transport = getattr(__import__(module), "TransportError", None)
        except ImportError:
            continue
        if isinstance(transport, type) and issubclass(transport, BaseException):
            found.append(transport)
    return tuple(found)


_TRANSIENT: Final = _transient_errors()


def backoff_delay(
    attempt: int, hint: float, *, backoff_s: float, max_backoff_s: float, jitter: float, rng: random.Random
) -> float:
    """Seconds to wait after failed attempt `attempt` (0-based), given the server's delay `hint` (0 if none).

    `backoff_s · 2^attempt`, at least `hint`, times 1 ± a uniform draw of `jitter` from `rng`, at most
    `max_backoff_s`.
    """
    base = max(backoff_s * 2.0**attempt, hint)
    spread = rng.uniform(-jitter, jitter) if jitter else 0.0
    return min(base * (1.0 + spread), max_backoff_s)
