"""The pipeline benchmark (`bench/pipeline.py`): its accounting helpers, and a 2-worker smoke run on tansu."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
measure: Any = importlib.import_module("_pipeline_measure")
pipeline: Any = importlib.import_module("pipeline")

ISSUE_KEYS = (
    "events",
    "batched_events_per_s",
    "single_events_per_s",
    "naive_events_per_s",
    "ceiling_events_per_s",
    "peak_rss_mb",
    "broker",
)


def test_placement_counts_item_events_below_committed_offsets() -> None:
    # Partition 0: offsets 10, 11, 12 holding 5, 7, 1 items; partition 1: offsets 3, 4 holding 2, 2.
    placement = measure.Placement(
        starts={0: 10, 1: 3},
        ends={0: 13, 1: 5},
        offsets={0: np.array([10, 11, 12], dtype=np.int64), 1: np.array([3, 4], dtype=np.int64)},
        cum_items={0: np.array([0, 5, 12, 13], dtype=np.int64), 1: np.array([0, 2, 4], dtype=np.int64)},
    )
    assert placement.items_done(placement.starts) == 0
    assert placement.items_done({0: 12}) == 12  # partition 1 not committed yet counts nothing
    assert placement.items_done({0: 12, 1: 4}) == 14
    assert placement.items_done(placement.ends) == 17
    assert placement.messages() == 5


def test_assigned_partitions_reads_worker_and_ceiling_log_lines(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log.write_text(
        "[2026-11-26 00:04:29,463] [19326] [INFO] partition 2 assigned: resuming at offset 0\n"
        "partition 0 assigned\n"
        "Setting newly assigned partitions {0, 2}\n"
        "partition 2 assigned: resuming at offset 812\n",
        encoding="utf-8",
    )
    assert measure.assigned_partitions(log) == (0, 2)
    assert measure.assigned_partitions(tmp_path / "missing.log") == ()


def test_result_flags_a_process_that_got_no_partition() -> None:
    def result(assigned: tuple[tuple[int, ...], ...]) -> Any:
        return measure.Result(
            name="batched",
            processes=2,
            messages=1,
            item_events=1,
            events_per_s=1.0,
            messages_per_s=1.0,
            startup_s=0.0,
            measured_s=1.0,
            with_startup_events_per_s=1.0,
            peak_rss_mb=2.0,
            peak_rss_max_mb=1.0,
            cpu_s_per_process=(0.5, 0.25),
            samples=1,
            members_at_first=2,
            members_max=2,
            group_complete_s=1.0,
            rebalancing_s=0.0,
            assigned=assigned,
        )

    assert result(((0, 2), (1, 3))).all_assigned
    assert not result(((0, 1, 2, 3), ())).all_assigned
    assert not result(((0, 1, 2, 3),)).all_assigned
    assert result(((0,), (1,))).cpu_s == pytest.approx(0.75)


def test_workers_default_to_cores_capped_by_partitions_and_reject_out_of_range() -> None:
    args = pipeline.parse_args([])
    assert args.workers == min(os.cpu_count() or 1, pipeline.PARTITIONS)
    assert pipeline.parse_args(["--workers", "1"]).workers == 1
    for bad in ("0", str(pipeline.PARTITIONS + 1)):
        with pytest.raises(SystemExit):
            pipeline.parse_args(["--workers", bad])


@pytest.mark.slow
@pytest.mark.integration
def test_quick_run_with_two_workers_covers_every_event_and_splits_the_partitions() -> None:
    events = 120_000
    data, _ = pipeline.batched_set(events, 7)
    produced = data.item_events
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH / "pipeline.py"),
            "--quick",
            "--workers",
            "2",
            "--events",
            str(events),
            "--single-events",
            "3000",
            "--no-direct",
        ],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    for key in ISSUE_KEYS:
        assert key in summary, key
    assert summary["workers"] == 2
    assert summary["broker"] == "tansu"
    # Exact totals: the timed set is every produced item event, and the two ceiling
    # processes together consumed each of them exactly once.
    assert summary["events"] == produced
    assert summary["ceiling_consumed_item_events"] == produced
    # Both processes of each 2-process group logged partitions of their own.
    assert summary["every_process_assigned"] is True, proc.stdout[-3000:]
    for key in ("batched", "batched_1proc", "ceiling", "ceiling_1proc", "single", "naive"):
        assert summary[f"{key}_events_per_s"] > 0, key
    assert summary["peak_rss_mb"] >= summary["peak_rss_per_process_max_mb"] > 0
    assert summary["target_batched_rate_met"] == (summary["batched_events_per_s"] >= 250_000)
    assert summary["target_peak_rss_met"] == (summary["peak_rss_mb"] <= 600)
    assert summary["batched_vs_ceiling"] == pytest.approx(  # the summary rounds it to 3 decimals
        summary["batched_events_per_s"] / summary["ceiling_events_per_s"], rel=1e-2, abs=5e-4
    )
    split = [line for line in lines if line.strip().startswith(("batched:", "ceiling:"))]
    assert len(split) == 2, proc.stdout[-3000:]
