"""Launching `rectune` worker processes (demo, benchmarks, integration tests).

A worker is a separate OS process so it can be killed with SIGKILL, scaled
out, and measured on its own; its settings travel as `RECTUNE_*` variables.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from rectune.embedded import ManagedProcess, spawn
from rectune.settings import ENV_VARS


def settings_env(**values: object) -> dict[str, str]:
    """`RECTUNE_*` variables for the given settings fields (names checked)."""
    env: dict[str, str] = {}
    for name, value in values.items():
        if name not in ENV_VARS:
            msg = f"{name}: not a settings field"
            raise KeyError(msg)
        env[ENV_VARS[name]] = str(value)
    return env


def start_worker(log_path: Path, env: Mapping[str, str], *, cwd: Path | None = None) -> ManagedProcess:
    """Start `rectune worker` with `env` on top of this process's environment."""
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "rectune.cli", "worker"]
    popen = spawn(argv, what="rectune worker", log_path=log_path, cwd=cwd or Path.cwd(), env=full_env)
    return ManagedProcess(popen, log_path)
