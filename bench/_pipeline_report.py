"""The report of the pipeline benchmark: the human table, the work split and the JSON summary.

`bench/pipeline.py` (`main`) hands the results and facts of `run` to
`report`, which prints the machine and data lines, one table row per variant,
how each multi-process group split the partitions, the ratios against the
targets of issue 2, and returns the summary that `main` prints as the last
stdout line.  Nothing is measured here; every figure comes from the run it
reports.
"""

from __future__ import annotations

import argparse
import os
import platform
from typing import Any, Final

from _machine import cpu_model
from _pipeline_measure import MB, Result

# Targets of issue 2 (ratios within one run).
TARGET_VS_NAIVE: Final = 40.0
TARGET_VS_CEILING: Final = 0.5
TARGET_RATE: Final = 250_000.0
TARGET_RSS_MB: Final = 600.0
TARGET_RSS_EVENTS: Final = 2_000_000


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def report(args: argparse.Namespace, results: dict[str, Result], facts: dict[str, Any]) -> dict[str, Any]:
    """Print the human table and return the JSON summary (every figure measured in this run)."""
    print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}, Python {platform.python_version()}, broker {args.broker}")
    print(
        f"data: {facts['batched_bytes'] / MB:.0f} MB of envelopes, {facts['single_bytes'] / MB:.1f} MB of one-event "
        f"messages (shape {args.single_shape!r}); generated in {facts['generate_s']:.1f} s, envelopes produced in "
        f"{facts['produce_batched_s']:.1f} s; broker RSS up to {facts['broker_rss_mb']:.0f} MB"
    )
    load_before, load_after = facts["load_before"], facts.get("load_after", (float("nan"),) * 3)
    busy = (
        " (other processes were busy: rates are lower and noisier)" if max(load_before[0], load_after[0]) > 0.5 else ""
    )
    print(f"load average (1 min) before/after: {load_before[0]:.2f}/{load_after[0]:.2f}{busy}")
    print("rates are per second, so the envelope set and the smaller one-event set may differ in size;")
    print("CPU s is the variant's processes over the timed interval (the broker's is not included);")
    print("peak RSS is the sum of each process's peak (the largest single process in brackets);")
    print("w/ start-up is events/s from spawn to the end: start-up, group join and every rebalance included")
    header = (
        f"{'variant':<14} {'procs':>5} {'messages':>9} {'item events':>12} {'events/s':>11} {'msgs/s':>9} "
        f"{'events/CPU-s':>12} {'CPU s':>6} {'timed s':>8} {'start-up s':>10} {'w/ start-up':>11} "
        f"{'peak RSS MB':>15}  note"
    )
    print(header)
    print("-" * len(header))
    order = ("batched", "batched_1proc", "ceiling", "ceiling_1proc", "direct", "single", "naive")
    for name in order:
        r = results.get(name)
        if r is None:
            continue
        rss = f"{r.peak_rss_mb:.0f} ({r.peak_rss_max_mb:.0f})"
        print(
            f"{r.name:<14} {r.processes:>5} {r.messages:>9} {r.item_events:>12} {r.events_per_s:>11,.0f} "
            f"{r.messages_per_s:>9,.0f} {r.events_per_cpu_s:>12,.0f} {r.cpu_s:>6.1f} {r.measured_s:>8.2f} "
            f"{r.startup_s:>10.2f} {r.with_startup_events_per_s:>11,.0f} {rss:>15}  {r.note}"
        )
    print("group membership and work split (partitions each process logged as assigned; CPU s in the timed window):")
    for name in order:
        r = results.get(name)
        if r is None or len(r.assigned) < 2:
            continue
        split = "; ".join(
            f"p{i}: {list(parts)} {cpu:.1f} CPU-s"
            for i, (parts, cpu) in enumerate(zip(r.assigned, r.cpu_s_per_process, strict=False))
        )
        flag = "" if r.all_assigned else "  ** NOT every process got a partition **"
        print(
            f"  {r.name}: {split}; {r.members_at_first} member(s) at first progress, up to {r.members_max}; "
            f"group complete {r.group_complete_s:.1f} s after spawn; {r.rebalancing_s:.1f} s of the "
            f"{r.measured_s:.1f} s timed window rebalancing{flag}"
        )
    b, c = results["batched"], results["ceiling"]
    b1, c1 = results.get("batched_1proc", b), results.get("ceiling_1proc", c)
    print(
        f"ceiling processes consumed {facts['ceiling_consumed']:,} item events for {c.item_events:,} produced "
        f"({facts['ceiling_consumed'] - c.item_events:,} re-read after a rebalance)"
    )
    vs_naive = _ratio(b.events_per_s, results["naive"].events_per_s)
    vs_ceiling = _ratio(b.events_per_s, c.events_per_s)
    vs_ceiling_1 = _ratio(b1.events_per_s, c1.events_per_s)
    print(
        f"{b.processes} worker process(es): batched / naive = {vs_naive:.1f}x (target >= {TARGET_VS_NAIVE:.0f}x); "
        f"batched / ceiling = {vs_ceiling:.2f} (target >= {TARGET_VS_CEILING}; 1 process each: {vs_ceiling_1:.2f}); "
        f"batched >= {TARGET_RATE:,.0f}/s on a 2-core machine; "
        f"peak RSS <= {TARGET_RSS_MB:.0f} MB for {TARGET_RSS_EVENTS:,} events (this run: {b.item_events:,})"
    )
    spread = {name: r.all_assigned for name, r in results.items() if len(r.assigned) > 1}
    return {
        "events": b.item_events,
        "workers": args.workers,
        "batched_events_per_s": round(b.events_per_s),
        "batched_1proc_events_per_s": round(b1.events_per_s),
        "batched_with_startup_events_per_s": round(b.with_startup_events_per_s),
        "batched_1proc_with_startup_events_per_s": round(b1.with_startup_events_per_s),
        "batched_direct_events_per_s": round(results["direct"].events_per_s) if "direct" in results else None,
        "single_events_per_s": round(results["single"].events_per_s),
        "naive_events_per_s": round(results["naive"].events_per_s),
        "ceiling_events_per_s": round(c.events_per_s),
        "ceiling_1proc_events_per_s": round(c1.events_per_s),
        "peak_rss_mb": round(b.peak_rss_mb, 1),
        "peak_rss_per_process_max_mb": round(b.peak_rss_max_mb, 1),
        "batched_1proc_peak_rss_mb": round(b1.peak_rss_mb, 1),
        "broker": args.broker,
        "batched_vs_naive": round(vs_naive, 2),
        "batched_vs_ceiling": round(vs_ceiling, 3),
        "batched_1proc_vs_ceiling_1proc": round(vs_ceiling_1, 3),
        "batched_rebalancing_s": round(b.rebalancing_s, 2),
        "every_process_assigned": all(spread.values()),
        "ceiling_consumed_item_events": facts["ceiling_consumed"],
        "load_1min_before": round(load_before[0], 2),
        "load_1min_after": round(load_after[0], 2),
        "target_batched_vs_naive_met": vs_naive >= TARGET_VS_NAIVE,
        "target_batched_vs_ceiling_met": vs_ceiling >= TARGET_VS_CEILING,
        "target_batched_rate_met": b.events_per_s >= TARGET_RATE,
        "target_peak_rss_met": b.peak_rss_mb <= TARGET_RSS_MB,
    }
