"""The always-valid SLO exceedance test for the agents: `schemas.slo` with the agents' error type.

The test itself (method, validity, callers) lives in `schemas.slo`, shared
with the serving sidecar's SLO breaker so both judge an SLO by one rule.
Here `exceedance_test` re-raises a refused argument as `StatsError`, the
root error of `agents.stats`.  Called by the Online agent's latency
guardrail (`agents.online_guard`) and the tests.
"""

from __future__ import annotations

from agents.stats.errors import StatsError
from schemas.errors import SchemaError
from schemas.slo import EXCEEDANCE_RATIOS, Exceedance
from schemas.slo import exceedance_test as _exceedance_test


def exceedance_test(n: int, k: int, *, allowed: float, alpha: float) -> Exceedance:
    """`schemas.slo.exceedance_test`; a refused argument raises `StatsError` naming the field and the rule."""
    try:
        return _exceedance_test(n, k, allowed=allowed, alpha=alpha)
    except SchemaError as err:
        raise StatsError(str(err)) from err


__all__ = ["EXCEEDANCE_RATIOS", "Exceedance", "exceedance_test"]
