"""What the workflow builds from a ``WorkflowConfig``: the grid of runs, eval files, table cells, pre-run checks.

The Snakefile and ``stages.reports`` both derive every path from here, so the files snakemake
plans are exactly the files a report reads:

- a table's runs are its grid (``table_runs``: one ``TrainConfig`` per arch, train set, method,
  options entry, variant, bank, concept, λ and seed); a run dir is ``RunDir.of`` (stages/rundir.py);
  a method that does not train (zero-shot) is evaluated, never trained;
- its metrics are one file per `EvalRequest` (benchmark, WiSE-FT α) of the run (``RunDir.metrics``),
  all written by one evaluation job per run, which also writes the run's evaluation index
  (``RunDir.eval_index``, the job's declared output);
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
    ClaimSpec,
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
    override_options,
    without_execution,
)
from stages.data.source import DatasetError, available_datasets, dataset_layouts
from stages.strict import Strict
from stages.descriptors.bank import BankError, load_bank
from stages.evaluation.benchmarks import BENCHMARKS
from stages.methods import method_spec
from stages.cli import command
from stages.errors import read_yaml
from stages.rundir import BEST, CHECKPOINTS, LAST, EvalRequest, RunDir, option_values, run_slots, uses_bank

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

    def request(self, benchmark: str) -> EvalRequest:
        """This cell's evaluation of `benchmark` (at its α)."""
        return EvalRequest(benchmark, self.alpha)

    def eval_path(self, results: Path, benchmark: str) -> Path:
        """The metrics JSON of this cell on `benchmark`."""
        return self.run_dir(results).metrics(self.request(benchmark))


# --- the grid -------------------------------------------------------------------------------

def table_runs(config: WorkflowConfig, number: int) -> list[TrainConfig]:
    """The runs table `number` needs, one per (arch, train set, method, options, variant, bank, concept, λ, seed).

    A method that does not train is evaluated once per (arch, train set), at seed 0. Grid points that
    are one run (an options entry that names another method, or sets the workflow's value) are one.
    """
    table = config.tables[number]
    runs: dict[Path, TrainConfig] = {}
    for arch in table.archs or [next(iter(config.archs))]:
        for train_set in table.train_sets:
            spec = config.train_sets[train_set]
            for method in table.methods:
                for seed in (table.seeds or config.seeds) if method_spec(method).trains else [0]:
                    for overrides, variant, bank, concept, lam in _method_slots(config, table, spec, method):
                        run = train_config(config, arch, train_set, method, seed, variant, bank, concept, lam,
                                           overrides)
                        runs.setdefault(RunDir.of(run, config.results).path, run)
    return list(runs.values())


def _method_slots(config: WorkflowConfig, table: TableSpec, spec: TrainSetSpec,
                  method: str) -> list[tuple[dict[str, Any], VariantSpec, str, str, float]]:
    """(options overrides, variant, bank, concept, λ) combinations: the table's grid for the slots the method
    uses, the defaults otherwise (overrides ``{}``: the workflow's options block)."""
    method_uses = method_spec(method)
    default_bank = next(iter(config.banks))
    variants, banks, concepts = [VariantSpec()], [default_bank], ["background"]
    if method_uses.uses_spurious:
        variants, banks, concepts = table.variants, table.banks or [default_bank], table.concepts
    lams = (table.lams or [spec.lam]) if method_uses.uses_lambda else [spec.lam]
    overrides = [entry.get(method, {}) for entry in table.options]
    return [(override, variant, bank, concept, lam) for override in overrides for variant in variants
            for bank in banks for concept in concepts for lam in lams]


def train_config(config: WorkflowConfig, arch: str, train_set: str, method: str, seed: int, variant: VariantSpec,
                 bank: str, concept: str, lam: float, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The ``TrainConfig`` of one grid point: the train set's data settings and hyper-parameters, the
    workflow's run settings and method options (with a table's `overrides` of the method's block), and
    the point's slots.

    The options an override moves off the workflow's block are the run's ``swept_options``, which its
    run dir spells: a run with the workflow's options keeps the run dir it has without any sweep.
    """
    spec = config.train_sets[train_set]
    overrides = overrides or {}
    options = override_options(config.options, method, overrides) if overrides else config.options
    swept = [key for key in overrides if getattr(options[method], key) != getattr(config.options[method], key)]
    return TrainConfig(
        model=ModelConfig(name=arch, pretrained=config.archs[arch]),
        data=DataConfig(train_set=train_set, data_root=config.data_root, workers=config.workers,
                        **_fields(spec, DataSettings)),
        method=method, lam=lam, seed=seed, select=spec.select, optim=spec.optim, options=options, swept_options=swept,
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
        "options": ", ".join(f"{key}={value}" for key, value in option_values(run).items()) or "-",
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


def table_requests(config: WorkflowConfig, number: int) -> list[tuple[RunDir, EvalRequest]]:
    """(run dir, request) of every metrics file table `number` is built from (unique, in table order)."""
    columns = config.tables[number].columns
    pairs = {(cell.run_dir(config.results), cell.request(column.benchmark)): None
             for cell in table_cells(config, number) for column in columns if fills(column, cell)}
    return list(pairs)


def table_inputs(config: WorkflowConfig, number: int) -> list[Path]:
    """The metrics files table `number` is built from (sorted, unique)."""
    return sorted({run_dir.metrics(request) for run_dir, request in table_requests(config, number)})


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
    return sorted({run_dir.eval_index for run_dir, _ in table_requests(config, number)})


def claim_columns(config: WorkflowConfig, claim: ClaimSpec) -> list[ColumnSpec]:
    """The columns of the claim's table it compares: its column, or each part of its average."""
    table = config.tables[claim.table]
    by_label = {column.label: column for column in table.columns}
    return [by_label[label] for label in table.averages.get(claim.column, [claim.column])]


def claim_cells(config: WorkflowConfig, claim: ClaimSpec, method: str) -> dict[int, Cell]:
    """Seed -> the cell of `method` in the claim's table that fills the claim's columns (one run per seed:
    a table of several archs or train sets for one method row is refused)."""
    columns = claim_columns(config, claim)
    cells: dict[int, Cell] = {}
    for cell in table_cells(config, claim.table):
        if cell.run.method != method or cell.alpha is not None or not all(fills(column, cell) for column in columns):
            continue
        if cell.seed in cells:
            raise ConfigError(f"claims: table {claim.table} has several runs of {method} at seed {cell.seed} "
                              f"({cells[cell.seed].run_dir(config.results).name}, {cell.run_dir(config.results).name}); "
                              "a claim compares one run per method and seed")
        cells[cell.seed] = cell
    return cells


def claim_indexes(config: WorkflowConfig) -> list[Path]:
    """The evaluation indexes of every run the config's claims compare (what the claims rule waits for)."""
    claims = config.claims.rows if config.claims is not None else []
    return sorted({cell.run_dir(config.results).eval_index for claim in claims
                   for method in (claim.method, claim.baseline) for cell in claim_cells(config, claim, method).values()})


def eval_requests(config: WorkflowConfig) -> dict[str, list[str]]:
    """Run dir -> every request (``<benchmark>[@alpha<α>]``) any table reads of it, sorted: one job evaluates them all."""
    requests: dict[str, set[str]] = {}
    for number in config.tables:
        for run_dir, request in table_requests(config, number):
            requests.setdefault(str(run_dir.path), set()).add(str(request))
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


WORKFLOW_EXECUTION = ("workers", "eval_batch_size", "eval_image_cache", "resources")
"""Workflow settings that change how jobs run, not a number: with the runs' EXECUTION_FIELDS, kept out of what
the report rules record (`report_config`)."""


def report_config(config: WorkflowConfig) -> dict[str, Any]:
    """The validated config as ``stages.reports`` reads it (``workflow_config.yaml``), without the settings that
    change no table or figure: the runs' EXECUTION_FIELDS (tracking, log_every, grad_checkpointing, ...;
    ``data.*`` ones per train set) and WORKFLOW_EXECUTION. A change in those rebuilds no report.

    ``data_root`` stays: Grad-CAM figures read the benchmark's images under it. A table's ``options``
    is left out while it is the default (no sweep), so a workflow without sweeps records the text it
    recorded before sweeps existed and its finished reports are not rebuilt for them.
    """
    dumped = config.model_dump(mode="json")
    data_fields = {dotted.split(".", 1)[1] for dotted in EXECUTION_FIELDS if dotted.startswith("data.")}
    neutral = {dotted for dotted in EXECUTION_FIELDS if "." not in dotted} | set(WORKFLOW_EXECUTION)
    kept = {key: value for key, value in dumped.items() if key not in neutral}
    kept["train_sets"] = {name: {key: value for key, value in spec.items() if key not in data_fields}
                          for name, spec in dumped["train_sets"].items()}
    no_sweep = TableSpec.model_fields["options"].default
    kept["tables"] = {number: {key: value for key, value in table.items() if (key, value) != ("options", no_sweep)}
                      for number, table in dumped["tables"].items()}
    if kept.get("claims") is None:  # a config without claims records the text it recorded before claims existed
        kept.pop("claims", None)
    return kept


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


# --- disk plan ------------------------------------------------------------------------------
#
# What a run directory holds on disk, from the model's parameter count (no model is built):
# - final: best.pt, one copy of the trained weights (4 bytes a value, 2 with save_dtype: bf16),
#   plus ckpt/last.pt when keep_checkpoints; zero-shot runs write none (best.pt refers to the
#   pretrained weights);
# - peak, while training: best.pt (or ckpt/best_val.pt, which becomes it) + one resumable
#   checkpoint (fp32 weights, AdamW's two fp32 moments of every trained value, the teacher of a
#   method whose teacher moves) + the checkpoint being written next to it (atomic write).
# Logs, records and evaluation files (kilobytes to megabytes) are left out.

# open_clip's model-config keys whose values the formula below accounts for; a config with any
# other key (timm or HF towers, attentional pooling, layer scale, ...) is counted by building the
# model on torch's meta device instead (no memory, a few seconds).
_FORMULA_KEYS = {
    "top": {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "init_logit_scale"},
    "vision": {"image_size", "layers", "width", "patch_size", "head_width", "mlp_ratio"},
    "text": {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"},
}


@dataclass(frozen=True)
class ParameterCount:
    """Values in a model's state dict: all of them, and those of the image tower (``visual.*``)."""

    total: int
    visual: int


def _transformer_values(width: int, layers: int, mlp_ratio: float) -> int:
    """open_clip's ``Transformer``: per block ln_1 and ln_2 (2W each), attention in/out projections
    (3W² + 3W, W² + W), MLP c_fc and c_proj (W·M + M, M·W + W) with M = int(W · mlp_ratio)."""
    mlp = int(width * mlp_ratio)
    return layers * (4 * width * width + 2 * width * mlp + 9 * width + mlp)


def _pair(value: int | list[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def clip_parameters(config: dict[str, Any]) -> ParameterCount | None:
    """Parameter count of an open_clip ViT CLIP from its model config (None: a config the formula does not cover).

    Image tower: patch conv 3·p²·W (no bias), class token W, positional (grid + 1)·W, ln_pre and
    ln_post 2W each, the blocks, projection W·E. Text tower: token embedding V·w, positional C·w,
    the blocks, ln_final 2w, projection w·E. Plus the logit scale.
    """
    vision, text = config.get("vision_cfg", {}), config.get("text_cfg", {})
    if (set(config) - _FORMULA_KEYS["top"] or set(vision) - _FORMULA_KEYS["vision"]
            or set(text) - _FORMULA_KEYS["text"] or not {"layers", "width", "patch_size"} <= set(vision)):
        return None
    embed = int(config["embed_dim"])
    width, (patch_h, patch_w) = int(vision["width"]), _pair(vision["patch_size"])
    image_h, image_w = _pair(vision.get("image_size", 224))
    grid = (image_h // patch_h) * (image_w // patch_w)
    visual = (3 * patch_h * patch_w * width + width + (grid + 1) * width + 4 * width + width * embed
              + _transformer_values(width, int(vision["layers"]), float(vision.get("mlp_ratio", 4.0))))
    text_width = int(text.get("width", 512))
    textual = (int(text.get("vocab_size", 49408)) * text_width + int(text.get("context_length", 77)) * text_width
               + 2 * text_width + text_width * embed
               + _transformer_values(text_width, int(text.get("layers", 12)), float(text.get("mlp_ratio", 4.0))))
    return ParameterCount(total=visual + textual + 1, visual=visual)


def model_config(name: str) -> dict[str, Any]:
    """An open_clip model config read from its JSON file (the package's or ours), without importing open_clip."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    folders = [Path(__file__).parent / "models" / "configs"]
    if spec is not None and spec.submodule_search_locations:
        folders += [Path(location) / "model_configs" for location in spec.submodule_search_locations]
    for folder in folders:
        path = folder / f"{name}.json"
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    raise ConfigError(f"archs: no open_clip model config {name}.json in {', '.join(map(str, folders))}; "
                      "fix: name an open_clip architecture (`python -c 'import open_clip; print(open_clip.list_models())'`)")


def meta_parameters(name: str) -> ParameterCount:
    """Parameter count of open_clip's model `name`, built on the meta device (shapes only, no memory)."""
    import open_clip
    import torch

    import stages.models.factory  # noqa: F401  (registers the shipped tiny configs)

    with torch.device("meta"):
        model = open_clip.create_model(name, pretrained=None, device="meta")
    state = model.state_dict()
    return ParameterCount(total=sum(value.numel() for value in state.values() if value.is_floating_point()),
                          visual=sum(value.numel() for key, value in state.items()
                                     if key.startswith("visual.") and value.is_floating_point()))


def model_parameters(name: str) -> ParameterCount:
    """The parameter count of open_clip model `name`: by formula from its config, else on the meta device."""
    counted = clip_parameters(model_config(name))
    return counted if counted is not None else meta_parameters(name)


@dataclass(frozen=True)
class RunDisk:
    """Bytes one run directory needs: at its peak while training and once finished."""

    run: TrainConfig
    peak: int
    final: int


def _classes(train_set: str) -> int | None:
    """Number of classes of a train set from its shipped class-name file, None when it has none."""
    from stages.data.layout import classnames
    from stages.data.source import DatasetError

    for name in (train_set, train_set.replace("-", "_")):
        try:
            return len(classnames(name))
        except DatasetError:
            continue
    return None


def run_disk(run: TrainConfig, parameters: ParameterCount, classes: int | None) -> RunDisk:
    """The peak and final disk of one run (see "disk plan" above); a head of unknown size counts as 0."""
    spec = method_spec(run.method)
    if not spec.trains:
        return RunDisk(run, 0, 0)
    embed = int(model_config(run.model.name)["embed_dim"])
    head = (classes or 0) * embed if spec.has_head else 0
    weights = parameters.total + 2 * head  # the head is stored twice: its effective weight and its parameter
    trained = parameters.visual + head if spec.has_head else parameters.total  # head methods freeze the text tower
    best = weights * (2 if run.save_dtype == "bf16" else 4)
    checkpoint = 4 * (weights + 2 * trained + (parameters.total if spec.moving_teacher else 0))
    final = best + (checkpoint if run.keep_checkpoints else 0)
    return RunDisk(run, peak=best + 2 * checkpoint, final=final)


def disk_plan(config: WorkflowConfig) -> list[RunDisk]:
    """Peak and final disk of every run of the config's tables (zero-shot ones at 0)."""
    counts = {name: model_parameters(name) for name in {run.model.name for run in runs_by_dir(config).values()}}
    classes = {name: _classes(name) for name in config.train_sets}
    return [run_disk(run, counts[run.model.name], classes.get(run.data.train_set))
            for run in runs_by_dir(config).values()]


def _size(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{count:.0f} B"
        count /= 1000
    raise AssertionError("unreachable")


def disk_report(config: WorkflowConfig, jobs: int) -> str:
    """The disk plan as text: one line per (arch, method), then the grid's totals."""
    plan = disk_plan(config)
    groups: dict[tuple[str, str], list[RunDisk]] = {}
    for item in plan:
        groups.setdefault((item.run.model.name, item.run.method), []).append(item)
    lines = [f"{'arch':<16} {'method':<10} {'runs':>5} {'params':>9} {'final/run':>10} {'peak/run':>10} {'final':>10}"]
    for (arch, method), items in sorted(groups.items()):
        count = model_parameters(arch).total
        lines.append(f"{arch:<16} {method:<10} {len(items):>5} {count / 1e6:>8.1f}M {_size(max(item.final for item in items)):>10} "
                     f"{_size(max(item.peak for item in items)):>10} {_size(sum(item.final for item in items)):>10}")
    final = sum(item.final for item in plan)
    extra = sorted((item.peak - item.final for item in plan), reverse=True)
    trained = sum(1 for item in plan if method_spec(item.run.method).trains)
    lines += [
        f"{len(plan)} runs ({trained} trained; zero-shot runs refer to the pretrained weights, no copy)",
        f"final (all runs finished): {_size(final)}",
        f"peak with {jobs} training job(s) at once: {_size(final + sum(extra[:jobs]))}"
        f" (every run at once: {_size(final + sum(extra))})",
        f"per run: final = {BEST} (save_dtype) [+ {CHECKPOINTS}/{LAST} if keep_checkpoints]; peak = {BEST} + one "
        "resumable checkpoint (fp32 weights + 2 AdamW moments [+ moving teacher]) + the one being written",
    ]
    return "\n".join(lines)


@command
def main(argv: list[str] | None = None) -> int:
    """``python -m stages.plan --config Y [--jobs N]``: the disk plan (errors: one line, exit 2, stages.cli)."""
    import argparse

    from stages.config import validate_workflow_config

    parser = argparse.ArgumentParser(prog="python -m stages.plan",
                                     description="Disk a workflow config's runs will need (peak while training, "
                                     "final), from the models' parameter counts, before any job starts.")
    parser.add_argument("--config", type=Path, required=True, help="workflow config YAML (config/paper.yaml, ...)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="training jobs running at once (the profile's `jobs`) for the peak (default 1)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    config = validate_workflow_config(read_yaml(args.config, "workflow config") or {}, str(args.config))
    print(disk_report(config, args.jobs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
