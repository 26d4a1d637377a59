"""What the workflow builds from a ``WorkflowConfig``: runs, eval files, table cells, pre-run checks.

The Snakefile and ``stages.reports`` both derive every path from here, so the files snakemake
plans are exactly the files a report reads:

- a run dir is ``TrainConfig.run_dir`` (zero-shot "runs" are evaluated, never trained);
- its metrics are ``<run dir>/eval/<benchmark>.json`` and, for WiSE-FT,
  ``<run dir>/eval/<benchmark>@alpha<α>.json``, all written by one evaluation job per run, which
  also writes ``<run dir>/eval/index.json`` (the job's declared output);
- a table cell is (row, seed, run, α) and reads one metrics file per column.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stages.config import EXECUTION_FIELDS, ColumnSpec, ConfigError, TableSpec, TrainConfig, WorkflowConfig, without_execution
from stages.data.source import DatasetError, available_datasets, dataset_layouts
from stages.descriptors.bank import BankError, load_bank
from stages.evaluation.benchmarks import BENCHMARKS, request_name

# Banks a missing file may still come from: workflow/rules/descriptors.smk writes these paths.
GENERATED_BANK = re.compile(r"(^|/)descriptor_banks/[^/]+/v\d+\.json$")


@dataclass(frozen=True)
class Cell:
    """The runs behind one table row for one seed: the run itself, or one WiSE-FT α of it."""

    row: tuple[str, ...]
    seed: int
    run: TrainConfig
    alpha: float | None = None

    def eval_path(self, results: Path, benchmark: str) -> Path:
        """The metrics JSON of this cell on `benchmark`."""
        return eval_path(self.run.run_dir(results), benchmark, self.alpha)


def eval_path(run_dir: Path, benchmark: str, alpha: float | None = None) -> Path:
    """``<run dir>/eval/<benchmark>.json``, or ``<benchmark>@alpha<α>.json`` for a WiSE-FT α."""
    return Path(run_dir) / "eval" / f"{request_name(benchmark, alpha)}.json"


def eval_index(run_dir: Path) -> Path:
    """``<run dir>/eval/index.json``: written by the run's evaluation job once all its metrics are."""
    return Path(run_dir) / "eval" / "index.json"


def bank_name(config: WorkflowConfig, run: TrainConfig) -> str:
    """The config name of the run's bank, ``-`` when the run uses none."""
    if run.method != "starft" or run.spurious.suffix != "spurious":
        return "-"
    return next(name for name, bank in config.banks.items() if bank.path == run.spurious.bank)


def row_key(config: WorkflowConfig, table: TableSpec, run: TrainConfig, ensemble: bool) -> tuple[str, ...]:
    """The values of the table's row slots for `run` (``-`` for slots the method does not use)."""
    star = run.method == "starft"
    values = {
        "arch": run.model.name,
        "train_set": run.data.train_set,
        "method": run.method,
        "variant": run.variant(),
        "bank": bank_name(config, run),
        "concept": run.spurious.concept if bank_name(config, run) != "-" else "-",
        "lam": f"{run.lam:g}" if star else "-",
        "ensemble": "yes" if ensemble else "no",
    }
    return tuple(values[slot] for slot in table.rows)


def table_cells(config: WorkflowConfig, number: int) -> list[Cell]:
    """Every cell of table `number`: each run, plus each of its WiSE-FT α when the table has alphas."""
    table = config.tables[number]
    cells = []
    for run in config.table_runs(number):
        cells.append(Cell(row_key(config, table, run, ensemble=False), run.seed, run))
        if table.alphas and run.method != "zeroshot":
            row = row_key(config, table, run, ensemble=True)
            cells += [Cell(row, run.seed, run, alpha) for alpha in table.alphas]
    return cells


def table_inputs(config: WorkflowConfig, number: int) -> list[Path]:
    """The metrics files table `number` is built from (sorted, unique)."""
    columns = config.tables[number].columns
    paths = {cell.eval_path(config.results, column.benchmark) for cell in table_cells(config, number)
             for column in columns if fills(column, cell)}
    return sorted(paths)


def table_indexes(config: WorkflowConfig, number: int) -> list[Path]:
    """The evaluation indexes of the runs table `number` reads (what the report rule waits for)."""
    return sorted({eval_index(path.parent.parent) for path in table_inputs(config, number)})


def eval_requests(config: WorkflowConfig) -> dict[str, list[str]]:
    """Run dir -> every ``<benchmark>[@alpha<α>]`` any table reads of it (sorted): one job evaluates them all."""
    requests: dict[str, set[str]] = {}
    for number in config.tables:
        for path in table_inputs(config, number):
            requests.setdefault(str(path.parent.parent), set()).add(path.stem)
    return {run_dir: sorted(names) for run_dir, names in requests.items()}


def fills(column: ColumnSpec, cell: Cell) -> bool:
    """Whether `cell`'s run is scored in `column` (a column may be tied to one train set)."""
    return column.train_set in (None, cell.run.data.train_set)


def runs_by_dir(config: WorkflowConfig) -> dict[str, TrainConfig]:
    """Run dir -> config of every run of every table (zero-shot ones included)."""
    return {str(run.run_dir(config.results)): run for number in config.tables for run in config.table_runs(number)}


def run_yaml(run: TrainConfig) -> str:
    """The ``train.yaml`` of a run: its config without execution settings (a change there retrains)."""
    return yaml.safe_dump(without_execution(run.model_dump(mode="json")), sort_keys=False)


def execution_overrides(run: TrainConfig) -> list[str]:
    """``key=value`` pairs (``--set`` of ``python -m stages.training``) of the run's execution settings."""
    dumped = run.model_dump(mode="json")
    pairs = []
    for dotted in EXECUTION_FIELDS:
        value: Any = dumped
        for key in dotted.split("."):
            value = value[key]
        pairs.append(f"{dotted}={json.dumps(value)}")  # JSON is YAML: the CLI reads the value back exactly
    return pairs


def check_references(config: WorkflowConfig, generated_banks: bool) -> None:
    """Parse-time checks (dry runs included): benchmarks, train sets, banks and their concepts.

    A bank that does not exist is accepted only when ``generated_banks`` and its path is one
    the descriptor rule writes (``descriptor_banks/<model>/v<N>.json``).
    """
    for number, table in config.tables.items():
        for index, column in enumerate(table.columns):
            if column.benchmark not in BENCHMARKS:
                raise ConfigError(f"tables.{number}.columns.{index}.benchmark: unknown benchmark "
                                  f"{column.benchmark!r}; known: {', '.join(sorted(BENCHMARKS))}")
    unknown = sorted(set(config.train_sets) - set(available_datasets()))
    if unknown:
        raise ConfigError(f"train_sets: {unknown} are not registered datasets; "
                          f"registered: {', '.join(available_datasets())}")
    used = {(run.spurious.bank, run.spurious.concept) for number in config.tables
            for run in config.table_runs(number) if bank_name(config, run) != "-"}
    for path, concept in sorted(used):
        name = next(name for name, bank in config.banks.items() if bank.path == path)
        if not path.is_file() and generated_banks and GENERATED_BANK.search(path.as_posix()):
            continue
        try:
            load_bank(path).descriptors(concept)
        except BankError as error:
            raise ConfigError(f"banks.{name}: {error}") from error


def check_data(config: WorkflowConfig, train_sets: set[str], benchmarks: set[str]) -> None:
    """Run-time check (``onstart``): the datasets of the jobs about to run are under ``data_root``."""
    layouts = dataset_layouts()
    needed = {name: f"train_sets.{name}" for name in sorted(train_sets)}
    for benchmark in sorted(benchmarks):
        needed.setdefault(BENCHMARKS[benchmark].dataset, f"benchmark {benchmark} (tables.*.columns)")
    for dataset, key in needed.items():
        if dataset in layouts:
            try:
                layouts[dataset].locate(config.data_root)
            except DatasetError as error:
                raise ConfigError(f"data_root: {error}\nNeeded by {key}. Fix: set data_root in the config "
                                  "(or --config data_root=PATH) to the folder that holds it.") from error
