"""Root error of the contract package: every refusal names the field and the rule."""

from __future__ import annotations

from typing import NoReturn


class SchemaError(Exception):
    """Base error of `schemas`: a message, the offending field path, the rule, a hint."""

    def __init__(self, field: str, rule: str, *, hint: str = "") -> None:
        self.field = field
        self.rule = rule
        self.hint = hint
        text = f"{field}: {rule}"
        super().__init__(f"{text} (hint: {hint})" if hint else text)


class DecodeError(SchemaError):
    """A wire message or one event in it breaks the contract."""


class SignatureError(SchemaError):
    """A signed record's signature is missing, malformed or does not verify."""


def refuse(
    error: type[SchemaError], field: str, rule: str, *, hint: str = "", cause: BaseException | None = None
) -> NoReturn:
    """Raise `error(field, rule)` (chained to `cause`): keeps call sites to one line per rule."""
    raise error(field, rule, hint=hint) from cause
