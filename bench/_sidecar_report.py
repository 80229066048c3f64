"""The report of the sidecar benchmark: the human table, the JSON summary and the storm statistics.

`bench/sidecar.py` collects every phase's measurements in one `Results` and
hands it to `report`, which prints the table (machine, then one block per
phase, then the targets of issue 3) and returns the summary that `main` prints
as the last stdout line.  The storm's ratio interval comes from here too
(`paired_rounds`, `bootstrap_ratio`: resampling whole rounds).  Nothing is
measured here; every figure comes from the run it reports.
"""

from __future__ import annotations

import argparse
import os
import platform
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from _machine import cpu_model
from _sidecar_propagation import Propagation
from _sidecar_request_path import CASCADE_CANDIDATES, CASCADE_SETS, Cascade, Overhead
from _sidecar_stats import FloatArray, pct
from _sidecar_storm_phases import Phase

# Targets of issue 3.
TARGET_PROPAGATION_P99_MS: Final = 50.0
TARGET_OVERHEAD_MEDIAN_US: Final = 3.0
TARGET_CASCADE_P99_MS: Final = 15.0
TARGET_STORM_RATIO: Final = 1.05

BOOTSTRAP_RESAMPLES: Final = 1_000


@dataclass(slots=True)
class Results:
    """Everything measured in one run."""

    propagation: Propagation | None = None
    overhead: Overhead | None = None
    cascade: Cascade | None = None
    phases: list[Phase] = field(default_factory=list)
    sink: dict[str, int] = field(default_factory=dict)
    consumer: dict[str, int] = field(default_factory=dict)
    load: list[tuple[float, float, float]] = field(default_factory=list)  # os.getloadavg() at start and end
    sink_flush_s: tuple[float, bool] = (0.0, True)  # draining the overhead phase's impressions before the cascade


def paired_rounds(phases: list[Phase]) -> list[tuple[Phase, Phase]]:
    """(quiet, storm) of each round, in run order."""
    quiet = [ph for ph in phases if ph.kind == "quiet"]
    storm = [ph for ph in phases if ph.kind == "storm"]
    return list(zip(quiet, storm, strict=True))


def bootstrap_ratio(rounds: list[tuple[Phase, Phase]], rng: np.random.Generator) -> tuple[float, float]:
    """95% interval of the pooled p99(storm) / p99(quiet), resampling whole rounds.

    Whole rounds, not single requests: the noise of a shared machine comes in
    bursts longer than a request, so requests of one phase are not independent.
    """
    ratios = np.empty(BOOTSTRAP_RESAMPLES)
    n = len(rounds)
    for b in range(BOOTSTRAP_RESAMPLES):
        pick = rng.integers(0, n, n)
        quiet = np.concatenate([rounds[i][0].latency_ms for i in pick])
        storm = np.concatenate([rounds[i][1].latency_ms for i in pick])
        ratios[b] = np.percentile(storm, 99) / np.percentile(quiet, 99)
    return float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))


# -- report --------------------------------------------------------------------------------


def _ms(values: FloatArray) -> str:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return "n/a"
    return f"{pct(finite, 50):8.2f} {pct(finite, 99):8.2f} {float(finite.max()):8.2f}"


def report(args: argparse.Namespace, r: Results, runtime_s: float) -> dict[str, Any]:
    """Print the human table and return the JSON summary (every figure measured in this run)."""
    p, o, c = r.propagation, r.overhead, r.cascade
    assert p is not None and o is not None and c is not None and r.phases
    print(
        f"machine: {os.cpu_count()} CPUs, {cpu_model()}, Python {platform.python_version()}, "
        f"numpy {np.__version__}, broker {args.broker}, storm producer: {args.storm_producer}"
    )

    active = p.active_ms[np.isfinite(p.active_ms)]
    period = p.watcher_period_us
    print(
        f"\npropagation: {len(p.kinds)} changes one at a time in {p.duration_s:.1f} s "
        f"({p.timeouts} never seen active; {p.overlapped} sent while the previous was not active yet, "
        f"in-flight cap {args.inflight_cap_ms:g} ms, pause 0..{args.gap_ms:g} ms)"
    )
    print(f"  watcher resolution: polling period p50 {pct(period, 50):.0f} µs, p99 {pct(period, 99):.0f} µs")
    print(f"  {'ms from t_sent to ...':<44} {'p50':>8} {'p99':>8} {'max':>8}")
    print(f"  {'ack of send_and_wait (acks=all)':<44} {_ms(p.ack_ms)}")
    print(f"  {'record reaches the consumer fold':<44} {_ms(p.fold_ms)}")
    print(f"  {'holder swapped (verify + apply + snapshot)':<44} {_ms(p.swap_ms)}")
    print(f"  {'active: seen by the watcher  <- figure':<44} {_ms(p.active_ms)}")
    fold_cost = p.swap_ms - p.fold_ms
    print(f"  {'  fold alone (swap - reach)':<44} {_ms(fold_cost)}")
    for kind in ("activate", "allocation", "rollback"):
        sel = np.asarray([k == kind for k in p.kinds]) & np.isfinite(p.active_ms)
        print(f"  {'  active, ' + kind + ' changes':<44} {_ms(p.active_ms[sel])}")

    raw_med, raw_p99 = pct(o.raw_ns, 50) / 1000.0, pct(o.raw_ns, 99) / 1000.0
    print(
        f"\noverhead: snapshot + assign + record, {o.raw_ns.size:,} requests, {args.users:,} users (Zipf 1), "
        f"{o.miss_fraction:.1%} first-seen users (bucket-cache misses), distinct users per arm {o.arms}"
    )
    print(
        f"  timer (two perf_counter_ns): median {o.timer_median_ns:.0f} ns, "
        f"p99 {pct(o.timer_ns, 99):.0f} ns (subtracted below)"
    )
    print(f"  {'µs per request':<30} {'median':>8} {'p90':>8} {'p99':>8} {'p99.9':>8}")
    print(
        f"  {'raw':<30} {raw_med:8.3f} {pct(o.raw_ns, 90) / 1000:8.3f} {raw_p99:8.3f} {pct(o.raw_ns, 99.9) / 1000:8.3f}"
    )
    print(
        f"  {'corrected  <- figure':<30} {o.corrected_us(50):8.3f} {o.corrected_us(90):8.3f} "
        f"{o.corrected_us(99):8.3f} {o.corrected_us(99.9):8.3f}"
    )
    comp = ", ".join(f"{k} {v / 1000:.3f}" for k, v in o.components_ns.items())
    print(f"  components alone (median µs, corrected): {comp}")
    print(
        f"  facade context (raw µs, median / p99): begin() {pct(o.begin_ns, 50) / 1000:.2f} / "
        f"{pct(o.begin_ns, 99) / 1000:.2f} (uuid4 + token), finish() {pct(o.finish_ns, 50) / 1000:.2f} / "
        f"{pct(o.finish_ns, 99) / 1000:.2f} (impression of 12 items to the sink), {o.begin_ns.size:,} calls"
    )
    flush_s, drained = r.sink_flush_s
    print(f"  the sink then drained those impressions in {flush_s:.2f} s{'' if drained else ' (NOT fully)'}")

    print(
        f"\ncascade: {CASCADE_CANDIDATES:,} candidates -> 1,000 -> 200 -> 50 shown (exploration 0.05, "
        f"2 of 4 sponsored slots), {c.wall_ms.size} calls over {CASCADE_SETS} sets "
        f"(generated in {c.generate_s:.1f} s); lists of {min(c.lengths)}..{max(c.lengths)} items"
    )
    print(f"  {'ms per call':<30} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}")
    print(
        f"  {'wall  <- figure':<30} {pct(c.wall_ms, 50):8.2f} {pct(c.wall_ms, 90):8.2f} "
        f"{pct(c.wall_ms, 99):8.2f} {float(c.wall_ms.max()):8.2f}"
    )
    print(
        f"  {'thread CPU':<30} {pct(c.cpu_ms, 50):8.2f} {pct(c.cpu_ms, 90):8.2f} "
        f"{pct(c.cpu_ms, 99):8.2f} {float(c.cpu_ms.max()):8.2f}"
    )
    print("  stages (wall ms, p50 / p99): " + ", ".join(f"{k} {a:.2f} / {b:.2f}" for k, (a, b) in c.stages_ms.items()))
    calm = c.wall_ms[~c.preempted]
    calm_p99 = pct(calm, 99) if calm.size else float("nan")
    print(
        f"  {c.preempted.mean():.0%} of calls were preempted (>= 1 involuntary context switch: another task took the "
        f"core), {c.blocked.mean():.0%} blocked (voluntary switch: GIL or I/O wait); "
        f"wall p99 of the {calm.size} calls never preempted: {calm_p99:.2f} ms"
    )

    quiet = np.concatenate([ph.latency_ms for ph in r.phases if ph.kind == "quiet"])
    storm = np.concatenate([ph.latency_ms for ph in r.phases if ph.kind == "storm"])
    ratio = pct(storm, 99) / pct(quiet, 99)
    rounds = paired_rounds(r.phases)
    low, high = bootstrap_ratio(rounds, np.random.default_rng(args.seed + 5))
    print(
        f"\nstorm: ranker loop on {args.storm_candidates:,} candidates (begin -> rank -> to_shown_items -> finish, "
        f"event sink on), {args.storm_requests:,} requests per phase, changes at {args.storm_rate:g}/s in storm "
        f"phases; sink emitted {r.sink.get('emitted', 0):,} impressions, dropped {r.sink.get('dropped', 0)}"
    )
    print(
        f"  {'phase':<8} {'requests':>8} {'s':>6} {'swaps/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'cpu p99':>8}  storm"
    )
    for ph in r.phases:
        s = ph.storm
        note = (
            f"{s.sent} changes v{s.first_version}..v{s.last_version}, max tick slip {s.max_late_ms:.1f} ms" if s else ""
        )
        print(
            f"  {ph.kind:<8} {ph.latency_ms.size:>8} {ph.duration_s:6.1f} {ph.swaps / ph.duration_s:8.1f} "
            f"{pct(ph.latency_ms, 50):8.3f} {pct(ph.latency_ms, 99):8.3f} {float(ph.latency_ms.max()):8.2f} "
            f"{pct(ph.cpu_ms, 99):8.3f}  {note}"
        )
    print(
        f"  pooled   quiet p50 {pct(quiet, 50):.3f} p99 {pct(quiet, 99):.3f} ms; "
        f"storm p50 {pct(storm, 50):.3f} p99 {pct(storm, 99):.3f} ms"
    )
    print(
        f"  p99 ratio storm/quiet = {ratio:.3f} (95% bootstrap {low:.3f}..{high:.3f}); "
        f"p50 ratio {pct(storm, 50) / pct(quiet, 50):.3f}"
    )
    storm_phases = [ph for ph in r.phases if ph.kind == "storm"]
    quiet_phases = [ph for ph in r.phases if ph.kind == "quiet"]
    round_ratios = [
        pct(s.latency_ms, 99) / pct(q.latency_ms, 99) for s, q in zip(storm_phases, quiet_phases, strict=True)
    ]
    above = sum(x > 1.0 for x in round_ratios)
    print(
        f"  per-round p99 ratios ({len(round_ratios)} rounds, median {pct(round_ratios, 50):.3f}, "
        f"{above} above 1): " + ", ".join(f"{x:.2f}" for x in round_ratios)
    )
    quiet_cpu = np.concatenate([ph.cpu_ms for ph in quiet_phases])
    storm_cpu = np.concatenate([ph.cpu_ms for ph in storm_phases])
    cpu_ratio = pct(storm_cpu, 99) / pct(quiet_cpu, 99)
    print(
        f"  request-thread CPU time: quiet p99 {pct(quiet_cpu, 99):.3f} ms, storm p99 {pct(storm_cpu, 99):.3f} ms, "
        f"ratio {cpu_ratio:.3f} (excludes preemption by other processes and waits for the GIL)"
    )
    quiet_pre = np.concatenate([ph.preempted for ph in quiet_phases])
    storm_pre = np.concatenate([ph.preempted for ph in storm_phases])
    calm_ratio = pct(storm[~storm_pre], 99) / pct(quiet[~quiet_pre], 99)
    print(
        f"  requests preempted (another task ran): quiet {quiet_pre.mean():.1%}, storm {storm_pre.mean():.1%}; "
        f"wall p99 of the others: quiet {pct(quiet[~quiet_pre], 99):.3f} ms, "
        f"storm {pct(storm[~storm_pre], 99):.3f} ms, ratio {calm_ratio:.3f}"
    )
    hit = np.concatenate([ph.swapped for ph in storm_phases])
    if hit.any():
        print(
            f"  within storm phases, the {hit.mean():.1%} of requests during which a swap landed: p50 "
            f"{pct(storm[hit], 50):.3f} ms, mean {float(storm[hit].mean()):.3f} ms; the others: p50 "
            f"{pct(storm[~hit], 50):.3f} ms, mean {float(storm[~hit].mean()):.3f} ms"
        )
    consumer = r.consumer
    print(
        f"  config consumer over the run: {consumer.get('accepted', 0)} accepted, {consumer.get('refused', 0)} "
        f"refused, {consumer.get('errors', 0)} errors; load average (1/5/15 min) at start "
        f"{'/'.join(f'{x:.2f}' for x in r.load[0])}, at end {'/'.join(f'{x:.2f}' for x in r.load[-1])}"
    )

    prop_p50, prop_p99 = pct(active, 50), pct(active, 99)
    over_med, over_p99 = o.corrected_us(50), o.corrected_us(99)
    casc_p99 = pct(c.wall_ms, 99)
    met = {
        "propagation_p99": p.timeouts == 0 and prop_p99 <= TARGET_PROPAGATION_P99_MS,
        "overhead_median": over_med <= TARGET_OVERHEAD_MEDIAN_US,
        "cascade_p99": casc_p99 <= TARGET_CASCADE_P99_MS,
        "storm_p99_ratio": ratio <= TARGET_STORM_RATIO,
    }
    print(
        f"\ntargets: propagation p99 {prop_p99:.1f} ms <= {TARGET_PROPAGATION_P99_MS:g} "
        f"{'met' if met['propagation_p99'] else 'MISSED'}; overhead median {over_med:.2f} µs <= "
        f"{TARGET_OVERHEAD_MEDIAN_US:g} {'met' if met['overhead_median'] else 'MISSED'}; cascade p99 "
        f"{casc_p99:.1f} ms <= {TARGET_CASCADE_P99_MS:g} {'met' if met['cascade_p99'] else 'MISSED'}; "
        f"storm ratio {ratio:.3f} <= {TARGET_STORM_RATIO} {'met' if met['storm_p99_ratio'] else 'MISSED'}"
    )
    print(f"runtime {runtime_s:.0f} s")
    return {
        "propagation_p50_ms": round(prop_p50, 3),
        "propagation_p99_ms": round(prop_p99, 3),
        "overhead_median_us": round(over_med, 3),
        "overhead_p99_us": round(over_p99, 3),
        "cascade_p99_ms": round(casc_p99, 3),
        "storm_p99_ratio": round(ratio, 4),
        "targets_met": met,
        "context": {
            "changes": len(p.kinds),
            "requests": o.raw_ns.size,
            "storm_requests": {"quiet": int(quiet.size), "storm": int(storm.size)},
            "broker": args.broker,
            "storm_producer": args.storm_producer,
            "propagation_max_ms": round(float(active.max()), 3) if active.size else None,
            "propagation_timeouts": p.timeouts,
            "watcher_period_p50_us": round(pct(period, 50), 1),
            "overhead_basis": "corrected: median timer cost (two perf_counter_ns) subtracted",
            "overhead_median_us_raw": round(raw_med, 3),
            "overhead_p99_us_raw": round(raw_p99, 3),
            "timer_median_ns": round(o.timer_median_ns, 1),
            "cascade_p50_ms": round(pct(c.wall_ms, 50), 3),
            "cascade_cpu_p99_ms": round(pct(c.cpu_ms, 99), 3),
            "storm_quiet_p99_ms": round(pct(quiet, 99), 3),
            "storm_storm_p99_ms": round(pct(storm, 99), 3),
            "storm_ratio_ci95": [round(low, 4), round(high, 4)],
            "storm_round_ratios": [round(x, 4) for x in round_ratios],
            "storm_swaps_per_s": round(
                sum(ph.swaps for ph in storm_phases) / sum(ph.duration_s for ph in storm_phases), 2
            ),
            "quiet_swaps": sum(ph.swaps for ph in quiet_phases),
            "storm_cpu_p99_ratio": round(cpu_ratio, 4),
            "storm_unpreempted_p99_ratio": round(calm_ratio, 4),
            "storm_swap_hit_share": round(float(hit.mean()), 4),
            "storm_swap_hit_mean_excess_ms": round(float(storm[hit].mean() - storm[~hit].mean()), 3)
            if hit.any() and (~hit).any()
            else None,
            "storm_preempted_share": [round(float(quiet_pre.mean()), 4), round(float(storm_pre.mean()), 4)],
            "cascade_unpreempted_p99_ms": round(calm_p99, 3),
            "cascade_preempted_share": round(float(c.preempted.mean()), 4),
            "load_avg_start_end": [round(r.load[0][0], 2), round(r.load[-1][0], 2)],
            "cpus": os.cpu_count(),
            "runtime_s": round(runtime_s, 1),
        },
    }
