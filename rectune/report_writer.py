"""Writes a demo report to `runs/<UTC time>/`: `report.md` beside its PNG figures (the thin I/O side).

Called by `rectune.demo` at the end of a run with the `Report` that
`rectune.report.build_report` made.  The directory name is the run's start
in UTC (`20260105T101500Z`), with a numeric suffix if two runs share a second.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from rectune.report import Report

__all__ = ["run_directory", "write_report"]


def run_directory(root: Path, started_ms: int) -> Path:
    """A fresh `root/<UTC time>` directory for one run (created here)."""
    stamp = datetime.fromtimestamp(started_ms / 1000, tz=UTC).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1000):
        path = root / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            path.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            continue
        return path
    msg = f"{root}: 1000 runs already started at {stamp}"
    raise FileExistsError(msg)


def write_report(report: Report, directory: Path, *, dpi: int = 110) -> list[Path]:
    """Save the figures as PNG and the markdown as `report.md`; returns the files written."""
    written = []
    for name, figure in report.figures.items():
        path = directory / name
        figure.savefig(path, dpi=dpi)
        written.append(path)
    path = directory / "report.md"
    path.write_text(report.markdown, encoding="utf-8")
    written.append(path)
    return written
