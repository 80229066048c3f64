"""Latency monitor (sliding window, quantiles, mean/variance, threads) and the SLO breaker.

Pure unit tests of `serving_sidecar.latency` and `serving_sidecar.breaker`:
time is passed in, never read, so every window edge is exact.  Latency is
never measured here (the per-request cost is a benchmark's business).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.alerts import Alert, decode_alert, encode_alert
from schemas.config import Allocation, ArmShare, CascadeConfig, default_config
from schemas.config_log import ConfigChange, Keyring, ServingState, fold, sign
from schemas.metrics import (
    LATENCY_BINS_PER_DECADE,
    LATENCY_EDGES_MS,
    N_LATENCY_BINS,
    latency_bins,
    latency_quantile,
)
from schemas.slo import exceedance_test
from serving_sidecar.assignment import Router
from serving_sidecar.breaker import SloBreaker, SloRule, breaches
from serving_sidecar.holder import ConfigHolder, Snapshot
from serving_sidecar.latency import LatencyMonitor, LatencyStats, latency_bin

ONE_BIN = 10.0 ** (1.0 / LATENCY_BINS_PER_DECADE)  # a bin's upper / lower edge (~1.122)
KEYRING = Keyring.parse("k1:" + "ab" * 16, "k1")
T0_MS = 1_700_000_000_000


# --- the monitor ----------------------------------------------------------------------------------


@given(st.floats(0.0, 1e7, allow_nan=False))
def test_bins_match_the_pipeline_layout(latency_ms: float) -> None:
    assert latency_bin(latency_ms) == int(latency_bins([latency_ms])[0])


@pytest.mark.parametrize(("median_ms", "sigma"), [(20.0, 0.6), (3.0, 1.2), (250.0, 0.3)])
def test_quantiles_within_one_bin_of_numpy(median_ms: float, sigma: float) -> None:
    rng = np.random.default_rng(7)
    samples = rng.lognormal(math.log(median_ms), sigma, size=20_000)
    monitor = LatencyMonitor(window_s=60.0, slices=6)
    for i, x in enumerate(samples.tolist()):
        monitor.record("t1", x, 1_000.0 + i * 1e-3)
    stats = monitor.stats("t1", 1_020.0)
    assert stats.count == samples.size
    for q, got in ((50, stats.p50), (95, stats.p95), (99, stats.p99)):
        true = float(np.percentile(samples, q))
        assert true / ONE_BIN <= got <= true * ONE_BIN, (q, got, true)
        assert abs(latency_bin(got) - latency_bin(true)) <= 1
    assert stats.quantile(0.99) == stats.p99
    assert stats.histogram == tuple(np.bincount(latency_bins(samples), minlength=N_LATENCY_BINS).tolist())


def test_mean_and_variance_are_exact_even_far_from_zero() -> None:
    rng = np.random.default_rng(3)
    for centre, spread in ((15.0, 4.0), (500_000.0, 0.01)):
        samples = centre + spread * rng.standard_normal(5_000)
        monitor = LatencyMonitor(window_s=10.0, slices=5)
        for i, x in enumerate(samples.tolist()):
            monitor.record("a", x, 100.0 + i * 1e-4)
        stats = monitor.stats("a", 100.5)
        assert stats.mean == pytest.approx(float(np.mean(samples)), rel=1e-12)
        assert stats.variance == pytest.approx(float(np.var(samples, ddof=1)), rel=1e-6)


def test_empty_and_single_sample_stats() -> None:
    monitor = LatencyMonitor(window_s=5.0, slices=5)
    empty = monitor.stats("nobody", 10.0)
    assert empty.count == 0
    assert all(math.isnan(v) for v in (empty.p50, empty.p95, empty.p99, empty.mean, empty.variance))
    assert math.isnan(empty.quantile(0.5))
    monitor.record("one", 12.0, 10.0)
    single = monitor.stats("one", 10.0)
    assert (single.count, single.mean) == (1, 12.0)
    assert math.isnan(single.variance)


def test_window_forgets_old_samples() -> None:
    monitor = LatencyMonitor(window_s=10.0, slices=10)  # 1 s slices
    for _ in range(100):
        monitor.record("a", 5.0, 0.5)
    for _ in range(50):
        monitor.record("a", 50.0, 5.2)
    assert monitor.stats("a", 9.9).count == 150  # both slices within 10 s
    later = monitor.stats("a", 10.5)  # slice [0, 1) has left the window
    assert later.count == 50
    assert later.mean == 50.0
    assert monitor.stats("a", 15.5).count == 0
    # A recycled ring slot starts from zero.
    monitor.record("a", 7.0, 20.3)
    assert monitor.stats("a", 20.3).count == 1


def test_shorter_rule_window_reads_only_the_last_slices() -> None:
    monitor = LatencyMonitor(window_s=60.0, slices=12)  # 5 s slices
    monitor.record("a", 100.0, 1.0)
    monitor.record("a", 10.0, 56.0)
    assert monitor.stats("a", 58.0).count == 2
    last = monitor.stats("a", 58.0, window_s=10.0)
    assert (last.count, last.mean, last.window_s) == (1, 10.0, 10.0)
    with pytest.raises(ValueError, match="window_s"):
        monitor.stats("a", 58.0, window_s=61.0)


def test_sample_older_than_the_window_is_dropped() -> None:
    monitor = LatencyMonitor(window_s=10.0, slices=10)
    monitor.record("a", 5.0, 100.2)
    monitor.record("a", 9.0, 90.2)  # same ring slot, a whole window older: must not wipe the newer slice
    stats = monitor.stats("a", 100.5)
    assert (stats.count, stats.mean) == (1, 5.0)


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_bad_latency_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="latency_ms"):
        LatencyMonitor(window_s=1.0).record("a", bad, 0.0)


def test_bad_monitor_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="window_s"):
        LatencyMonitor(window_s=0.0)
    with pytest.raises(ValueError, match="slices"):
        LatencyMonitor(window_s=1.0, slices=0)


def test_many_threads_lose_no_sample_and_merge_exactly() -> None:
    monitor = LatencyMonitor(window_s=30.0, slices=6)
    per_thread = 5_000
    values = {t: [1.0 + t + (i % 97) * 0.25 for i in range(per_thread)] for t in range(6)}
    start = threading.Barrier(len(values))

    def work(t: int) -> None:
        start.wait()
        for i, x in enumerate(values[t]):
            monitor.record("arm", x, 10.0 + i * 1e-3)

    threads = [threading.Thread(target=work, args=(t,)) for t in values]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = np.array([x for xs in values.values() for x in xs])
    stats = monitor.stats("arm", 15.0)
    assert stats.count == everything.size == sum(stats.histogram)
    assert stats.mean == pytest.approx(float(everything.mean()), rel=1e-12)
    assert stats.variance == pytest.approx(float(everything.var(ddof=1)), rel=1e-9)
    assert monitor.arms() == {"arm"}
    # Dead threads' shards stay while their samples are in the window, then go.
    assert monitor.shard_count() == len(values)
    monitor.stats("arm", 100.0)
    assert monitor.shard_count() == 0


def test_clear_forgets_an_arm() -> None:
    monitor = LatencyMonitor(window_s=10.0)
    monitor.record("a", 5.0, 1.0)
    monitor.record("b", 5.0, 1.0)
    monitor.clear("a")
    assert monitor.stats("a", 1.0).count == 0
    assert monitor.stats("b", 1.0).count == 1


# --- the pure breach rule -------------------------------------------------------------------------


def stats_of(hist: list[int]) -> LatencyStats:
    counts = tuple(hist)
    n = sum(counts)
    q: Callable[[float], float] = lambda p: latency_quantile(counts, p) if n else math.nan  # noqa: E731
    return LatencyStats(n, q(0.5), q(0.95), q(0.99), math.nan, math.nan, 60.0, counts)


histograms = st.dictionaries(st.integers(0, N_LATENCY_BINS - 1), st.integers(1, 400), max_size=12).map(
    lambda sparse: [sparse.get(i, 0) for i in range(N_LATENCY_BINS)]
)
rules = st.builds(
    SloRule,
    max_ms=st.floats(0.5, 5_000.0),
    quantile=st.sampled_from([0.5, 0.9, 0.95, 0.99, 1.0]),
    window_s=st.just(60.0),
    min_samples=st.integers(1, 2_000),
)


@settings(max_examples=200, deadline=None)
@given(
    arms=st.dictionaries(st.sampled_from(["control", "t1", "t2", "t3"]), histograms, min_size=1),
    rule_list=st.lists(rules, min_size=1, max_size=3),
    looser=st.floats(1.0, 10.0),
)
def test_breaches_rule(arms: dict[str, list[int]], rule_list: list[SloRule], looser: float) -> None:
    stats = {arm: stats_of(hist) for arm, hist in arms.items()}
    found = breaches(stats, rule_list)

    def over(hist: list[int], limit_ms: float) -> int:  # bin i >= 1 holds [edge i-1, edge i)
        return sum(c for i, c in enumerate(hist) if i >= 1 and LATENCY_EDGES_MS[i - 1] >= limit_ms)

    expected = []
    for arm, s in stats.items():
        for rule in rule_list:
            k = over(arms[arm], rule.max_ms)
            if s.count < rule.min_samples:
                continue
            if rule.quantile == 1.0:
                broken = k > 0
            else:
                broken = exceedance_test(s.count, k, allowed=1.0 - rule.quantile, alpha=rule.alpha).breached
            if broken:
                expected.append((arm, rule, k))
    assert [(b.arm_id, b.rule, b.over) for b in found] == expected
    assert all(b.samples == stats[b.arm_id].count for b in found)
    # A looser limit, a higher sample floor or a smaller alpha never finds more.
    relaxed = [dataclasses.replace(r, max_ms=r.max_ms * looser) for r in rule_list]
    stricter_floor = [dataclasses.replace(r, min_samples=r.min_samples * 2) for r in rule_list]
    stricter_alpha = [dataclasses.replace(r, alpha=r.alpha / looser) for r in rule_list]
    assert len(breaches(stats, relaxed)) <= len(found)
    assert len(breaches(stats, stricter_floor)) <= len(found)
    assert len(breaches(stats, stricter_alpha)) <= len(found)


def test_the_breaker_does_not_cut_an_arm_whose_p99_meets_the_slo_where_a_p99_read_would() -> None:
    """Windows of 600 requests (a minute at 10 requests/s), lognormal latency, SLO p99 <= 50 ms."""
    rng = np.random.default_rng(7)
    rule = SloRule(max_ms=50.0)
    z99 = 2.3263478740408408

    def windows(p99_ms: float, count: int = 200) -> list[LatencyStats]:
        sigma = 0.25
        mu = math.log(p99_ms) - z99 * sigma
        out = []
        for _ in range(count):
            hist = np.bincount(latency_bins(rng.lognormal(mu, sigma, 600)), minlength=N_LATENCY_BINS)
            out.append(stats_of([int(c) for c in hist]))
        return out

    # at one check a second, a rule that trips in 1 window of 10 cuts the arm back within seconds
    good = windows(48.0)
    read_over = sum(s.p99 > rule.max_ms for s in good)
    assert read_over >= 10, "the p99 read of an arm at 48 ms is often over 50 ms (the old rule tripped on it)"
    assert sum(bool(breaches({"t1": s}, [rule])) for s in good) == 0
    at_slo = windows(50.0)
    assert sum(bool(breaches({"t1": s}, [rule])) for s in at_slo) <= 1, "alpha bounds each check at the SLO itself"
    bad = windows(60.0)
    assert sum(bool(breaches({"t1": s}, [rule])) for s in bad) >= 190, "a real breach trips in almost every window"


def test_rule_settings_are_checked() -> None:
    for bad in (
        {"max_ms": 0.0},
        {"max_ms": 10.0, "quantile": 0.0},
        {"max_ms": 10.0, "window_s": -1.0},
        {"max_ms": 10.0, "min_samples": 0},
        {"max_ms": 10.0, "alpha": 0.0},
        {"max_ms": 10.0, "alpha": 1.0},
    ):
        with pytest.raises(ValueError):
            SloRule(**bad)  # type: ignore[arg-type]
    assert SloRule(250.0).label == "p99 <= 250 ms over 60 s"


# --- the breaker against a real holder ------------------------------------------------------------


def config_for(cut: int) -> CascadeConfig:
    base = default_config()
    return msgspec.structs.replace(base, rank=msgspec.structs.replace(base.rank, cut=cut))


def change(version: int, kind: str, **fields: object) -> ConfigChange:
    unsigned = ConfigChange(
        schema_version=1,
        version=version,
        parent_version=version - 1,
        author="test",
        reason="test",
        created_ms=T0_MS + version,
        kind=kind,  # type: ignore[arg-type]
        key_id="k1",
        **fields,  # type: ignore[arg-type]
    )
    return sign(unsigned, KEYRING)


def experiment_state(t1_version: int = 2) -> ServingState:
    """control = v1, t1 = v2 (or v4 when re-pointed), t2 = v3; 20% each."""
    changes = [
        change(1, "config", config=config_for(100), activate=True),
        change(2, "config", config=config_for(90)),
        change(3, "config", config=config_for(80)),
    ]
    if t1_version == 4:
        changes.append(change(4, "config", config=config_for(70)))
    allocation = Allocation(
        experiment_id="exp",
        salt="exp-salt",
        arms=(ArmShare("control", 1, 0.6), ArmShare("t1", t1_version, 0.2), ArmShare("t2", 3, 0.2)),
    )
    changes.append(change(len(changes) + 1, "allocation", allocation=allocation))
    result = fold(changes, KEYRING)
    assert not result.refused
    return result.state


class Rig:
    """A holder, monitor, breaker and collected alerts, with helpers to feed latency."""

    def __init__(self, *, cooldown_s: float | None = None, min_samples: int = 100) -> None:
        self.holder = ConfigHolder(Snapshot.from_state(experiment_state()))
        self.monitor = LatencyMonitor(window_s=60.0, slices=12)
        self.alerts: list[Alert] = []
        self.rule = SloRule(max_ms=200.0, quantile=0.99, window_s=60.0, min_samples=min_samples)
        self.breaker = SloBreaker(
            [self.rule], self.monitor, self.holder, self.alerts.append, "sidecar-test", cooldown_s=cooldown_s
        )

    def feed(self, arm: str, n: int, ms: float, now_s: float) -> None:
        for i in range(n):
            self.monitor.record(arm, ms * (1.0 + (i % 10) / 100.0), now_s)

    def open_arms(self) -> frozenset[str]:
        snapshot = self.holder.snapshot()
        assert snapshot is not None
        return snapshot.open_arms


def test_breaker_opens_only_the_breaching_arm_and_alerts_once() -> None:
    rig = Rig()
    rig.feed("control", 500, 40.0, 100.0)
    rig.feed("t1", 300, 450.0, 100.0)  # p99 ~ 490 ms > 200 ms
    rig.feed("t2", 300, 60.0, 100.0)
    sent = rig.breaker.check(101.0, T0_MS + 101_000)
    assert sent == rig.alerts
    assert len(sent) == 1
    alert = sent[0]
    assert (alert.kind, alert.severity, alert.arm_id, alert.config_version) == ("slo_breach", "critical", "t1", 2)
    details = {d.name: d.value for d in alert.details}
    assert (
        float(details["observed_ms"]) == pytest.approx(rig.monitor.stats("t1", 101.0).p99)
        and float(details["observed_ms"]) > 200.0
    )
    assert (details["limit_ms"], details["samples"], details["window_s"], details["quantile"]) == (
        "200",
        "300",
        "60",
        "0.99",
    )
    assert alert.source == "sidecar-test"
    assert alert.at_ms == T0_MS + 101_000
    assert decode_alert(encode_alert(alert)) == alert
    assert rig.open_arms() == {"t1"}
    assert set(rig.breaker.opened()) == {"t1"}
    # Users of t1 are served control from the very next request; others are untouched.
    snapshot = rig.holder.snapshot()
    assert snapshot is not None
    router = Router()
    for i in range(2_000):
        got = router.assign(snapshot, f"user-{i}")
        if got.arm_id == "t1":
            assert got.served_control_because_open
            assert got.config is snapshot.control.config
        else:
            assert not got.served_control_because_open
    # Still breaching on the next round: already open, no second alert.
    assert rig.breaker.check(102.0, T0_MS + 102_000) == []
    assert len(rig.alerts) == 1


def test_control_breach_warns_once_and_is_never_opened() -> None:
    rig = Rig()
    rig.feed("control", 500, 900.0, 100.0)
    sent = rig.breaker.check(100.5, T0_MS)
    assert [(a.kind, a.severity, a.arm_id, a.config_version) for a in sent] == [("slo_breach", "warning", "control", 1)]
    assert rig.open_arms() == frozenset()
    assert rig.breaker.check(101.0, T0_MS) == []  # same breach: no repeat
    # Recovers (old samples age out), then breaks again: a new warning.
    rig.feed("control", 500, 30.0, 170.0)
    assert rig.breaker.check(170.5, T0_MS) == []
    rig.feed("control", 500, 900.0, 240.0)
    assert [a.severity for a in rig.breaker.check(240.5, T0_MS)] == ["warning"]


def test_min_samples_guards_thin_arms() -> None:
    rig = Rig(min_samples=100)
    rig.feed("t1", 99, 5_000.0, 10.0)
    assert rig.breaker.check(10.5, T0_MS) == []
    assert rig.open_arms() == frozenset()
    rig.feed("t1", 1, 5_000.0, 10.6)
    assert [a.arm_id for a in rig.breaker.check(10.7, T0_MS)] == ["t1"]
    assert rig.open_arms() == {"t1"}


def test_cooldown_resets_the_arm_and_clears_its_window() -> None:
    rig = Rig(cooldown_s=30.0)
    rig.feed("t1", 200, 800.0, 10.0)
    assert [a.kind for a in rig.breaker.check(10.5, T0_MS)] == ["slo_breach"]
    assert rig.breaker.check(30.0, T0_MS) == []  # not cooled down yet
    sent = rig.breaker.check(40.5, T0_MS + 30_000)
    assert [(a.kind, a.severity, a.arm_id, a.config_version) for a in sent] == [("breaker_reset", "info", "t1", 2)]
    assert rig.open_arms() == frozenset()
    assert rig.monitor.stats("t1", 40.5).count == 0  # judged afresh on its own traffic
    # Still slow after the reset: opened again.
    rig.feed("t1", 200, 800.0, 41.0)
    assert [a.kind for a in rig.breaker.check(41.5, T0_MS)] == ["slo_breach"]
    assert rig.open_arms() == {"t1"}


def test_a_repointed_arm_is_judged_on_its_new_config_only() -> None:
    rig = Rig()
    rig.feed("t1", 50, 800.0, 10.0)  # below min_samples: no decision yet
    assert rig.breaker.check(10.5, T0_MS) == []
    # The agents re-point t1 at a new config version: its old samples must not count.
    rig.holder.swap(Snapshot.from_state(experiment_state(t1_version=4)))
    rig.feed("t1", 60, 800.0, 11.0)
    assert rig.breaker.check(11.5, T0_MS) == []
    assert rig.monitor.stats("t1", 11.5).count == 0  # cleared when the change was seen
    rig.feed("t1", 100, 800.0, 12.0)
    assert [(a.arm_id, a.config_version) for a in rig.breaker.check(12.5, T0_MS)] == [("t1", 4)]


def test_arm_closed_elsewhere_is_forgotten() -> None:
    rig = Rig(cooldown_s=5.0)
    rig.feed("t1", 200, 800.0, 10.0)
    rig.breaker.check(10.5, T0_MS)
    rig.holder.update(lambda s: s.with_open_arms(frozenset()))  # e.g. the experiment was replaced
    rig.monitor.clear("t1")
    assert rig.breaker.check(20.0, T0_MS) == []  # no reset alert for an arm no longer ours
    assert rig.breaker.opened() == {}


def test_holder_is_updated_before_a_failing_sink() -> None:
    rig = Rig()

    def broken(alert: Alert) -> None:
        msg = "broker down"
        raise ConnectionError(msg)

    rig.breaker.alert_sink = broken
    rig.feed("t2", 300, 700.0, 5.0)
    with pytest.raises(ConnectionError):
        rig.breaker.check(5.5, T0_MS)
    assert rig.open_arms() == {"t2"}


def test_rules_with_their_own_windows() -> None:
    monitor = LatencyMonitor(window_s=60.0, slices=12)
    holder = ConfigHolder(Snapshot.from_state(experiment_state()))
    alerts: list[Alert] = []
    fast = SloRule(max_ms=100.0, quantile=0.5, window_s=10.0, min_samples=10)
    slow = SloRule(max_ms=1_000.0, quantile=0.99, window_s=60.0, min_samples=10)
    breaker = SloBreaker([slow, fast], monitor, holder, alerts.append, "sidecar-test")
    for _ in range(100):
        monitor.record("t1", 500.0, 1.0)  # a minute-old burst: inside 60 s, outside 10 s
        monitor.record("t1", 20.0, 55.0)
    assert breaker.evaluate(["t1"], 58.0) == []
    for _ in range(100):
        monitor.record("t2", 300.0, 57.0)
    found = breaker.evaluate(["t1", "t2"], 58.0)
    assert [(b.arm_id, b.rule) for b in found] == [("t2", fast)]
    breaker.check(58.0, T0_MS)
    details = {d.name: d.value for d in alerts[0].details}
    assert details["rule"] == "p50 <= 100 ms over 10 s"
    with pytest.raises(ValueError, match="window"):
        SloBreaker([SloRule(100.0, window_s=120.0)], monitor, holder, alerts.append, "x")
    with pytest.raises(ValueError, match="rules"):
        SloBreaker([], monitor, holder, alerts.append, "x")


def test_no_snapshot_no_decision() -> None:
    breaker = SloBreaker([SloRule(1.0)], LatencyMonitor(60.0), ConfigHolder(), lambda _a: None, "x")
    assert breaker.check(1.0, T0_MS) == []
