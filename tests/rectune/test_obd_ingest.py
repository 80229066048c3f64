"""Real data: Open Bandit Dataset logs through the real worker, read back per arm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from rectune.obd import read_obd, summarise_obd
from rectune.processes import settings_env, start_worker
from schemas.events import Click, Impression


@pytest.fixture(scope="module")
def logs(obd_dir: Path) -> dict[str, Path]:
    """The two logs by the arm they are ingested as (the sample comes from conftest's `obd_dir`)."""
    return {"random": obd_dir / "random" / "men.csv", "bts": obd_dir / "bts" / "men.csv"}


def rectune(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "rectune.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_read_obd_maps_rows_to_impressions_and_clicks(logs: dict[str, Path]) -> None:
    events = list(read_obd(logs["random"], arm="random"))
    impressions = [e for e in events if isinstance(e, Impression)]
    clicks = [e for e in events if isinstance(e, Click)]
    summary = summarise_obd(logs["random"])
    assert len(impressions) == summary.rows == 10_000
    assert len(clicks) == summary.clicks == 46
    first = impressions[0]
    assert first.items[0].position == 3
    assert first.items[0].propensity == pytest.approx(1 / 34)
    assert first.event_time_ms == 1_574_553_793_442
    # user ids come from the hashed user features: the log has repeat users
    assert len({e.user_id for e in impressions}) < len(impressions)


def test_ingest_and_metrics_match_the_csvs_exactly(tansu_broker: str, tmp_path: Path, logs: dict[str, Path]) -> None:
    env = settings_env(
        bootstrap=tansu_broker,
        events_partitions=4,
        window_s=3600,
        allowed_lateness_s=60,
        idle_close_s=2,
        checkpoint_interval_s=0.5,
        log_level="warning",
        app_id=f"obd-{uuid.uuid4().hex[:6]}",
    )
    for arm, path in logs.items():
        out = json.loads(rectune(env, "ingest", "obd", str(path), "--arm", arm))
        assert out["arm"] == arm and out["events"] == summarise_obd(path).rows + summarise_obd(path).clicks
    worker = start_worker(tmp_path / "worker.log", env)
    try:
        expected = {arm: summarise_obd(path) for arm, path in logs.items()}
        rows: dict[str, dict[str, object]] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            rows = {r["arm_id"]: r for r in json.loads(rectune(env, "metrics", "--json"))}
            if all(
                arm in rows and rows[arm]["impressions"] == s.rows and rows[arm]["clicks"] == s.clicks
                for arm, s in expected.items()
            ):
                break
            time.sleep(1)
        assert set(rows) == {"random", "bts"}, worker.log_tail()
        for arm, summary in expected.items():
            assert rows[arm]["impressions"] == summary.rows == 10_000
            assert rows[arm]["clicks"] == summary.clicks
            assert rows[arm]["ctr"] == pytest.approx(summary.ctr, abs=1e-12)
        assert round(float(rows["random"]["ctr"]), 4) == 0.0046  # type: ignore[arg-type]
        assert round(float(rows["bts"]["ctr"]), 4) == 0.0069  # type: ignore[arg-type]
    finally:
        worker.stop()
