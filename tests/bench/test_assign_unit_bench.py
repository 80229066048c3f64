"""`bench/assign_unit.py`: per-user and per-request assignment timed in one run, summarised as JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import assign_unit as au

from serving_sidecar.assignment import Router


def test_the_bench_snapshots_randomise_as_named_and_the_last_line_is_json(capsys: pytest.CaptureFixture[str]) -> None:
    router = Router()
    per_request = au.snapshot("request")
    assert {router.assign(per_request, "u1", f"r{i}").arm_id for i in range(200)} == {"c", "t1", "t2"}
    assert len({router.assign(au.snapshot("user"), "u1", f"r{i}").arm_id for i in range(50)}) == 1
    assert au.main(["--calls", "500", "--users", "50", "--repeats", "1"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary) == {"per_user_ns", "per_request_ns", "ratio", "calls"} and summary["calls"] == 500
    assert summary["per_user_ns"] > 0 and summary["ratio"] == pytest.approx(
        summary["per_request_ns"] / summary["per_user_ns"]
    )
