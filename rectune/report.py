"""The demo's end-of-run report, pure: the records captured during a run in, markdown and figures out.

`rectune.demo` captures every metric partial, agent record, alert and
accepted config change it reads during the run into `RunRecords`;
`build_report(records)` turns them into a `Report` (markdown text plus
matplotlib figures, nothing written), and `rectune.report_writer` saves it
under `runs/<UTC time>/`.  Unit-tested with hand-made records, no services.

The headline number is the lift of the final incumbent over the starting
config on the scenario's north-star ratio, with a 95% interval.  Which
comparison: `rectune traffic` keeps a holdout — a fixed share of users,
chosen by a salted hash independent of the experiment assignment and of the
metric buckets — on the starting config for the whole run, on a surface the
agents never read.  The incumbent side is every partial of the tuned surface
that starts after the final incumbent last became the control and whose
served configs all equal its config (not the winning arm's windows before
the promotion: it was promoted because that read was high, so counting it
would inflate the lift), the holdout side the holdout partials of the same
windows.  The two sides are concurrent
and hold disjoint randomised users, so the ratio of their north stars is a
fair lift; its variance is the delta method over user buckets
(`agents.stats.ratio`), a fixed-sample interval for this single final read.
With no promotion the final incumbent is the starting config and the
comparison is an A/A check.

Layout.  This module is the front door: it holds no code of its own and
re-exports (`__all__`) what lives beside it, so callers import
`rectune.report` only:

- `rectune.report_records` — what a report is made from: `RunRecords`,
  `ConfigPoint`, `OracleFigures`, the per-window series (`WindowPoint`,
  `arm_label`, `series`, `totals`) and the agents' rounds (`Round`,
  `rounds`);
- `rectune.report_lift` — the headline computation: `final_lift`, `Lift`,
  `SECONDARY`, `Z95`;
- `rectune.report_markdown` — the text: `format_lift_line`, `timeline`, the
  sections, `Report` and `build_report`.

The figures are drawn by `rectune.report_plots` (matplotlib, imported by
`build_report` only when a report is built) and written with the markdown by
`rectune.report_writer`.
"""

from __future__ import annotations

from rectune.report_lift import SECONDARY, Z95, Lift, final_lift
from rectune.report_markdown import Report, build_report, format_lift_line, timeline
from rectune.report_records import (
    ConfigPoint,
    OracleFigures,
    Round,
    RunRecords,
    WindowPoint,
    arm_label,
    rounds,
    series,
    totals,
)

__all__ = [
    "SECONDARY",
    "Z95",
    "ConfigPoint",
    "Lift",
    "OracleFigures",
    "Report",
    "Round",
    "RunRecords",
    "WindowPoint",
    "arm_label",
    "build_report",
    "final_lift",
    "format_lift_line",
    "rounds",
    "series",
    "timeline",
    "totals",
]
