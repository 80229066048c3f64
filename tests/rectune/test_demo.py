"""`rectune demo` end to end, as a user runs it: windows per arm, a summary, nothing left running."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.integration

ROW = re.compile(r"^\d\d:\d\d:\d\d\s+(control|treatment)\s+[\d,]+\s+[\d,]+\s+[\d,]+\s+\d+\.\d\d% \[")


class DemoProcess:
    """`rectune demo` in a subprocess; records its output and every descendant it ever had."""

    def __init__(self, duration_s: float, work_dir: Path, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rectune.cli", "demo", "--duration-s", str(duration_s), "--work-dir", str(work_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self.descendants: dict[int, float] = {}  # pid -> create_time (guards against pid reuse)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def watch_until(self, predicate: object, timeout_s: float) -> bool:
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
            if callable(predicate) and predicate():
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


def test_demo_prints_windows_per_arm_and_a_summary_then_stops_everything(tmp_path: Path) -> None:
    started = time.monotonic()
    demo = DemoProcess(15, tmp_path)
    demo.watch_until(None, timeout_s=60)
    code = demo.finish(timeout_s=10)
    out = demo.output()
    log = (tmp_path / "worker.log").read_text(errors="replace")[-3000:] if (tmp_path / "worker.log").exists() else ""
    assert code == 0, f"{out}\n--- worker log ---\n{log}"
    assert time.monotonic() - started < 45, out

    arms = [m.group(1) for line in demo.lines if (m := ROW.match(line))]
    assert arms.count("control") >= 2 and arms.count("treatment") >= 2, out
    assert "summary over" in out, out
    for arm in ("control", "treatment"):
        assert re.search(rf"^run\s+{arm}\s", out, re.MULTILINE), out
    assert re.search(r"CTR lift treatment vs control: [+-]\d+\.\d%  \[95% CI ", out), out
    # Every produced event was aggregated and read back: the pipeline lost nothing.
    assert re.search(r"accounting: ([\d,]+) of \1 produced item events aggregated \(100\.00%\)", out), out
    assert re.search(r"redis: \d+ windows? recorded; GET rectune:demo:heartbeat -> window ", out), out
    assert "exit 0" in out

    assert len(demo.descendants) >= 3, demo.descendants  # broker, redis, worker were seen
    assert demo.leftovers() == []
    assert not any(listening(port) for port in service_ports(out)), out


def test_ctrl_c_stops_everything_and_exits_130(tmp_path: Path) -> None:
    demo = DemoProcess(60, tmp_path)
    saw_row = demo.watch_until(lambda: any(ROW.match(line) for line in demo.lines), timeout_s=40)
    assert saw_row and demo.proc.poll() is None, demo.output()
    began = time.monotonic()
    demo.proc.send_signal(signal.SIGINT)
    code = demo.finish(timeout_s=20)
    out = demo.output()
    assert code == 130, out
    assert time.monotonic() - began < 15, out
    assert "interrupted (SIGINT)" in out and "summary over" in out, out
    assert demo.leftovers() == []
    assert not any(listening(port) for port in service_ports(out)), out


def test_a_dead_worker_fails_the_demo_and_stops_the_rest(tmp_path: Path) -> None:
    demo = DemoProcess(60, tmp_path)
    assert demo.watch_until(lambda: any(ROW.match(line) for line in demo.lines), timeout_s=40), demo.output()
    worker = re.search(r"worker   pid (\d+)", demo.output())
    assert worker, demo.output()
    os.kill(int(worker.group(1)), signal.SIGKILL)
    code = demo.finish(timeout_s=20)
    out = demo.output()
    assert code == 1, out
    assert "error: the stream worker exited unexpectedly" in out and "worker.log" in out, out
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
