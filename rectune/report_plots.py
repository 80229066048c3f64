"""The report's figures, pure: matplotlib `Figure` objects on the Agg canvas, nothing written or shown.

Called by `rectune.report.build_report`; `rectune.report_writer` saves them as
PNG.  No pyplot (no global figure state): each figure is a
`matplotlib.figure.Figure` with its own `FigureCanvasAgg`.  Time runs along
the x axis in wall seconds since the run started; promotions (green) and
rollbacks (red) are marked on the metric plots.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rectune.demo_view import ArmLabels
from schemas.config import CascadeConfig
from schemas.metrics import FloatArray, latency_quantile

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from rectune.report import Lift, RunRecords, WindowPoint

#: Parameters always drawn in the configs figure (others only when some config moved them).
CORE_PARAMETERS: Final = ("candidate_cut", "rank_cut", "mmr_lambda", "freshness_boost")
MAX_PANELS: Final = 12


def key_parameters(config: CascadeConfig, surface: str) -> dict[str, float]:
    """The tunable parameters of `config` on `surface` as numbers (the configs figure's panels)."""
    c = config.for_surface(surface)
    w = c.rank.objective_weights
    out = {f"fusion.{s.name}": float(s.value) for s in c.pre_rank.fusion_weights}
    out |= {
        "candidate_cut": float(c.pre_rank.candidate_cut),
        "objective.click": w.click,
        "objective.conversion": w.conversion,
        "objective.dwell": w.dwell,
        "objective.return": w.return_,
        "objective.revenue": w.revenue,
        "weighted_product": 1.0 if c.rank.combination == "weighted_product" else 0.0,
        "rank_cut": float(c.rank.cut),
        "list_size": float(c.re_rank.list_size),
        "mmr_lambda": c.re_rank.mmr_lambda,
        "max_per_category": float(c.re_rank.max_per_category),
        "max_per_brand": float(c.re_rank.max_per_brand),
        "near_duplicate_threshold": c.re_rank.near_duplicate_threshold,
        "freshness_boost": c.re_rank.freshness_boost,
        "exploration_rate": c.re_rank.exploration_rate,
    }
    return out


def _new(rows: int = 1, cols: int = 1, *, height: float = 4.0) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(11, height * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def _x(records: RunRecords, start_ms: int) -> float:
    return (start_ms - records.started_ms) / 1000.0 + records.window_s / 2.0


def _events(records: RunRecords, ax: Axes) -> None:
    """Vertical lines at promotions (green) and rollbacks (red)."""
    for point in records.config:
        change = point.change
        at = (point.at_ms - records.started_ms) / 1000.0
        if change.kind == "config" and change.activate and point is not records.config[0]:
            ax.axvline(at, color="tab:green", linestyle="--", linewidth=1)
            ax.annotate(f"v{change.version}", (at, 1.0), xycoords=("data", "axes fraction"), fontsize=7, va="top")
        elif change.kind == "rollback":
            ax.axvline(at, color="tab:red", linestyle=":", linewidth=1.2)


def _break_gaps(
    xs: FloatArray, ys: FloatArray, err: FloatArray, gap: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Insert a NaN point wherever consecutive windows are more than `gap` apart, so lines do not bridge them."""
    cut = np.flatnonzero(np.diff(xs) > gap) + 1
    nan = np.full(cut.size, np.nan)
    return np.insert(xs, cut, xs[cut] - gap / 2), np.insert(ys, cut, nan), np.insert(err, cut, nan)


def _per_window(
    records: RunRecords, by_arm: Mapping[str, Sequence[WindowPoint]], ax: Axes, value: str, *, errors: bool = False
) -> None:
    num, den = records.north_star
    for label, points in by_arm.items():
        xs = np.array([_x(records, p.start_ms) for p in points])
        if value == "north_star":
            ys = np.array([p.ratio(num, den) for p in points])
            err = np.array([1.96 * p.ratio_se(num, den) for p in points])
        elif value == "p99":
            ys = np.array([latency_quantile(p.hist, 0.99) for p in points])
            err = np.zeros_like(ys)
        elif value == "diversity":
            ys = np.array([p.ratio("distinct_categories", "requests") for p in points])
            err = np.zeros_like(ys)
        else:
            ys = np.array([p.ratio("fresh", "impressions") for p in points])
            err = np.zeros_like(ys)
        xs, ys, err = _break_gaps(xs, ys, err, 1.5 * records.window_s)
        dashed = label == "holdout"
        linestyle, color = ("--", "black") if dashed else ("-", None)
        if errors and np.isfinite(err).any():
            yerr = np.where(np.isfinite(err), err, 0.0)
            ax.errorbar(
                xs,
                ys,
                yerr=yerr,
                marker="o",
                ms=3,
                capsize=2,
                label=label,
                alpha=0.85,
                linestyle=linestyle,
                color=color,
            )
        else:
            ax.plot(xs, ys, marker="o", ms=3, label=label, linestyle=linestyle, color=color)
    _events(records, ax)
    ax.set_xlabel("wall seconds since start")
    ax.grid(alpha=0.3)
    if by_arm:
        ax.legend(fontsize=8, ncols=2)


def _segments(points: Sequence[WindowPoint], gap_ms: float) -> list[list[WindowPoint]]:
    """Runs of consecutive windows (a gap starts a new run: e.g. control before and after an experiment)."""
    out: list[list[WindowPoint]] = []
    for p in points:
        if not out or p.start_ms - out[-1][-1].start_ms > gap_ms:
            out.append([])
        out[-1].append(p)
    return out


def _cumulative(records: RunRecords, by_arm: Mapping[str, Sequence[WindowPoint]], ax: Axes) -> None:
    """Each arm's north star over its windows so far (restarting after a gap), with a 95% delta-method band."""
    from rectune.report import WindowPoint  # local: a runtime import would be circular

    num, den = records.north_star
    for label, points in by_arm.items():
        color: Any = "black" if label == "holdout" else None
        for k, segment in enumerate(_segments(points, 1500 * records.window_s)):
            sums = np.cumsum([p.sums for p in segment], axis=0)
            cum = [WindowPoint(p.start_ms, s, p.hist) for p, s in zip(segment, sums, strict=True)]
            xs = np.array([_x(records, p.start_ms) + records.window_s / 2 for p in cum])
            ys = np.array([p.ratio(num, den) for p in cum])
            se = np.array([p.ratio_se(num, den) for p in cum])
            style = "--" if label == "holdout" else "-"
            line = ax.plot(xs, ys, label=label if k == 0 else None, linestyle=style, color=color)
            color = line[0].get_color()
            ok = np.isfinite(se)
            ax.fill_between(xs[ok], (ys - 1.96 * se)[ok], (ys + 1.96 * se)[ok], color=color, alpha=0.12)
    _events(records, ax)
    ax.set_xlabel("wall seconds since start")
    ax.grid(alpha=0.3)


def north_star_figure(records: RunRecords, by_arm: Mapping[str, Sequence[WindowPoint]]) -> Figure:
    """The north-star metric per arm: per window (95% error bars), and cumulative since the arm started (95% band)."""
    fig, (top, bottom) = _new(2, 1, height=3.6)
    _per_window(records, by_arm, top, "north_star", errors=True)
    top.set_ylabel(records.north_star_name)
    top.set_title(f"North star {records.north_star_name} per arm: each {records.window_s:g} s window")
    _cumulative(records, by_arm, bottom)
    bottom.set_ylabel(records.north_star_name)
    bottom.set_title("cumulative over each arm's run of windows (control restarts after each experiment)")
    return fig


def latency_figure(records: RunRecords, by_arm: Mapping[str, Sequence[WindowPoint]]) -> Figure:
    """Latency p99 per arm per window against the SLO."""
    fig, (ax,) = _new()
    _per_window(records, by_arm, ax, "p99")
    ax.axhline(records.latency_slo_ms, color="tab:red", linewidth=2, label="SLO")
    ax.set_ylabel("ranker latency p99 (ms)")
    ax.set_title(f"Latency p99 per arm and window (SLO {records.latency_slo_ms:g} ms)")
    ax.legend(fontsize=8, ncols=2)
    return fig


def diversity_figure(records: RunRecords, by_arm: Mapping[str, Sequence[WindowPoint]]) -> Figure:
    """Distinct categories per list and fresh share of shown items, per arm per window."""
    fig, (top, bottom) = _new(2, 1, height=3.5)
    _per_window(records, by_arm, top, "diversity")
    top.set_ylabel("distinct categories per list")
    top.set_title("Diversity and freshness per arm and window")
    _per_window(records, by_arm, bottom, "fresh")
    bottom.set_ylabel("fresh share of shown items")
    return fig


def configs_figure(records: RunRecords) -> Figure:
    """Key parameters over time: the incumbent as a step line, every tested candidate as a dot."""
    end = (records.ended_ms - records.started_ms) / 1000.0
    final = records.config[-1].state if records.config else None
    configs = dict(final.configs) if final is not None else {}
    values = {v: key_parameters(c, records.surface) for v, c in configs.items()}
    names = list(next(iter(values.values()), {}).keys())
    moved = [n for n in names if len({vals.get(n) for vals in values.values()}) > 1]
    shown = list(dict.fromkeys([*moved, *CORE_PARAMETERS]))[:MAX_PANELS]
    cols = 3
    rows = max(1, math.ceil(len(shown) / cols))
    fig, axes = _new(rows, cols, height=2.4)
    for ax, name in zip(axes, shown, strict=False):
        xs: list[float] = []
        ys: list[float] = []
        for point in records.config:
            current = values.get(point.state.control_version, {}).get(name)
            if current is not None:
                xs.append(max(0.0, (point.at_ms - records.started_ms) / 1000.0))
                ys.append(current)
        if xs:
            ax.step([*xs, end], [*ys, ys[-1]], where="post", color="black", linewidth=2, label="incumbent")
        tried = [
            ((p.at_ms - records.started_ms) / 1000.0, values[p.change.version][name])
            for p in records.config
            if p.change.kind == "config"
            and not p.change.activate
            and p.change.version in values
            and values[p.change.version][name] != values.get(p.state.control_version, {}).get(name)
        ]
        if tried:
            tx, ty = zip(*tried, strict=True)
            ax.scatter(tx, ty, color="tab:orange", s=18, zorder=3, label="candidate")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in axes[len(shown) :]:
        ax.set_visible(False)
    if axes:
        axes[0].legend(fontsize=7)
    fig.suptitle("Config parameters over time (wall seconds): the incumbent, and candidates that moved each one")
    return fig


def lift_figure(records: RunRecords, lift: Lift) -> Figure:
    """Starting config (holdout) vs final incumbent on the north star, with 95% intervals, and the lift."""
    fig, (left, right) = _new(1, 2, height=3.2)
    comp = lift.north_star
    low, high = lift.interval()
    names = ["starting config\n(holdout)", f"final incumbent\nv{lift.final_version}"]
    left.bar(names, [comp.control, comp.treatment], color=["0.6", "tab:green"])
    left.set_ylabel(records.north_star_name)
    left.set_title("North star over the compared windows")
    bars = [[100 * (comp.lift - low)], [100 * (high - comp.lift)]]
    right.errorbar([0], [100 * comp.lift], yerr=bars, fmt="o", capsize=6, color="tab:green")
    right.axhline(0.0, color="black", linewidth=1)
    right.set_xticks([0], ["lift"])
    right.set_ylabel("relative lift (%)")
    right.set_title("Lift with 95% CI")
    return fig


def figures(
    records: RunRecords, by_arm: Mapping[str, Sequence[WindowPoint]], labels: ArmLabels, lift: Lift | None
) -> dict[str, Figure]:
    """Every figure of the report by file name (labels are already applied to `by_arm`)."""
    out = {
        "north_star.png": north_star_figure(records, by_arm),
        "configs.png": configs_figure(records),
        "latency_p99.png": latency_figure(records, by_arm),
        "diversity_freshness.png": diversity_figure(records, by_arm),
    }
    if lift is not None:
        out["lift.png"] = lift_figure(records, lift)
    return out
