"""Root error of the `serving_sidecar` package."""

from __future__ import annotations


class SidecarError(Exception):
    """Base error of the sidecar: a message naming what failed and the rule, plus a hint."""

    def __init__(self, message: str, *, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} (hint: {hint})" if hint else message)
