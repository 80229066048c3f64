"""Root error of `agents.stats`: every refusal names the argument and the rule it broke.

Callers (the Online agent, the power gate, benchmarks) catch `StatsError` to
turn a statistical refusal into a recorded decision instead of a crash.
"""

from __future__ import annotations


class StatsError(ValueError):
    """A statistics input breaks a rule: `message` says which argument and which rule, `hint` how to fix it."""

    def __init__(self, message: str, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} (hint: {hint})" if hint else message)
