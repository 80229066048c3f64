"""`bench/paired_read.py`: A/A reads of both designs on one world, summarised as JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import paired_read as pr


def test_the_paired_read_is_narrower_and_the_last_line_is_one_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    assert pr.main(["--scenario", "apparel_core", "--reps", "4", "--days", "0.5"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = summary["apparel_core"]
    assert set(rows) == {"user/independent", "request/paired", "request/independent"}
    assert rows["user/independent"]["se_over_per_user"] == 1.0
    # every user in both arms: pairing removes the users' own propensity (half a day: fewer repeat requests)
    assert rows["request/paired"]["mean_se"] < 0.7 * rows["request/independent"]["mean_se"]
    assert rows["request/paired"]["mean_se"] < 0.7 * rows["user/independent"]["mean_se"]
    assert all(0.0 <= r["aa_rejections"] <= 1.0 and r["empirical_sd"] > 0.0 for r in rows.values())
