"""`rectune demo` end to end, as a user runs it: the whole loop, a summary, a report, nothing left running."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from rectune.demo_services import starting_config
from rectune.errors import RectuneError
from schemas.config import default_config

pytestmark = pytest.mark.integration

WINDOW = re.compile(r"^\d\d:\d\d:\d\d  window  .*\bcontrol \d\.\d{3} p99 \d+")
HOLDOUT_WINDOW = re.compile(r"^\d\d:\d\d:\d\d  window  .*\bholdout \d\.\d{3} p99 \d+")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = ("north_star.png", "configs.png", "latency_p99.png", "diversity_freshness.png")


class DemoProcess:
    """`rectune demo` in a subprocess; records its output and every descendant it ever had."""

    def __init__(self, duration_s: float, tmp: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        argv = [sys.executable, "-m", "rectune.cli", "demo", "--duration-s", str(duration_s)]
        argv += ["--work-dir", str(tmp / "work"), "--runs-dir", str(tmp / "runs"), "--brain", "offline", *extra]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        self.descendants: dict[int, float] = {}  # pid -> create_time (guards against pid reuse)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def watch_until(self, predicate: Callable[[], bool] | None, timeout_s: float) -> bool:
        """Poll descendants until the process exits, `predicate()` holds, or the timeout passes."""
        deadline = time.monotonic() + timeout_s
        me = psutil.Process(self.proc.pid)
        while time.monotonic() < deadline:
            try:
                for child in me.children(recursive=True):
                    self.descendants.setdefault(child.pid, child.create_time())
            except psutil.NoSuchProcess:
                pass
            if self.proc.poll() is not None:
                return True
            if predicate is not None and predicate():
                return True
            time.sleep(0.2)
        return False

    def finish(self, timeout_s: float) -> int:
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self._reader.join(5)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            pytest.fail("rectune demo did not exit in time:\n" + self.output())
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code

    def output(self) -> str:
        return "\n".join(self.lines)

    def saw(self, pattern: re.Pattern[str]) -> bool:
        return any(pattern.match(line) for line in list(self.lines))

    def leftovers(self) -> list[str]:
        alive = []
        for pid, created in self.descendants.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{pid} {' '.join(p.cmdline())}")
            except psutil.NoSuchProcess:
                continue
        return alive


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def service_ports(output: str) -> list[int]:
    broker = re.search(r"tansu on 127\.0\.0\.1:(\d+)", output)
    redis = re.search(r"redis://127\.0\.0\.1:(\d+)/", output)
    assert broker and redis, output
    return [int(broker.group(1)), int(redis.group(1))]


def child_pid(output: str, name: str) -> int:
    found = re.search(rf"^  {name}\s+pid (\d+)", output, re.MULTILINE)
    assert found, output
    return int(found.group(1))


def logs(tmp: Path) -> str:
    out = []
    for name in ("worker.log", "agents.log", "traffic.log"):
        path = tmp / "work" / name
        if path.exists():
            out.append(f"--- {name} ---\n" + path.read_text(errors="replace")[-2500:])
    return "\n".join(out)


def test_the_demo_runs_the_whole_loop_reports_and_stops_everything(tmp_path: Path) -> None:
    """About a minute of the real loop: proposals, the Critic, an allocation on the config topic, a report.

    `--target-mde 0.3` lets the power gate launch at the test's short horizon (the default 15% needs the
    default three minutes of traffic); what is asserted is that the loop ran, not which way it decided.
    """
    started = time.monotonic()
    demo = DemoProcess(55, tmp_path, "--target-mde", "0.3")
    demo.watch_until(None, timeout_s=150)
    code = demo.finish(timeout_s=10)
    out = demo.output()
    assert code == 0, f"{out}\n{logs(tmp_path)}"
    assert time.monotonic() - started < 140, out

    assert sum(1 for line in demo.lines if WINDOW.match(line)) >= 3, out
    assert demo.saw(HOLDOUT_WINDOW), out
    assert re.search(r"^\d:\d\d  Actor    round 1: \d proposal", out, re.MULTILINE), out
    assert re.search(r"^\d:\d\d  Critic   kept \d of \d", out, re.MULTILINE), out
    # The Online agent allocated traffic, and the allocation went through rectune.config (the sidecar's input).
    assert re.search(r"^\d:\d\d  Online   E1 allocate stage 1: E1\.c \d+% / E1\.t1 ", out, re.MULTILINE), out
    assert re.search(r"^\d:\d\d  config   v\d+ allocation: E1 E1\.c v1 .* \(per request\)$", out, re.MULTILINE), out
    assert re.search(r"^── \d:\d\d/0:55  incumbent v\d+", out, re.MULTILINE), out  # the live panel
    assert "summary over" in out, out
    assert re.search(r"^North star \(clicks/requests\) lift, .*\[95% CI [+-]\d+\.\d%, [+-]\d+\.\d%\]", out, re.M), out
    # Every event the sidecar emitted was aggregated and read back: the pipeline lost nothing.
    assert re.search(r"accounting: ([\d,]+) of \1 produced item events aggregated \(100\.00%\)", out), out
    assert re.search(r"redis: \d+ windows? recorded; GET rectune:demo:heartbeat -> window ", out), out
    assert "exit 0" in out

    (run_dir,) = (tmp_path / "runs").iterdir()
    assert re.fullmatch(r"\d{8}T\d{6}Z", run_dir.name), run_dir
    report = (run_dir / "report.md").read_text(encoding="utf-8")
    assert "## Outcome" in report and "95% CI" in report and "## Experiments" in report, report
    assert "Online   E1 allocate" in report, report
    for name in FIGURES:
        data = (run_dir / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000, name

    assert len(demo.descendants) >= 5, demo.descendants  # broker, redis, worker, agents, traffic were seen
    assert demo.leftovers() == []
    assert not any(listening(port) for port in service_ports(out)), out


def test_ctrl_c_stops_everything_and_exits_130(tmp_path: Path) -> None:
    demo = DemoProcess(120, tmp_path)
    saw_window = demo.watch_until(lambda: demo.saw(WINDOW), timeout_s=60)
    assert saw_window and demo.proc.poll() is None, demo.output()
    began = time.monotonic()
    demo.proc.send_signal(signal.SIGINT)
    code = demo.finish(timeout_s=40)
    out = demo.output()
    assert code == 130, out
    assert time.monotonic() - began < 30, out
    assert "interrupted (SIGINT)" in out and "summary over" in out, out
    assert demo.leftovers() == []
    assert not any(listening(port) for port in service_ports(out)), out
    (run_dir,) = (tmp_path / "runs").iterdir()  # what was read is still reported, marked as interrupted
    assert "the run was interrupted (SIGINT)" in (run_dir / "report.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("child", "message"),
    [
        pytest.param("worker", "the stream worker", marks=pytest.mark.slow),  # same code path; keeps make test lean
        ("traffic", "the traffic process"),
    ],
)
def test_a_dead_child_fails_the_demo_and_stops_the_rest(tmp_path: Path, child: str, message: str) -> None:
    demo = DemoProcess(120, tmp_path)
    assert demo.watch_until(lambda: demo.saw(WINDOW), timeout_s=60), demo.output()
    os.kill(child_pid(demo.output(), child), signal.SIGKILL)
    code = demo.finish(timeout_s=40)
    out = demo.output()
    assert code == 1, out
    assert f"error: {message} exited unexpectedly" in out and f"{child}.log" in out, out
    assert demo.leftovers() == []
    assert not any(listening(port) for port in service_ports(out)), out


def test_a_start_up_failure_is_reported_and_leaves_nothing_running(tmp_path: Path) -> None:
    demo = DemoProcess(10, tmp_path, env={**os.environ, "CALF_TANSU_BIN": str(tmp_path / "no-such-tansu")})
    demo.watch_until(None, timeout_s=30)
    code = demo.finish(timeout_s=10)
    out = demo.output()
    assert code == 2, out
    assert "rectune demo: error: tansu broker binary not found" in out, out
    assert demo.leftovers() == []


def test_an_unknown_scenario_is_refused_before_anything_starts(tmp_path: Path) -> None:
    demo = DemoProcess(10, tmp_path, "--scenario", "atlantis")
    demo.watch_until(None, timeout_s=30)
    code = demo.finish(timeout_s=10)
    out = demo.output()
    assert code == 2, out
    assert "rectune demo: error: --scenario atlantis:" in out, out
    assert "tansu on" not in out and demo.descendants == {}, out


@pytest.mark.slow
def test_the_default_three_minute_demo_runs_experiments_to_a_decision(tmp_path: Path) -> None:
    """`make demo` as shipped: at least one experiment is decided (promoted, stopped or rolled back)."""
    demo = DemoProcess(180, tmp_path)
    demo.watch_until(None, timeout_s=320)
    code = demo.finish(timeout_s=10)
    out = demo.output()
    assert code == 0, f"{out}\n{logs(tmp_path)}"
    decided = re.findall(r"^\d:\d\d  Online   E\d+ (PROMOTE|stop|ROLLBACK|HALT)", out, re.MULTILINE)
    assert decided, out
    assert re.search(r"^\d:\d\d  Insight  E\d+ ", out, re.MULTILINE), out
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert "The world's oracle" in (run_dir / "report.md").read_text(encoding="utf-8")
    assert demo.leftovers() == []


def test_the_start_config_is_validated_before_anything_starts(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "start_no_diversity.json"
    config, what = starting_config(example)
    assert config.re_rank.near_duplicate_threshold == 1.0 and str(example) in what
    assert starting_config(None)[0] == default_config()
    bad = json.loads(example.read_text())
    bad["re_rank"]["mmr_lambda"] = 1.5
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(RectuneError, match=r"mmr_lambda"):
        starting_config(tmp_path / "bad.json")
    bad["re_rank"]["mmr_lambda"] = 0.8
    bad["re_rank"]["max_per_category"] = 12  # inside the schema's bounds, above the guardrail ceiling
    (tmp_path / "rail.json").write_text(json.dumps(bad))
    with pytest.raises(RectuneError, match=r"max_per_category"):
        starting_config(tmp_path / "rail.json")
    with pytest.raises(RectuneError, match=r"cannot read"):
        starting_config(tmp_path / "missing.json")
