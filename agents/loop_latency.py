"""The loop's observed latency: (config version, p99) of the arms it served, and the Critic's model fitted to them.

The Critic judges a candidate's latency with `agents.critic_latency.LatencyModel`
(rule `latency_budget`); a fixed prior can be far off a real cascade (the
default prior puts the default config at 72 ms).  The loop therefore keeps,
in `LoopState.latency_seen`, the p99 every experiment arm (and A/A pre-period
arm) showed, by the config version it served, and refits the model before
each critique, adding the incumbent's p99 since the last round ended (the
baseline arms), so the first round is judged on observed latency too.
`incumbent_p99` is that measured p99 on its own: the Critic bounds a
candidate that does no more work than the incumbent by it.

Callers: `agents.loop.AgentLoop` (`observe_latency` on each running tick) and
`agents.loop_propose.propose_round` (`latency_model` before the Critic).  Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Final

import numpy as np

from agents.critic_latency import LatencyModel
from agents.experiment import ExperimentPlan
from agents.loop_baseline import pre_period_arm
from schemas.config import CascadeConfig
from schemas.metrics import ArmTotals, latency_quantile

#: Observations kept (the latest per config version); the oldest versions go first.
MAX_LATENCY_POINTS: Final = 64

LatencySeen = tuple[tuple[int, float], ...]


def _p99(arms: Sequence[ArmTotals], min_requests: float) -> float | None:
    """p99 of the merged latency histograms of `arms`, None below `min_requests` requests or when undefined."""
    if not arms or sum(a.total("requests") for a in arms) < min_requests:
        return None
    hist = np.sum([np.asarray(a.latency_hist, dtype=np.int64) for a in arms], axis=0)
    p99 = latency_quantile(hist, 0.99)
    return p99 if math.isfinite(p99) and p99 > 0.0 else None


def observe_latency(
    seen: LatencySeen, plan: ExperimentPlan, totals: Mapping[str, ArmTotals], min_requests: float
) -> LatencySeen:
    """`seen` with the p99 of each arm of `plan` (and its pre-period arm) that has `min_requests` requests.

    Each experiment arm serves one config for its whole life, so its
    cumulative histogram is that config's latency; the latest reading per
    config version wins.
    """
    points = dict(seen)
    specs = [plan.control, *plan.treatments]
    for spec in specs:
        own = totals.get(spec.arm_id)
        p99 = None if own is None else _p99([own], min_requests)
        if p99 is not None:
            points.pop(spec.config_version, None)  # re-insert: the latest readings are kept last
            points[spec.config_version] = p99
    # every A/A pre-period arm serves the incumbent, whatever lane it holds
    pre = [t for spec in specs if (t := totals.get(pre_period_arm(plan, spec.arm_id))) is not None]
    p99 = _p99(pre, min_requests)
    if p99 is not None and plan.control.config_version not in points:
        points[plan.control.config_version] = p99
    return tuple(points.items())[-MAX_LATENCY_POINTS:]


def incumbent_p99(seen: LatencySeen, version: int, baseline: Sequence[ArmTotals], min_requests: float) -> float | None:
    """The incumbent's measured p99: over `baseline` (its traffic since the last round) when that has
    `min_requests` requests, else the latest reading of config `version` in `seen`; None when neither has one.

    Called by `agents.loop_propose.propose_round` for the Critic's `incumbent_p99_ms`.
    """
    now = _p99(baseline, min_requests)
    return now if now is not None else dict(seen).get(version)


def latency_model(
    prior: LatencyModel,
    seen: LatencySeen,
    configs: Mapping[int, CascadeConfig],
    *,
    incumbent: CascadeConfig,
    baseline: Sequence[ArmTotals],
    min_requests: float,
    surface: str,
) -> LatencyModel:
    """The Critic's model: `prior` fitted to `seen` plus the incumbent's p99 since the last round (`baseline`).

    Versions no longer in `configs` are skipped; with nothing observed the prior is returned unchanged.
    """
    observed = [(configs[v], p99) for v, p99 in seen if v in configs]
    now = _p99(baseline, min_requests)
    if now is not None:
        observed.append((incumbent, now))
    if not observed:
        return prior
    return LatencyModel.fit(observed, prior=prior, surface=surface)
