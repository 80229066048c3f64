"""`rectune demo` refuses bad inputs before it starts anything, naming the flag and the rule.

No service runs in these tests: `start_services` is replaced by one that
fails the test, and the work directory must not even be created.
"""

from __future__ import annotations

import io
import math
from dataclasses import replace
from pathlib import Path

import pytest

from rectune.cli import build_parser, main
from rectune.demo import run_plan
from rectune.demo_services import DemoPlan, demo_traffic_plan, traffic_argv
from rectune.errors import RectuneError
from rectune.settings import Settings


@pytest.fixture(autouse=True)
def nothing_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        pytest.fail("start_services was called: the refusal came too late")

    monkeypatch.setattr("rectune.demo.start_services", refuse)


def refused(plan: DemoPlan, tmp_path: Path, duration_s: float = 30.0) -> str:
    """Run the demo with `plan`; assert it exits 2 without creating its work dir; return stderr."""
    out, err = io.StringIO(), io.StringIO()
    work = tmp_path / "work"
    assert run_plan(Settings(), plan, duration_s, work, out, err) == 2, (out.getvalue(), err.getvalue())
    assert not work.exists(), "the work dir was created: something started"
    text = err.getvalue()
    assert text.startswith("rectune demo: error: ") and "hint:" in text and "Traceback" not in text, text
    return text


@pytest.mark.parametrize("rate", [0.0, -10.0, math.nan, math.inf, 1e9])
def test_a_rate_that_traffic_would_refuse_is_refused_up_front(rate: float, tmp_path: Path) -> None:
    text = refused(DemoPlan(brain="offline", requests_per_s=rate), tmp_path)
    assert "--rate (requests_per_s): must be in (0, 100000]" in text, text


def test_the_gemini_brain_without_its_key_is_refused_up_front(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    text = refused(DemoPlan(brain="gemini"), tmp_path)
    assert "--brain gemini: needs GEMINI_API_KEY set" in text and "--brain offline" in text, text


@pytest.mark.parametrize("mde", [0.0, -0.1, math.nan])
def test_a_target_mde_that_is_not_a_positive_lift_is_refused_up_front(mde: float, tmp_path: Path) -> None:
    text = refused(DemoPlan(brain="offline", target_mde=mde), tmp_path)
    assert "--target-mde: must be a finite relative lift > 0" in text, text


def test_the_cli_refuses_a_zero_rate_with_its_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "work"
    assert main(["demo", "--rate", "0", "--brain", "offline", "--work-dir", str(work)]) == 2
    captured = capsys.readouterr()
    expected = "rectune demo: error: traffic plan: --rate (requests_per_s): must be in (0, 100000] requests per second"
    assert captured.err.startswith(expected) and "got 0.0" in captured.err, captured
    assert not work.exists()


def test_auto_picks_gemini_only_for_a_non_blank_key() -> None:
    assert DemoPlan().resolved_brain({"GEMINI_API_KEY": "  "}) == "offline"
    assert DemoPlan().resolved_brain({"GEMINI_API_KEY": "k"}) == "gemini"
    assert DemoPlan(brain="offline").resolved_brain({"GEMINI_API_KEY": "k"}) == "offline"


def test_the_traffic_process_gets_exactly_the_plan_the_demo_validated(tmp_path: Path) -> None:
    plan = replace(DemoPlan(), requests_per_s=123.456789, time_scale=60.0, holdout_share=0.25, seed=11, surface="s1")
    checked = demo_traffic_plan(plan, 42.0, tmp_path / "stats.json")
    args = build_parser().parse_args(traffic_argv(checked))
    assert args.command == "traffic"
    rebuilt = (args.scenario, args.surface, args.rate, args.time_scale, args.holdout_share, args.seed)
    assert rebuilt == (plan.scenario, "s1", 123.456789, 60.0, 0.25, 11)  # not rounded to 6 digits
    assert (args.duration_s, Path(args.stats_file), args.latency) == (42.0, tmp_path / "stats.json", "model")
    with pytest.raises(RectuneError, match=r"--duration-s \(duration_s\): must be > 0"):
        demo_traffic_plan(plan, 0.0)
