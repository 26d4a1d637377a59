"""Tables from metrics JSON: rows x columns, mean ± std over seeds, the paper's number and the difference.

A row is one value of the table's row slots (``TableSpec.rows``); for each seed its value in a
column is ``metrics[<metric>]`` of the metrics file of the run that fills the column, shown as
``stages.config.METRIC_FORMATS`` declares for that metric: fractions in percent with 2 decimals
(accuracies, ECE), NLL as it is with 3 (an average column takes its parts' format).
Rows with WiSE-FT alphas take, per seed, the α with the best ``id_column`` value. An average
column is the per-seed mean of its parts (only when every part is present), then aggregated
like any column. A rank column (Table 5's average rank) is computed from the rows' means: per
column, a row's rank is 1 + the number of rows with a strictly higher mean (ties share the better
rank, which reproduces the paper's Table 5), averaged over the columns; a row missing any column
has no rank. A value that has no metrics file is missing (``—`` in markdown, empty in CSV),
never zero. The paper's numbers come from ``stages/reports/paper/tableN.csv`` (copied from the
paper; Tables 6 and 8 in Table 2's column order, as their notes say).
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from stages import plan
from stages.config import METRIC_FORMATS, MetricFormat, TableSpec, TrainConfig, WorkflowConfig
from stages.io import atomic_write_text
from stages.methods import method_spec

PAPER_DIR = Path(__file__).parent / "paper"
SLOT_HEADERS = {
    "arch": "arch", "train_set": "train set", "method": "method", "variant": "variant", "options": "options",
    "bank": "bank", "concept": "concept", "lam": "λ", "ensemble": "ensemble",
}
# Columns of the paper CSVs that identify a row (the others hold numbers).
PAPER_KEYS = ("arch", "method", "l_star", "suffix", "mask", "decay", "concept", "lambda", "ensemble")


@dataclass
class Stat:
    """One column of one row: the per-seed values present, their mean and std, and the paper's number."""

    values: list[float]
    paper: float | None = None
    derived: bool = False  # computed from other columns' means (a rank): no std, no seed count

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        if self.derived:
            return None
        return statistics.stdev(self.values) if len(self.values) > 1 else (0.0 if self.values else None)

    @property
    def diff(self) -> float | None:
        return None if self.mean is None or self.paper is None else self.mean - self.paper


@dataclass
class Row:
    """One table row: its displayed slot values and one ``Stat`` per column label."""

    labels: list[str]
    seeds: int
    stats: dict[str, Stat] = field(default_factory=dict)


@dataclass
class Table:
    """A built table, ready to write."""

    number: int
    spec: TableSpec
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    """Lines printed under the title (e.g. that partial datasets were scored on purpose)."""

    @property
    def value_columns(self) -> list[str]:
        return [column.label for column in self.spec.columns] + list(self.spec.averages)

    @property
    def columns(self) -> list[str]:
        return self.value_columns + ([self.spec.rank] if self.spec.rank else [])

    def format(self, label: str) -> MetricFormat:
        """How the column `label` is shown (``column_format``)."""
        return column_format(self.spec, label)

    @property
    def cells(self) -> int:
        return len(self.rows) * len(self.columns)

    @property
    def filled(self) -> int:
        return sum(row.stats[label].mean is not None for row in self.rows for label in self.columns)


def column_format(spec: TableSpec, label: str) -> MetricFormat:
    """How the column `label` of `spec` is shown: its metric's format (an average: its parts'; a rank: 2 decimals)."""
    metrics = {column.label: column.metric for column in spec.columns}
    if label in spec.averages:
        label = spec.averages[label][0]  # TableSpec checks that the parts share one format
    return METRIC_FORMATS[metrics[label]] if label in metrics else MetricFormat()


def read_metric(path: Path, metric: str) -> float | None:
    """``metrics[metric]`` of a metrics JSON as tables show it (percent for fractions, ``METRIC_FORMATS``);
    None when the file or the metric is missing."""
    if not path.is_file():
        return None
    value = json.loads(path.read_text(encoding="utf-8")).get("metrics", {}).get(metric)
    return None if value is None else METRIC_FORMATS[metric].scale * float(value)


def column_values(config: WorkflowConfig, spec: TableSpec, cell: plan.Cell) -> dict[str, float | None]:
    """Column label -> value of `cell` for each column its run fills (None where no metrics file)."""
    return {column.label: read_metric(cell.eval_path(config.results, column.benchmark), column.metric)
            for column in spec.columns if plan.fills(column, cell)}


def with_averages(spec: TableSpec, values: dict[str, float | None]) -> dict[str, float | None]:
    """`values` plus the table's average columns (each None unless every part is present)."""
    averages = {}
    for name, parts in spec.averages.items():
        present = [values.get(part) for part in parts]
        averages[name] = statistics.fmean(present) if all(v is not None for v in present) else None
    return {**values, **averages}


def seed_values(config: WorkflowConfig, spec: TableSpec, cells: list[plan.Cell]) -> dict[str, float | None]:
    """Column label -> value of one (row, seed); among several WiSE-FT α the best on ``id_column``."""
    by_alpha: dict[float | None, dict[str, float | None]] = {}
    for cell in cells:
        by_alpha.setdefault(cell.alpha, {}).update(column_values(config, spec, cell))
    if len(by_alpha) > 1:
        scored = [values for values in by_alpha.values() if values.get(spec.id_column) is not None]
        chosen = max(scored, key=lambda values: values[spec.id_column], default={})
    else:
        chosen = next(iter(by_alpha.values()))
    return with_averages(spec, chosen)


def display(config: WorkflowConfig, slot: str, value: str) -> str:
    """How a row slot value is printed (paper method names, bank labels)."""
    if slot == "method":
        return method_spec(value).display
    if slot == "bank" and value in config.banks:
        return config.banks[value].label or value
    return value


def paper_key(config: WorkflowConfig, spec: TableSpec, run: TrainConfig, ensemble: bool) -> dict[str, str]:
    """The values of the paper CSV's key columns that describe `run` (see ``PAPER_KEYS``)."""
    star = method_spec(run.method).uses_spurious  # the paper's "L_Star" column: a Star term on spurious captions
    method = method_spec(run.method).display
    bank = plan.bank_name(config, run)
    if "bank" in spec.rows and bank != "-":
        method += f" ({display(config, 'bank', bank)})"
    yes_no = {True: "yes", False: "no"}
    return {
        "arch": run.model.name.rsplit("-", 1)[0] + "/" + run.model.name.rsplit("-", 1)[-1],
        "method": method,
        "l_star": yes_no[star],
        "suffix": run.spurious.suffix if star else "none",
        "mask": yes_no[star and run.spurious.mask],
        "decay": yes_no[star and run.spurious.decay != "none"],
        "concept": run.spurious.concept,
        "lambda": f"{run.lam:g}",
        "ensemble": yes_no[ensemble],
    }


def paper_rows(number: int) -> list[dict[str, str]]:
    """The paper's rows of table `number` (``#`` lines are notes); empty when none is shipped."""
    path = PAPER_DIR / f"table{number}.csv"
    if not path.is_file():
        return []
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    return list(csv.DictReader(lines))


def paper_values(config: WorkflowConfig, number: int, cell: plan.Cell) -> dict[str, float]:
    """Column label -> the paper's number for the row of `cell` (empty when the paper has no such row)."""
    spec = config.tables[number]
    if cell.run.swept_options:  # the paper ran each method with one setting of its options: not this row
        return {}
    ours = paper_key(config, spec, cell.run, cell.alpha is not None)
    for row in paper_rows(number):
        keys = [key for key in PAPER_KEYS if key in row]
        if all(_same(row[key], ours[key]) for key in keys):
            return {label: float(value) for label, value in row.items() if label not in keys and value}
    return {}


def _same(paper: str, ours: str) -> bool:
    """Key equality; numbers compare as numbers (``1.0`` == ``1``)."""
    try:
        return float(paper) == float(ours)
    except ValueError:
        return paper.strip() == ours


def build_table(config: WorkflowConfig, number: int) -> Table:
    """Read every metrics file of table `number` and aggregate it over seeds."""
    spec = config.tables[number]
    grouped: dict[tuple[str, ...], dict[int, list[plan.Cell]]] = {}
    for cell in plan.table_cells(config, number):
        grouped.setdefault(cell.row, {}).setdefault(cell.seed, []).append(cell)
    table = Table(number, spec, [])
    for key, by_seed in grouped.items():
        per_seed = [seed_values(config, spec, cells) for cells in by_seed.values()]
        first = next(iter(by_seed.values()))[0]
        paper = paper_values(config, number, first) if spec.paper else {}
        row = Row([display(config, slot, value) for slot, value in zip(spec.rows, key)], len(by_seed))
        for label in table.value_columns:
            values = [seed[label] for seed in per_seed if seed.get(label) is not None]
            row.stats[label] = Stat(values, paper.get(label))
        if spec.rank:
            row.stats[spec.rank] = Stat([], paper.get(spec.rank), derived=True)
        table.rows.append(row)
    if spec.rank:
        for row, rank in zip(table.rows, average_ranks(table.rows, [column.label for column in spec.columns])):
            row.stats[spec.rank].values = [] if rank is None else [rank]
    if config.allow_partial:
        table.notes.append(partial_note(config, number))
    return table


def partial_note(config: WorkflowConfig, number: int) -> str:
    """The line a table built with ``allow_partial`` carries: which columns scored fewer images than the release."""
    from stages.data.manifest import load_manifest
    from stages.evaluation.benchmarks import BENCHMARKS

    short = []
    for column in config.tables[number].columns:
        bench = BENCHMARKS[column.benchmark]
        manifest = load_manifest(bench.dataset)
        expected = manifest.splits.get(bench.split) if manifest else None
        scored = [json.loads(path.read_text(encoding="utf-8")).get("n") for cell in plan.table_cells(config, number)
                  if plan.fills(column, cell) and (path := cell.eval_path(config.results, column.benchmark)).is_file()]
        found = max((n for n in scored if isinstance(n, int)), default=None)
        if expected is not None and found is not None and found != expected.images:
            short.append(f"{column.label} {found:,} of {expected.images:,} images")
    return ("**Partial data (allow_partial=true):** datasets were scored as they are, not as released"
            + (f"; {', '.join(short)}." if short else "."))


def average_ranks(rows: list[Row], labels: list[str]) -> list[float | None]:
    """Each row's mean over `labels` of 1 + #rows with a strictly higher mean there (None if a mean is missing)."""
    means = [[row.stats[label].mean for label in labels] for row in rows]
    ranks: list[float | None] = []
    for own in means:
        if any(value is None for value in own):
            ranks.append(None)
            continue
        per_column = [1 + sum(other[c] is not None and other[c] > own[c] for other in means) for c in range(len(labels))]
        ranks.append(statistics.fmean(per_column))
    return ranks


def _number(value: float | None, signed: bool = False, decimals: int = 2) -> str:
    return "" if value is None else (f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}")


def markdown(table: Table) -> str:
    """The table in markdown: ``mean ± std (n)`` per cell, then the paper's number and the difference."""
    spec = table.spec
    header = [SLOT_HEADERS[slot] for slot in spec.rows] + table.columns
    lines = [f"# {spec.title}", ""] + [line for note in table.notes for line in (note, "")]
    lines.append("Ours: mean ± std over seeds (the value alone from one seed; n seeds when fewer than planned)"
                 + ("; paper's number and ours − paper in brackets." if spec.paper else ".") + " — = missing.")
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.rows:
        cells = []
        for label in table.columns:
            stat, digits = row.stats[label], table.format(label).decimals
            spread = not stat.derived and len(stat.values) > 1  # one seed: the value alone, no "± 0.00"
            text = "—" if stat.mean is None else _number(stat.mean, decimals=digits) + (
                f" ± {_number(stat.std, decimals=digits)}" if spread else "")
            if stat.values and len(stat.values) < row.seeds and not stat.derived:
                text += f" (n={len(stat.values)})"
            if spec.paper:
                text += (f" [{_number(stat.paper, decimals=digits) or '—'}, "
                         f"{_number(stat.diff, signed=True, decimals=digits) or '—'}]")
            cells.append(text)
        lines.append("| " + " | ".join(row.labels + cells) + " |")
    return "\n".join(lines) + "\n"


def csv_text(table: Table) -> str:
    """The table as CSV: per column ``<label>``, ``<label>_std``, ``<label>_n``, ``<label>_paper``, ``<label>_diff``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    suffixes = ("", "_std", "_n", "_paper", "_diff") if table.spec.paper else ("", "_std", "_n")
    writer.writerow(list(table.spec.rows) + [label + suffix for label in table.columns for suffix in suffixes])
    for row in table.rows:
        values = []
        for label in table.columns:
            stat, digits = row.stats[label], table.format(label).decimals
            values += [_number(stat.mean, decimals=digits), _number(stat.std, decimals=digits),
                       "" if stat.derived else str(len(stat.values))]
            if table.spec.paper:
                values += [_number(stat.paper, decimals=digits), _number(stat.diff, signed=True, decimals=digits)]
        writer.writerow(row.labels + values)
    return buffer.getvalue()


def write_table(table: Table, out_dir: Path) -> list[Path]:
    """Write ``tableN.md`` and ``tableN.csv`` atomically; return their paths."""
    paths = [Path(out_dir) / f"table{table.number}.md", Path(out_dir) / f"table{table.number}.csv"]
    atomic_write_text(paths[0], markdown(table))
    atomic_write_text(paths[1], csv_text(table))
    return paths
