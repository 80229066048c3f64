"""SLO circuit breaker: cut a treatment arm back to control the moment its latency breaks a rule.

Who calls what:

- the sidecar runs `SloBreaker.check(now_s, now_ms)` on a timer (about once a
  second, off the request path).  It reads the latency windows of every arm
  of the current snapshot from the `LatencyMonitor`, asks the pure
  `breaches(stats_by_arm, rules)` which arms break a rule, opens the breaking
  treatment arms in the `ConfigHolder` (one atomic `update`:
  `snapshot.with_open_arms(...)`), and sends one `Alert` per opened arm to the
  alert sink (the `rectune.alerts` producer).  No agent is consulted: from
  the next request on, `Router.assign` serves those arms' users the control
  config (they keep their `arm_id`; see `serving_sidecar.assignment`).
- The control arm is never opened (it *is* the fallback).  When control
  itself breaks a rule, a `warning` alert goes out once when the breach starts
  (again only after it has cleared), and nothing is cut back.

Latency is recorded under the assigned `arm_id`, so while an arm is open its
window fills with control-served latency; the breaker does not re-alert for
an arm it has already opened.  When an arm's experiment or config version
changes between two checks (the agents re-pointed it), its window is cleared:
the new config is judged only on its own traffic.

Reset (optional, `cooldown_s`): an arm this breaker opened is closed again
`cooldown_s` seconds after it opened, with a `breaker_reset` alert (severity
`info`), and its latency window is cleared so the next decision rests only
on traffic served with the treatment config again (and waits for
`min_samples` of it).  If it still breaks the rule it is opened again.
Without `cooldown_s` an opened arm stays open until the agents end or
replace the experiment (a new snapshot without the arm).

Rules are checked against windows of their own length (`SloRule.window_s`,
at most the monitor's window).  A rule is broken when the window's requests
at or over its limit are evidence (an e-value, `schemas.slo`, at `alpha` per
check) of more than the share its quantile allows, not when a quantile read
(accurate to one 12% bin, decided by the few slowest requests) is over it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from schemas.alerts import Alert, Detail
from schemas.metrics import latency_at_or_above
from schemas.slo import quantile_breach
from serving_sidecar.holder import ConfigHolder, Snapshot
from serving_sidecar.latency import LatencyMonitor, LatencyStats

ALERT_SCHEMA_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class SloRule:
    """`quantile` of latency must stay <= `max_ms` over the last `window_s` seconds.

    Judged only once the window holds at least `min_samples` requests, so a
    handful of slow requests on a thin arm cannot trip the breaker.  Broken
    when the window's requests at or over `max_ms` are evidence, at level
    `alpha` per check, of more than the 1 − `quantile` share the rule allows
    (`schemas.slo.quantile_breach`); for `quantile` 1 (a maximum), when any
    request is at or over it.
    """

    max_ms: float
    quantile: float = 0.99
    window_s: float = 60.0
    min_samples: int = 200
    alpha: float = 1e-3

    def __post_init__(self) -> None:
        if not (self.max_ms > 0 and math.isfinite(self.max_ms)):
            msg = f"max_ms: must be a positive number of milliseconds, got {self.max_ms}"
            raise ValueError(msg)
        if not 0.0 < self.quantile <= 1.0:
            msg = f"quantile: must be in (0, 1], got {self.quantile}"
            raise ValueError(msg)
        if not (self.window_s > 0 and math.isfinite(self.window_s)):
            msg = f"window_s: must be a positive number of seconds, got {self.window_s}"
            raise ValueError(msg)
        if self.min_samples < 1:
            msg = f"min_samples: must be >= 1, got {self.min_samples}"
            raise ValueError(msg)
        if not 0.0 < self.alpha < 1.0:
            msg = f"alpha: must be in (0, 1) (the false-trip bound per check), got {self.alpha}"
            raise ValueError(msg)

    @property
    def label(self) -> str:
        """Human form, e.g. `p99 <= 250 ms over 60 s`."""
        return f"p{self.quantile * 100:g} <= {self.max_ms:g} ms over {self.window_s:g} s"


@dataclass(frozen=True, slots=True)
class Breach:
    """One arm breaking one rule, with the figures behind the decision."""

    arm_id: str
    rule: SloRule
    observed_ms: float
    samples: int
    over: int = 0
    evidence: float = math.inf


def judge(arm_id: str, stats: LatencyStats, rule: SloRule) -> Breach | None:
    """The breach of `rule` one arm's window shows, or None (pure; see `SloRule` for the rule).

    Called by `breaches`.  `observed_ms` is the window's quantile read (for
    the alert; it does not decide), `over` the requests counted at or over
    the bound and `evidence` the e-value (inf for a maximum rule).
    """
    if stats.count < rule.min_samples:
        return None
    observed = stats.quantile(rule.quantile)
    if rule.quantile >= 1.0:
        over, _ = latency_at_or_above(stats.histogram, rule.max_ms)
        return Breach(arm_id, rule, observed, stats.count, over) if over > 0 else None
    test, _ = quantile_breach(stats.histogram, rule.max_ms, quantile=rule.quantile, alpha=rule.alpha)
    if not test.breached:
        return None
    return Breach(arm_id, rule, observed, stats.count, test.k, test.e_value)


def breaches(stats_by_arm: Mapping[str, LatencyStats], rules: Iterable[SloRule]) -> list[Breach]:
    """Every (arm, rule) whose window shows the rule broken (pure; `judge` per pair).

    Why a test and not the quantile read against the limit: the read rests
    on the few slowest requests and a 12%-wide bin, and at every check an arm
    whose true p99 was 45 ms (SLO 50 ms) was cut back in 6 to 16 of 40
    simulated 10-minute runs (`schemas.slo` has the method; tests show both).
    The caller passes stats computed over the rules' window (`SloBreaker`
    groups rules by `window_s`).  An arm with fewer than `min_samples`
    requests is not judged by that rule.  Order: arms as given, then rules
    as given.
    """
    rule_list = list(rules)
    found: list[Breach] = []
    for arm_id, stats in stats_by_arm.items():
        for rule in rule_list:
            breach = judge(arm_id, stats, rule)
            if breach is not None:
                found.append(breach)
    return found


def _details(breach: Breach, also: Sequence[Breach]) -> tuple[Detail, ...]:
    rule = breach.rule
    details = [
        Detail("rule", rule.label),
        Detail("quantile", f"{rule.quantile:g}"),
        Detail("observed_ms", f"{breach.observed_ms:.3f}"),
        Detail("limit_ms", f"{rule.max_ms:g}"),
        Detail("samples", str(breach.samples)),
        Detail("at_or_over_limit", str(breach.over)),
        Detail("evidence", f"{breach.evidence:.3g}"),
        Detail("alpha", f"{rule.alpha:g}"),
        Detail("min_samples", str(rule.min_samples)),
        Detail("window_s", f"{rule.window_s:g}"),
    ]
    if also:
        details.append(Detail("also_breached", "; ".join(f"{b.rule.label} ({b.observed_ms:.3f} ms)" for b in also)))
    return tuple(details)


class SloBreaker:
    """Watches every arm of the current snapshot and opens the ones that break an `SloRule`.

    `check` is serialised by its own lock (one timer thread normally calls
    it); it never blocks the request path, which only reads snapshots.
    """

    def __init__(
        self,
        rules: Sequence[SloRule],
        monitor: LatencyMonitor,
        holder: ConfigHolder,
        alert_sink: Callable[[Alert], None],
        source: str,
        *,
        cooldown_s: float | None = None,
    ) -> None:
        if not rules:
            msg = "rules: at least one SloRule is required"
            raise ValueError(msg)
        for i, rule in enumerate(rules):
            if rule.window_s > monitor.window_s + 1e-9:
                msg = f"rules[{i}].window_s: must be <= the monitor's window ({monitor.window_s} s)"
                raise ValueError(msg)
        if not source:
            msg = "source: must name the sidecar instance (non-empty)"
            raise ValueError(msg)
        if cooldown_s is not None and not cooldown_s > 0:
            msg = f"cooldown_s: must be > 0 seconds or None, got {cooldown_s}"
            raise ValueError(msg)
        self.rules = tuple(rules)
        self.monitor = monitor
        self.holder = holder
        self.alert_sink = alert_sink
        self.source = source
        self.cooldown_s = cooldown_s
        self._opened_at: dict[str, float] = {}
        self._control_breaching = False
        self._served: dict[str, tuple[str | None, int]] = {}
        self._lock = threading.Lock()

    def opened(self) -> dict[str, float]:
        """Arms this breaker holds open, with the `now_s` at which it opened them."""
        return dict(self._opened_at)

    def evaluate(self, arm_ids: Iterable[str], now_s: float) -> list[Breach]:
        """Breaches of `arm_ids` at `now_s` (reads the monitor, changes nothing)."""
        arms = list(arm_ids)
        found: list[Breach] = []
        by_window: dict[float, list[SloRule]] = {}
        for rule in self.rules:
            by_window.setdefault(rule.window_s, []).append(rule)
        for window_s, rules in by_window.items():
            stats = {arm: self.monitor.stats(arm, now_s, window_s) for arm in arms}
            found += breaches(stats, rules)
        return found

    def check(self, now_s: float, now_ms: int) -> list[Alert]:
        """One round: open breaking treatment arms, warn on a breaking control, reset cooled-down arms.

        The holder is updated before any alert is sent, so a failing sink
        never delays the cut-back; an exception from the sink propagates
        after the state change.  Returns the alerts sent.
        """
        with self._lock:
            snap = self.holder.snapshot()
            if snap is None:
                return []
            alerts, to_open, to_reset = self._decide(snap, now_s, now_ms)
            if to_open or to_reset:
                self.holder.update(lambda s: s.with_open_arms((s.open_arms | to_open) - to_reset))
                for arm in to_open:
                    self._opened_at[arm] = now_s
                for arm in to_reset:
                    self._opened_at.pop(arm, None)
                    self.monitor.clear(arm)
        for alert in alerts:
            self.alert_sink(alert)
        return alerts

    def _decide(self, snap: Snapshot, now_s: float, now_ms: int) -> tuple[list[Alert], frozenset[str], frozenset[str]]:
        control_id = snap.control.arm_id
        self._forget_changed_arms(snap)
        # Arms closed by someone else (or gone with their experiment) are no longer ours to reset.
        for arm in [a for a in self._opened_at if a not in snap.open_arms]:
            del self._opened_at[arm]
        watched = [a for a in snap.arms if a == control_id or a not in snap.open_arms]
        found = self.evaluate(watched, now_s)
        by_arm: dict[str, list[Breach]] = {}
        for breach in found:
            by_arm.setdefault(breach.arm_id, []).append(breach)

        alerts: list[Alert] = []
        control_breaches = by_arm.pop(control_id, [])
        if control_breaches and not self._control_breaching:
            alerts.append(self._alert(snap, control_breaches, now_ms, control=True))
        self._control_breaching = bool(control_breaches)

        to_open = frozenset(by_arm)
        alerts += [self._alert(snap, by_arm[arm], now_ms, control=False) for arm in by_arm]

        to_reset: set[str] = set()
        if self.cooldown_s is not None:
            for arm, opened_at in self._opened_at.items():
                if now_s - opened_at >= self.cooldown_s:
                    to_reset.add(arm)
                    alerts.append(self._reset_alert(snap, arm, now_s - opened_at, now_ms))
        return alerts, to_open, frozenset(to_reset)

    def _forget_changed_arms(self, snap: Snapshot) -> None:
        """Clear the window of an arm whose experiment or config version changed since the last check.

        Its samples describe a config it no longer serves; without this a
        re-pointed arm could be opened on its predecessor's latency.
        """
        experiment = snap.allocation.experiment_id if snap.allocation is not None else None
        seen: dict[str, tuple[str | None, int]] = {}
        for arm_id, arm in snap.arms.items():
            key = (experiment, arm.config_version)
            before = self._served.get(arm_id)
            if before is not None and before != key:
                self.monitor.clear(arm_id)
                if arm_id == snap.control.arm_id:
                    self._control_breaching = False
            seen[arm_id] = key
        self._served = seen

    def _reset_alert(self, snap: Snapshot, arm: str, open_for_s: float, now_ms: int) -> Alert:
        served = snap.arms.get(arm)
        return Alert(
            schema_version=ALERT_SCHEMA_VERSION,
            kind="breaker_reset",
            severity="info",
            source=self.source,
            message=f"arm {arm!r}: breaker closed after {open_for_s:g} s; its own config is served again",
            at_ms=now_ms,
            arm_id=arm,
            config_version=served.config_version if served is not None else None,
            details=(Detail("open_for_s", f"{open_for_s:g}"), Detail("cooldown_s", f"{self.cooldown_s:g}")),
        )

    def _alert(self, snap: Snapshot, found: Sequence[Breach], now_ms: int, *, control: bool) -> Alert:
        first = found[0]
        arm = snap.arms.get(first.arm_id)
        figures = (
            f"{first.rule.label} broken: {first.over} of {first.samples} requests at or over the limit "
            f"(allowed {100 * (1.0 - first.rule.quantile):.3g}%, e-value {first.evidence:.3g} >= 1/alpha), "
            f"observed p{100 * first.rule.quantile:g} {first.observed_ms:.1f} ms"
        )
        if control:
            message = f"control arm {first.arm_id!r}: {figures}; control is the fallback, nothing cut back"
        else:
            message = f"arm {first.arm_id!r}: {figures}; breaker opened, its users are served the control config"
        return Alert(
            schema_version=ALERT_SCHEMA_VERSION,
            kind="slo_breach",
            severity="warning" if control else "critical",
            source=self.source,
            message=message,
            at_ms=now_ms,
            arm_id=first.arm_id,
            config_version=arm.config_version if arm is not None else None,
            details=_details(first, found[1:]),
        )
