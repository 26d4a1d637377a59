"""Figures from metrics JSON: subgroup differences vs zero-shot (Figure 2), the λ trade-off, the WiSE-FT α curve.

A figure (``WorkflowConfig.figures``) reads the metrics files of one table's grid, at the paths
``stages.plan`` gives, and aggregates over seeds like the tables (``Stat``: mean ± std, percent):

- ``groups``: per subgroup of a group-shift benchmark (its metrics JSON's ``groups`` list), the
  per-seed difference of a method's top-1 to the zero-shot run of the same arch and train set,
  one bar per table row;
- ``lambda``: one point per StarFT λ, x and y two of the table's columns (or averages);
- ``alpha``: one curve per method over the WiSE-FT α grid, same axes;
- ``loss``: training curves, a ``train_log.jsonl`` field (``loss`` by default) over optimiser steps,
  one curve per table row (mean ± std over seeds as a band), from each trained run's log.

Values without a metrics file are left out and listed in the figure's notes (``Plot.missing``),
never drawn as zero; a panel with nothing to draw says so. PNGs are rendered with the Agg
canvas and written atomically (``stages.io.atomic_write_binary``).
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from stages import plan
from stages.config import (ConfigError, GradcamFigureSpec, GroupFigureSpec, LossFigureSpec, TableSpec,
                           TradeoffFigureSpec, WorkflowConfig)
from stages.io import atomic_write_binary
from stages.methods import method_spec
from stages.reports.tables import Stat, column_format, column_values, display, with_averages
from stages.rundir import RunDir

MAX_NOTES = 12  # notes printed under the plot (the CLI prints all of them)
CHARS_PER_INCH = 11  # title characters per inch of figure width before it wraps
NOTE_CHARS_PER_INCH = 14  # the same for the notes' smaller font


@dataclass
class Point:
    """One bar or marker: its label (a subgroup, ``λ=…`` or ``α=…``), y over seeds and, for trade-offs, x."""

    label: str
    y: Stat
    x: Stat | None = None


@dataclass
class Panel:
    """One axes: series label -> its points, in drawing order."""

    title: str
    xlabel: str
    ylabel: str
    series: dict[str, list[Point]] = field(default_factory=dict)


@dataclass
class Plot:
    """A built figure, ready to render: its panels and what had no metrics."""

    name: str
    title: str
    kind: str
    panels: list[Panel]
    missing: list[str]

    @property
    def points(self) -> int:
        """How many bars or markers the figure draws."""
        return sum(len(points) for panel in self.panels for points in panel.series.values())


def read_groups(path: Path) -> dict[str, float] | None:
    """Subgroup -> top-1 in percent of a metrics JSON (its ``groups`` list); None when the file is missing."""
    if not path.is_file():
        return None
    groups = json.loads(path.read_text(encoding="utf-8")).get("groups") or []
    return {group["group"]: 100.0 * float(group["top1"]) for group in groups}


def series_label(config: WorkflowConfig, table: TableSpec, cell: plan.Cell, skip: str) -> str:
    """The displayed row labels of `cell` without slot `skip` (the knob a curve varies)."""
    labels = [display(config, slot, value) for slot, value in zip(table.rows, cell.row) if slot != skip]
    return " ".join(labels) or display(config, "method", cell.run.method)


def seed_note(where: str, series: str, seeds: int, planned: int) -> list[str]:
    """A note when a series has fewer seeds than planned (none when complete)."""
    return [] if seeds == planned else [f"{where}: {series}: {seeds} of {planned} seeds"]


def group_panels(config: WorkflowConfig, spec: GroupFigureSpec) -> tuple[list[Panel], list[str]]:
    """One panel per benchmark: per subgroup and table row, top-1 minus zero-shot's (percentage points)."""
    table = config.tables[spec.table]
    methods = spec.methods or [method for method in table.methods if method_spec(method).trains]
    cells = [cell for cell in plan.table_cells(config, spec.table) if cell.alpha is None]
    # The reference: the table's untrained model (zero-shot) of the same arch and train set.
    zeroshot = {(c.run.model.name, c.run.data.train_set): c for c in cells if not method_spec(c.run.method).trains}
    panels, missing = [], []
    for benchmark in spec.benchmarks:
        order: dict[str, None] = {}  # subgroups in the zero-shot file's order
        diffs: dict[str, dict[str, dict[int, float]]] = {}  # series -> group -> seed -> difference
        planned: dict[str, set[int]] = {}
        present: dict[str, set[int]] = {}
        for cell in cells:
            if cell.run.method not in methods:
                continue
            series = series_label(config, table, cell, skip="ensemble")
            planned.setdefault(series, set()).add(cell.seed)
            reference = zeroshot[(cell.run.model.name, cell.run.data.train_set)]
            base_path = reference.eval_path(config.results, benchmark)
            base, ours = read_groups(base_path), read_groups(cell.eval_path(config.results, benchmark))
            if ours is not None:
                present.setdefault(series, set()).add(cell.seed)
            if base is None:
                note = f"{benchmark}: no zero-shot metrics ({base_path})"
                if note not in missing:
                    missing.append(note)
                continue
            order.update(dict.fromkeys(base))
            for group, value in (ours or {}).items():
                if group in base:
                    diffs.setdefault(series, {}).setdefault(group, {})[cell.seed] = value - base[group]
        panel = Panel(benchmark, "top-1 minus zero-shot (percentage points)", "subgroup")
        for series, seeds in planned.items():
            by_group = diffs.get(series, {})
            bars = [Point(group, Stat(list(by_group[group].values()))) for group in order if group in by_group]
            if bars:
                panel.series[series] = bars
                missing += seed_note(benchmark, series, len(present[series]), len(seeds))
            else:
                reason = "no subgroups to compare with zero-shot's" if series in present else "no metrics"
                missing.append(f"{benchmark}: {series}: {reason}")
        panels.append(panel)
    return panels, missing


def tradeoff_panels(config: WorkflowConfig, spec: TradeoffFigureSpec) -> tuple[list[Panel], list[str]]:
    """One panel: spec.y against spec.x, one point per λ (StarFT rows) or per α (each method's curve)."""
    table = config.tables[spec.table]
    methods = spec.methods or [method for method in table.methods if method_spec(method).trains]
    lam = spec.kind == "lambda"
    symbol, skip = ("λ", "lam") if lam else ("α", "ensemble")
    # series -> λ or α -> seed -> merged column values of the runs behind that point
    values: dict[str, dict[float, dict[int, dict[str, float | None]]]] = {}
    for cell in plan.table_cells(config, spec.table):
        if ((cell.alpha is None) != lam or (lam and not method_spec(cell.run.method).uses_lambda)
                or cell.run.method not in methods):
            continue
        setting = cell.run.lam if lam else cell.alpha
        series = values.setdefault(series_label(config, table, cell, skip), {})
        series.setdefault(setting, {}).setdefault(cell.seed, {}).update(column_values(config, table, cell))
    panel = Panel(f"{spec.y} vs {spec.x} as {symbol} varies", f"{spec.x} ({column_format(table, spec.x).unit})",
                  f"{spec.y} ({column_format(table, spec.y).unit})")
    missing = []
    for series, by_knob in values.items():
        points = []
        for setting in sorted(by_knob):
            per_seed = [with_averages(table, seed) for seed in by_knob[setting].values()]
            x, y = (Stat([v[label] for v in per_seed if v.get(label) is not None]) for label in (spec.x, spec.y))
            label = f"{symbol}={setting:g}"
            if x.values and y.values:
                points.append(Point(label, y, x))
                missing += seed_note(label, series, min(len(x.values), len(y.values)), len(per_seed))
            else:
                absent = " or ".join(axis for axis, stat in ((spec.x, x), (spec.y, y)) if not stat.values)
                missing.append(f"{label}: {series}: no {absent} metrics")
        if points:
            panel.series[series] = points
    return [panel], missing


def read_log(path: Path, key: str) -> dict[int, float] | None:
    """Step -> `key` of a train_log.jsonl (records without it skipped); None when the file is missing."""
    if not path.is_file():
        return None
    records = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return {int(record["step"]): float(record[key]) for record in records if key in record}


def loss_runs(config: WorkflowConfig, spec: LossFigureSpec) -> list[RunDir]:
    """The runs a loss figure draws: every trained run of its table (of its methods), by path."""
    methods = spec.methods or config.tables[spec.table].methods
    runs = {cell.run_dir(config.results) for cell in plan.table_cells(config, spec.table)
            if cell.alpha is None and method_spec(cell.run.method).trains and cell.run.method in methods}
    return sorted(runs, key=lambda run: run.path)


def loss_inputs(config: WorkflowConfig, spec: LossFigureSpec) -> list[Path]:
    """The training logs (``RunDir.log``) a loss figure reads: those of `loss_runs`."""
    return [run.log for run in loss_runs(config, spec)]


def loss_panels(config: WorkflowConfig, spec: LossFigureSpec) -> tuple[list[Panel], list[str]]:
    """One panel: spec.field over optimiser steps, one curve per table row, mean ± std over seeds per step."""
    table = config.tables[spec.table]
    methods = spec.methods or [method for method in table.methods if method_spec(method).trains]
    curves: dict[str, dict[int, dict[int, float]]] = {}  # series -> step -> seed -> value
    planned: dict[str, int] = {}
    missing = []
    for cell in plan.table_cells(config, spec.table):
        if cell.alpha is not None or not method_spec(cell.run.method).trains or cell.run.method not in methods:
            continue
        series = series_label(config, table, cell, skip="ensemble")
        planned[series] = planned.get(series, 0) + 1
        path = cell.run_dir(config.results).log
        log = read_log(path, spec.field)
        if not log:
            missing.append(f"{series}: seed {cell.seed}: no {spec.field} in {path}")
            continue
        for step, value in log.items():
            curves.setdefault(series, {}).setdefault(step, {})[cell.seed] = value
    panel = Panel(f"{spec.field} during training", "optimiser step", spec.field)
    for series, by_step in curves.items():
        panel.series[series] = [Point(str(step), Stat(list(by_step[step].values())), Stat([float(step)]))
                                for step in sorted(by_step)]
    return [panel], missing


def build_figure(config: WorkflowConfig, name: str) -> Plot:
    """Read every metrics file (or training log) figure `name` needs and aggregate it over seeds."""
    spec = config.figures[name]
    if isinstance(spec, GradcamFigureSpec):
        raise ConfigError(f"figures.{name} is a gradcam figure: build it with stages.reports.gradcam.build_gradcam")
    if isinstance(spec, GroupFigureSpec):
        panels, missing = group_panels(config, spec)
    elif isinstance(spec, LossFigureSpec):
        panels, missing = loss_panels(config, spec)
    else:
        panels, missing = tradeoff_panels(config, spec)
    return Plot(name, spec.title, spec.kind, panels, missing)


def _draw_bars(axes: Axes, panel: Panel) -> None:
    """Horizontal bars: one row of bars per subgroup, one bar per series, std over seeds as error bars."""
    groups = list(dict.fromkeys(point.label for points in panel.series.values() for point in points))
    height = 0.8 / len(panel.series)
    for index, (series, points) in enumerate(panel.series.items()):
        rows = [groups.index(point.label) + (index - (len(panel.series) - 1) / 2) * height for point in points]
        axes.barh(rows, [p.y.mean for p in points], height=height, xerr=[p.y.std for p in points],
                  label=series, capsize=2)
    axes.set_yticks(range(len(groups)), groups, fontsize="small")
    axes.invert_yaxis()
    axes.axvline(0.0, color="black", linewidth=0.8)


def _draw_tradeoff(axes: Axes, panel: Panel) -> None:
    """One line with x and y error bars per series, each point labelled with its λ or α."""
    for series, points in panel.series.items():
        axes.errorbar([p.x.mean for p in points], [p.y.mean for p in points], xerr=[p.x.std for p in points],
                      yerr=[p.y.std for p in points], marker="o", capsize=3, label=series)
        for point in points:
            axes.annotate(point.label, (point.x.mean, point.y.mean), textcoords="offset points", xytext=(4, 4),
                          fontsize="x-small")


def _draw_curves(axes: Axes, panel: Panel) -> None:
    """One line per series over steps, its std over seeds as a shaded band."""
    for series, points in panel.series.items():
        steps = [p.x.mean for p in points]
        means, stds = [p.y.mean for p in points], [p.y.std for p in points]
        (line,) = axes.plot(steps, means, label=series)
        axes.fill_between(steps, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                          color=line.get_color(), alpha=0.2, linewidth=0)


def render(plot: Plot) -> Figure:
    """The figure: one axes per panel, then the notes on missing metrics (if any)."""
    bars = plot.kind == "groups"
    height = 5.0
    if bars:  # room for one row of bars per subgroup
        groups = max(len({p.label for points in panel.series.values() for p in points}) for panel in plot.panels)
        series = max(len(panel.series) for panel in plot.panels)
        height = max(height, 1.5 + groups * (0.2 + 0.1 * series))
    width = 6.5 * len(plot.panels)
    notes = plot.missing[:MAX_NOTES] + ([f"... and {len(plot.missing) - MAX_NOTES} more"]
                                        if len(plot.missing) > MAX_NOTES else [])
    lines = [line for note in notes for line in textwrap.wrap(note, int(NOTE_CHARS_PER_INCH * width))]
    notes_height = 0.2 * len(lines) + 0.3 if lines else 0.0
    figure = Figure(figsize=(width, height + notes_height), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(2 if lines else 1, len(plot.panels),
                               height_ratios=[height, notes_height] if lines else None)
    figure.suptitle(textwrap.fill(plot.title, int(CHARS_PER_INCH * width), break_on_hyphens=False))
    for index, panel in enumerate(plot.panels):
        axes = figure.add_subplot(grid[0, index])
        axes.set_title(panel.title)
        if not panel.series:
            axes.text(0.5, 0.5, "no data: the metrics files are missing\n(see the notes)", ha="center",
                      va="center", transform=axes.transAxes)
            axes.set_xticks([])
            axes.set_yticks([])
            continue
        {"groups": _draw_bars, "loss": _draw_curves}.get(plot.kind, _draw_tradeoff)(axes, panel)
        axes.set_xlabel(panel.xlabel)
        axes.set_ylabel(panel.ylabel)
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    if lines:
        text = figure.add_subplot(grid[1, :])
        text.axis("off")
        text.text(0, 1, "Missing (not drawn):\n" + "\n".join(lines), va="top", fontsize="small",
                  transform=text.transAxes, in_layout=False)
    return figure


def write_figure(plot: Plot, out_dir: Path) -> Path:
    """Render `plot` to ``figure_<name>.png`` in `out_dir` atomically; return the path."""
    return save_png(render(plot), plot.name, out_dir)


def save_png(figure: Figure, name: str, out_dir: Path) -> Path:
    """Write a rendered figure to ``<out_dir>/figure_<name>.png`` atomically; return the path."""
    path = Path(out_dir) / f"figure_{name}.png"
    atomic_write_binary(path, lambda handle: figure.savefig(handle, format="png", dpi=120))
    return path
