"""What the workflow builds from a ``WorkflowConfig``: the grid of runs, eval files, table cells, pre-run checks.

The Snakefile and ``stages.reports`` both derive every path from here, so the files snakemake
plans are exactly the files a report reads:

- a table's runs are its grid (``table_runs``: one ``TrainConfig`` per arch, train set, method,
  variant, bank, concept, λ and seed); a run dir is ``RunDir.of`` (stages/rundir.py); a method
  that does not train (zero-shot) is evaluated, never trained;
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

from stages.config import (
    EXECUTION_FIELDS,
    ColumnSpec,
    ConfigError,
    DataConfig,
    DataSettings,
    ModelConfig,
    RunSettings,
    SpuriousConfig,
    TableSpec,
    TrainConfig,
    TrainSetSpec,
    VariantSpec,
    WorkflowConfig,
    without_execution,
)
from stages.data.source import DatasetError, available_datasets, dataset_layouts
from stages.strict import Strict
from stages.descriptors.bank import BankError, load_bank
from stages.evaluation.benchmarks import BENCHMARKS, request_name
from stages.methods import method_spec
from stages.rundir import RunDir, run_slots, uses_bank

# Banks a missing file may still come from: workflow/rules/descriptors.smk writes these paths.
GENERATED_BANK = re.compile(r"(^|/)descriptor_banks/[^/]+/v\d+\.json$")


@dataclass(frozen=True)
class Cell:
    """The runs behind one table row for one seed: the run itself, or one WiSE-FT α of it."""

    row: tuple[str, ...]
    seed: int
    run: TrainConfig
    alpha: float | None = None

    def run_dir(self, results: Path) -> RunDir:
        """The run directory of this cell's run."""
        return RunDir.of(self.run, results)

    def eval_path(self, results: Path, benchmark: str) -> Path:
        """The metrics JSON of this cell on `benchmark`."""
        return self.run_dir(results).metrics(request_name(benchmark, self.alpha))


# --- the grid -------------------------------------------------------------------------------

def table_runs(config: WorkflowConfig, number: int) -> list[TrainConfig]:
    """The runs table `number` needs, one per (arch, train set, method, variant, bank, concept, λ, seed).

    A method that does not train is evaluated once per (arch, train set), at seed 0.
    """
    table = config.tables[number]
    runs: dict[Path, TrainConfig] = {}
    for arch in table.archs or [next(iter(config.archs))]:
        for train_set in table.train_sets:
            spec = config.train_sets[train_set]
            for method in table.methods:
                for seed in (table.seeds or config.seeds) if method_spec(method).trains else [0]:
                    for variant, bank, concept, lam in _method_slots(config, table, spec, method):
                        run = train_config(config, arch, train_set, method, seed, variant, bank, concept, lam)
                        runs.setdefault(RunDir.of(run, config.results).path, run)
    return list(runs.values())


def _method_slots(config: WorkflowConfig, table: TableSpec, spec: TrainSetSpec,
                  method: str) -> list[tuple[VariantSpec, str, str, float]]:
    """(variant, bank, concept, λ) combinations: the table's grid for the slots the method uses, the defaults otherwise."""
    method_uses = method_spec(method)
    default_bank = next(iter(config.banks))
    variants, banks, concepts = [VariantSpec()], [default_bank], ["background"]
    if method_uses.uses_spurious:
        variants, banks, concepts = table.variants, table.banks or [default_bank], table.concepts
    lams = (table.lams or [spec.lam]) if method_uses.uses_lambda else [spec.lam]
    return [(variant, bank, concept, lam) for variant in variants for bank in banks for concept in concepts
            for lam in lams]


def train_config(config: WorkflowConfig, arch: str, train_set: str, method: str, seed: int, variant: VariantSpec,
                 bank: str, concept: str, lam: float) -> TrainConfig:
    """The ``TrainConfig`` of one grid point: the train set's data settings and hyper-parameters, the
    workflow's run settings and method options, and the point's slots."""
    spec = config.train_sets[train_set]
    return TrainConfig(
        model=ModelConfig(name=arch, pretrained=config.archs[arch]),
        data=DataConfig(train_set=train_set, data_root=config.data_root, workers=config.workers,
                        **_fields(spec, DataSettings)),
        method=method, lam=lam, seed=seed, select=spec.select, optim=spec.optim, options=config.options,
        spurious=SpuriousConfig(bank=config.banks[bank].path, concept=concept, **variant.model_dump()),
        **_fields(config, RunSettings),
    )


def _fields(model: Strict, fragment: type[Strict]) -> dict[str, object]:
    """The values of `model`'s fields that `fragment` (one of its bases) declares."""
    return {name: getattr(model, name) for name in fragment.model_fields}


def bank_name(config: WorkflowConfig, run: TrainConfig) -> str:
    """The config name of the run's bank, ``-`` when the run uses none."""
    if not uses_bank(run):
        return "-"
    return next(name for name, bank in config.banks.items() if bank.path == run.spurious.bank)


def row_key(config: WorkflowConfig, table: TableSpec, run: TrainConfig, ensemble: bool) -> tuple[str, ...]:
    """The values of the table's row slots for `run` (``-`` for slots the method does not use)."""
    bank = bank_name(config, run)
    values = {
        "arch": run.model.name,
        "train_set": run.data.train_set,
        "method": run.method,
        "variant": run_slots(run)["variant"],
        "bank": bank,
        "concept": run.spurious.concept if bank != "-" else "-",
        "lam": f"{run.lam:g}" if method_spec(run.method).uses_lambda else "-",
        "ensemble": "yes" if ensemble else "no",
    }
    return tuple(values[slot] for slot in table.rows)


def table_cells(config: WorkflowConfig, number: int) -> list[Cell]:
    """Every cell of table `number`: each run, plus each of its WiSE-FT α when the table has alphas."""
    table = config.tables[number]
    cells = []
    for run in table_runs(config, number):
        cells.append(Cell(row_key(config, table, run, ensemble=False), run.seed, run))
        if table.alphas and method_spec(run.method).trains:
            row = row_key(config, table, run, ensemble=True)
            cells += [Cell(row, run.seed, run, alpha) for alpha in table.alphas]
    return cells


def table_inputs(config: WorkflowConfig, number: int) -> list[Path]:
    """The metrics files table `number` is built from (sorted, unique)."""
    columns = config.tables[number].columns
    paths = {cell.eval_path(config.results, column.benchmark) for cell in table_cells(config, number)
             for column in columns if fills(column, cell)}
    return sorted(paths)


@dataclass(frozen=True)
class BankComparison:
    """One ``python -m stages.descriptors compare`` a table asks for: a bank against the table's reference bank."""

    bank: str
    reference: str
    concept: str
    model: str
    pretrained: str

    def outputs(self, results: Path) -> list[Path]:
        """``<results>/bank_compare/<bank>_vs_<reference>.{json,md,png}``."""
        return [Path(results) / "bank_compare" / f"{self.bank}_vs_{self.reference}.{suffix}"
                for suffix in ("json", "md", "png")]


def bank_comparisons(config: WorkflowConfig, number: int | None = None) -> list[BankComparison]:
    """The comparisons beside table `number` (every table's when None): a table with ``bank`` among
    its rows and more than one bank compares each later bank with its first (the reference), in the
    text space of the table's first arch, on its one concept (``all`` when it has several)."""
    comparisons: dict[tuple[str, str], BankComparison] = {}
    for key in ([number] if number is not None else list(config.tables)):
        table = config.tables[key]
        if "bank" not in table.rows or len(table.banks or ()) < 2:
            continue
        arch = (table.archs or list(config.archs))[0]
        concept = table.concepts[0] if len(table.concepts) == 1 else "all"
        reference, *others = table.banks
        for bank in others:
            comparisons.setdefault((bank, reference), BankComparison(bank, reference, concept, arch, config.archs[arch]))
    return list(comparisons.values())


def table_indexes(config: WorkflowConfig, number: int) -> list[Path]:
    """The evaluation indexes of the runs table `number` reads (what the report rule waits for)."""
    return sorted({RunDir(path.parent.parent).eval_index for path in table_inputs(config, number)})


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
    return {str(RunDir.of(run, config.results).path): run for number in config.tables
            for run in table_runs(config, number)}


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
            for run in table_runs(config, number) if bank_name(config, run) != "-"}
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


def config_data(config: WorkflowConfig) -> tuple[set[str], set[str]]:
    """(train sets of the runs that train, benchmarks of every table column): the data a config reads."""
    train_sets = {run.data.train_set for number in config.tables for run in table_runs(config, number)
                  if method_spec(run.method).trains}
    benchmarks = {column.benchmark for table in config.tables.values() for column in table.columns}
    return train_sets, benchmarks


def data_needs(config: WorkflowConfig, train_sets: set[str], benchmarks: set[str]) -> dict[str, dict[str, Any] | None]:
    """Dataset -> None (checked against its manifest) or, for your own data, the splits and options to
    check for consistent classes. Datasets with neither (the demo's, built by the workflow) are not gated."""
    from stages.data.manifest import load_manifest
    from stages.data.verify import OWN_DATA

    needs: dict[str, dict[str, Any] | None] = {}
    for name in sorted(train_sets):
        spec = config.train_sets[name]
        if name in OWN_DATA:
            options = DataConfig(train_set=name, **_fields(spec, DataSettings)).dataset_options()
            needs[name] = {"splits": [spec.train_split] + ([spec.val_split] if spec.val_split else []),
                           "train_split": spec.train_split, "options": options}
        elif load_manifest(name) is not None:
            needs[name] = None
    for benchmark in sorted(benchmarks):
        dataset, split = BENCHMARKS[benchmark].dataset, BENCHMARKS[benchmark].split
        if dataset in OWN_DATA:
            own = needs.setdefault(dataset, {"splits": [], "train_split": None, "options": {}})
            assert own is not None
            if split not in own["splits"]:
                own["splits"].append(split)
        elif load_manifest(dataset) is not None:
            needs.setdefault(dataset, None)
    return needs


def check_data_ready(config: WorkflowConfig, train_sets: set[str], benchmarks: set[str], present_only: bool) -> str | None:
    """The workflow gate: verify every dataset these train sets and benchmarks read (cached per dataset).

    `present_only` (at parse time, dry runs included): only datasets whose folder is under data_root,
    so ``snakemake -n`` still plans the grid on a machine without data, while a partial or misarranged
    one stops it; onstart checks them all. Every shortfall is named in one ConfigError, or, with
    ``allow_partial``, returned as a warning (None when all verify).
    """
    from stages.data.verify import cached_verify, gate_message, is_present

    reports = []
    for dataset, own in data_needs(config, train_sets, benchmarks).items():
        if present_only and not is_present(dataset, config.data_root, own):
            continue
        report = cached_verify(dataset, config.data_root, own)
        if report is not None:
            reports.append(report)
    if not reports:
        return None
    message = gate_message(reports)
    if config.allow_partial:
        return "warning: allow_partial=true, scoring these datasets as they are:\n" + message
    raise ConfigError(message)
