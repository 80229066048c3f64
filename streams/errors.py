"""Root error of the `streams` package."""

from __future__ import annotations


class StreamsError(Exception):
    """Base error of `streams`: a message naming the field and the rule, plus a hint."""

    def __init__(self, message: str, *, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} (hint: {hint})" if hint else message)


class StateError(StreamsError):
    """A checkpoint cannot be decoded or does not belong to this worker's layout."""
