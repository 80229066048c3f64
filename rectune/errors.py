"""Root error of the composition root (`rectune`).

Every error raised by the runtime, CLI and settings carries a message that names
what failed and a hint that says what to do about it.
"""

from __future__ import annotations


class RectuneError(Exception):
    """Base error of the `rectune` package: a message plus an actionable hint."""

    def __init__(self, message: str, *, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} (hint: {hint})" if hint else message)


class RuntimeStartError(RectuneError):
    """A local service (broker, Redis) could not be started or did not become ready."""


class SettingsError(RectuneError):
    """A setting is missing or invalid; the message names the variable and the rule."""


def redis_unavailable(what: str, redis_url: str, err: Exception) -> RectuneError:
    """The error a command raises when Redis fails under it: what it could not do, where, and why.

    Called by `rectune approve` and `rectune skills`, so a Redis that is down
    reads the same everywhere (the hint names `RECTUNE_REDIS_URL`).
    """
    return RectuneError(f"{what} {redis_url}: {err}", hint="is Redis running? set RECTUNE_REDIS_URL")
