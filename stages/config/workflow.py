"""The workflow schema: the grid snakemake expands (config/config.yaml, config/paper.yaml), its tables and resources."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, get_args

from pydantic import Field, ValidationError, model_validator

from stages.config.figures import FigureName, FigureSpec, check_figure
from stages.config.run import (Concept, DataSettings, MethodName, MethodOptions, ModelConfig, OptimConfig,
                               RunSettings, Select, VariantSpec, override_options, validation_message)
from stages.errors import ConfigError
from stages.strict import Strict

Metric = Literal["top1", "worst_group", "mean_group", "adjusted_mean", "macro_f1", "worst_region", "minority_mean",
                 "shortcut_rate", "swap_rate", "ece", "nll"]


class MetricFormat(NamedTuple):
    """How tables and figures show a metric: the factor on its metrics-JSON value, decimals, the unit."""

    scale: float = 100.0
    decimals: int = 2
    unit: str = "%"


METRIC_FORMATS: dict[str, MetricFormat] = {
    **{metric: MetricFormat() for metric in get_args(Metric)},  # fractions in [0, 1], shown in percent (ECE too)
    "nll": MetricFormat(scale=1.0, decimals=3, unit="nats"),  # negative log-likelihood: shown as it is
}
RowSlot = Literal["arch", "train_set", "method", "variant", "options", "bank", "concept", "lam", "ensemble"]
NonNegative = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class TrainSetSpec(DataSettings):
    """Per-dataset hyper-parameters (Appendix B / Table 13) of fine-tuning on one registered dataset.

    Its data settings are a training config's (``DataSettings``): every field there is one here.
    """

    select: Select = "last"
    lam: float = Field(0.1, ge=0, description="λ for this dataset (methods that use it) unless a table sweeps λ")
    optim: OptimConfig = OptimConfig()


class BankSpec(Strict):
    """A descriptor bank: its file and the label reports print for it (e.g. ``GPT-3.5``)."""

    path: Path
    label: str | None = None


class ColumnSpec(Strict):
    """One table column: a metric of one benchmark's metrics JSON (the label matches the paper CSV header)."""

    label: str
    benchmark: str
    metric: Metric = "top1"
    train_set: str | None = Field(None, description="only runs fine-tuned on this train set fill the column")


class TableSpec(Strict):
    """One report table: the runs it needs (a grid over the lists below) and its columns.

    Unset lists fall back to the workflow's defaults (the first arch, every seed, the first bank,
    each train set's λ). Variants, banks and concepts apply to the methods that use spurious
    captions, lams to those that use λ (their specs), each options entry to the methods it names;
    a method that does not train is evaluated once.
    """

    title: str
    rows: list[RowSlot] = Field(["method"], min_length=1, description="slots whose values label a row")
    archs: list[str] | None = None
    train_sets: list[str] = Field(["imagenet"], min_length=1)
    methods: list[MethodName] = Field(min_length=1)
    variants: list[VariantSpec] = Field([VariantSpec()], min_length=1)
    banks: list[str] | None = None
    concepts: list[Concept] = Field(["background"], min_length=1)
    lams: list[NonNegative] | None = None
    options: list[dict[str, dict[str, Any]]] = Field(
        [{}], min_length=1, description="method-options sweep: each entry maps methods of this table to overrides "
        "of their options block on top of the workflow's options (one run per entry for each method it names; a "
        "method it does not name trains with the workflow's block)")
    seeds: list[int] | None = None
    alphas: list[Fraction] = Field([], description="WiSE-FT α grid; adds ensembled rows (best α on id_column)")
    id_column: str | None = Field(None, description="column whose value picks the WiSE-FT α")
    columns: list[ColumnSpec] = Field(min_length=1)
    averages: dict[str, list[str]] = Field({}, description="extra columns: label -> column labels averaged")
    rank: str | None = Field(None, description="label of an extra last column: each row's average rank over the "
                             "columns (1 = best, ties share the better rank), from the mean values (Table 5)")
    paper: bool = Field(True, description="print the paper's number and the difference beside ours")

    @model_validator(mode="after")
    def _consistent(self) -> TableSpec:
        labels = [column.label for column in self.columns]
        if len(set(labels)) != len(labels):
            raise ValueError(f"column labels repeat: {labels}")
        unknown = sorted({c.train_set for c in self.columns if c.train_set} - set(self.train_sets))
        if unknown:
            raise ValueError(f"columns name train sets {unknown} that are not in this table's train_sets")
        metric = {column.label: column.metric for column in self.columns}
        for name, parts in self.averages.items():
            unknown = sorted(set(parts) - set(labels))
            if unknown or not parts:
                raise ValueError(f"averages.{name}: {unknown or 'no'} columns; columns are {labels}")
            if len({METRIC_FORMATS[metric[part]] for part in parts}) > 1:
                raise ValueError(f"averages.{name}: its columns' metrics {sorted({metric[part] for part in parts})} "
                                 "are shown in different units (METRIC_FORMATS); average columns of one unit")
        if self.rank is not None and self.rank in [*labels, *self.averages]:
            raise ValueError(f"rank: {self.rank!r} is already a column label")
        if self.alphas and (self.id_column not in labels or "ensemble" not in self.rows):
            raise ValueError(f"alphas need 'ensemble' in rows and id_column set to one of the columns {labels}")
        return self


IntervalMetric = Literal["top1", "worst_group", "mean_group", "swap_rate"]
"""The metrics a paired bootstrap recomputes from per-item outcomes (stages/reports/intervals.py); the others
need what an items file does not hold (training-split group counts, homes, confidences)."""


class ClaimSpec(Strict):
    """One claim of the paper, checked as a paired bootstrap interval of ``method`` − ``baseline`` on a table column."""

    claim: str = Field(description="the claim in words, as the report prints it")
    table: int = Field(description="the table whose runs and column are compared (its rows: method)")
    column: str = Field(description="a column label of that table, or one of its averages (its parts' differences "
                        "are averaged per bootstrap replicate)")
    method: MethodName = Field(description="the method the paper claims the direction for (A)")
    baseline: MethodName = Field(description="the method it is compared with (B)")
    direction: Literal[1, -1] = Field(1, description="the paper's direction: 1 if it claims method > baseline on "
                                      "the column's metric, -1 if method < baseline (a lower-is-better metric)")


class ClaimsSpec(Strict):
    """The claims report (results/claims.{md,csv}): per claim the mean paired difference, a 95 % percentile
    bootstrap interval over seeds and test items, and the verdict (stages/reports/intervals.py)."""

    title: str
    replicates: int = Field(2000, ge=1, description="bootstrap replicates per claim")
    seed: int = Field(0, description="seed of the bootstrap's random generator (the report is deterministic)")
    rows: list[ClaimSpec] = Field(min_length=1)


def check_claims(claims: ClaimsSpec, tables: dict[int, TableSpec]) -> None:
    """Each claim names a table with one row per method (no WiSE-FT rows), one of its columns or averages whose
    metrics a bootstrap can recompute, and two distinct methods of that table."""
    for index, claim in enumerate(claims.rows):
        where = f"claims.rows[{index}]"
        table = tables.get(claim.table)
        if table is None:
            raise ValueError(f"{where}.table: no table {claim.table}; tables: {sorted(tables)}")
        if table.rows != ["method"] or table.alphas:
            raise ValueError(f"{where}.table: table {claim.table} must have rows [method] and no alphas (one run "
                             "per method and seed to compare)")
        metrics = {column.label: column.metric for column in table.columns}
        parts = table.averages.get(claim.column, [claim.column] if claim.column in metrics else [])
        if not parts:
            raise ValueError(f"{where}.column: {claim.column!r} is not a column or an average of table "
                             f"{claim.table}: {[*metrics, *table.averages]}")
        unusable = sorted({metrics[part] for part in parts} - set(get_args(IntervalMetric)))
        if unusable:
            raise ValueError(f"{where}.column: metric(s) {unusable} cannot be bootstrapped from per-item outcomes; "
                             f"use a column of {list(get_args(IntervalMetric))}")
        for key in ("method", "baseline"):
            if getattr(claim, key) not in table.methods:
                raise ValueError(f"{where}.{key}: {getattr(claim, key)!r} is not one of table {claim.table}'s "
                                 f"methods {table.methods}")
        if claim.method == claim.baseline:
            raise ValueError(f"{where}: method and baseline are both {claim.method!r}")


class DescriptorsSettings(Strict):
    """Settings of ``workflow/rules/descriptors.smk`` (the LLM that writes a new bank)."""

    backend: Literal["openai", "transformers"] | None = None
    model: str | None = None
    base_url: str | None = None
    concepts: list[str] | str | None = None
    runs: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    seed: int | None = None


class RuleResources(Strict):
    """Resources one rule's jobs declare (snakemake ``resources:``); ``mem_mb`` doubles per retry."""

    gpu: int = Field(0, ge=0, description="GPUs (per node when nodes > 1)")
    nodes: int = Field(1, ge=1, description="train only: nodes of one run (> 1: srun starts one DDP rank per GPU "
                       "on each node)")
    mem_mb: int = Field(4000, ge=1)
    runtime: int = Field(60, ge=1, description="minutes")
    threads: int = Field(1, ge=1)
    signal_lead_s: int = Field(300, ge=0, description="train only, SLURM: seconds before the time limit at which "
                               "the job's trainer gets SIGTERM (sbatch --signal=TERM@<this>): it checkpoints, exits "
                               "75 and the job requeues itself; 0: no early signal (SLURM's own SIGTERM at the limit "
                               "leaves KillWait, 30 s by default, to write the checkpoint)")


class ResourcesSpec(Strict):
    """Per-rule resources and the retry count of the GPU rules (real failures only: an interrupted
    training job requeues itself on SLURM without spending one)."""

    train: RuleResources = RuleResources(gpu=1, mem_mb=64000, runtime=1440, threads=8)
    evaluate: RuleResources = RuleResources(gpu=1, mem_mb=32000, runtime=120, threads=8)
    retries: int = Field(1, ge=0)

    @model_validator(mode="after")
    def _lead_within_runtime(self) -> ResourcesSpec:
        # A lead at or past the time limit would signal the trainer as soon as it starts: every
        # attempt would train one step and requeue.
        train = self.train
        if train.signal_lead_s >= train.runtime * 60:
            raise ValueError(f"train.signal_lead_s ({train.signal_lead_s} s) must be shorter than train.runtime "
                             f"({train.runtime} min = {train.runtime * 60} s); fix: lower signal_lead_s (e.g. 300) "
                             "or raise runtime")
        return self


class DemoSettings(Strict):
    """The embedded demo's own pipeline files (workflow/rules/demo.smk): data under data_root, weights."""

    seed: int = 0
    correlation: float = Field(0.8, ge=0, le=1, description="P(a class on its home background) in the fine-tuning "
                               "splits (train, val, test)")
    pretrain_correlation: float = Field(0.5, ge=0, le=1, description="P(a class on its home background) in the "
                                        "pretraining split (0.2 = no bias: five backgrounds)")
    sizes: dict[str, int] = Field({}, description="split -> number of images (stages.demo.data defaults otherwise)")
    weights: Path = Field(Path("results/demo/TinyCLIP-demo.pt"), description="the pretrained zero-shot model")
    model: str = "TinyCLIP-demo"
    pretrain_steps: int = Field(800, ge=1)
    pretrain_batch_size: int = Field(256, ge=2)
    pretrain_lr: float = Field(1e-3, gt=0)


class WorkflowConfig(RunSettings):
    """The whole workflow: what to train, evaluate and tabulate (``config/*.yaml``)."""

    results: Path = Field(Path("results"), description="output root (run dirs under results/runs)")
    data_root: Path = Field(Path("data"), description="parent folder of every dataset (checked before any job)")
    allow_partial: bool = Field(False, description="score datasets that fall short of their manifest "
                                "(python -m stages.data verify) as they are, on purpose; every table then says so")
    archs: dict[str, str] = Field(min_length=1, description="open_clip name -> pretrained tag (first = default)")
    model: ModelConfig | None = Field(None, description="one model that replaces archs in every table, e.g. "
                                      "--config 'model={name: TinyCLIP-test, pretrained: none}'")
    seeds: list[int] = Field([0], min_length=1)
    banks: dict[str, BankSpec] = Field(min_length=1, description="bank name -> file (first = default)")
    train_sets: dict[str, TrainSetSpec] = Field(min_length=1)
    options: MethodOptions = Field(default_factory=dict, validate_default=True)
    workers: int = Field(4, ge=0, description="data-loader workers of training and evaluation")
    eval_batch_size: int = Field(256, ge=1)
    eval_image_cache: Path | None = Field(None, description="folder of decoded evaluation crops shared by all "
                                          "evaluation jobs (~150 kB per image at 224 px; same results, no re-decoding)")
    tables: dict[int, TableSpec] = Field(min_length=1, description="report number -> table")
    resources: ResourcesSpec = ResourcesSpec()
    descriptors: DescriptorsSettings | None = None
    demo: DemoSettings | None = Field(None, description="build the demo's data and zero-shot weights in the workflow")
    figures: dict[FigureName, FigureSpec] = Field({}, description="name -> figure (results/figure_<name>.png)")
    claims: ClaimsSpec | None = Field(None, description="the paper's claims checked with bootstrap intervals "
                                      "(results/claims.{md,csv})")

    @model_validator(mode="after")
    def _references(self) -> WorkflowConfig:
        if self.model is not None:  # replace semantics: the one model, in every table
            self.archs = {self.model.name: self.model.pretrained}
            for table in self.tables.values():
                table.archs = None
        for number, table in self.tables.items():
            for key, names, known in (("archs", table.archs, self.archs), ("train_sets", table.train_sets,
                                      self.train_sets), ("banks", table.banks, self.banks)):
                unknown = sorted(set(names or ()) - set(known))
                if unknown:
                    raise ValueError(f"tables.{number}.{key}: {unknown} not defined; the config's {key}: {sorted(known)}")
            for index, entry in enumerate(table.options):
                where = f"tables.{number}.options[{index}]."
                for method, overrides in entry.items():
                    if method not in table.methods:
                        raise ValueError(f"{where}{method}: not one of this table's methods {table.methods}")
                    override_options(self.options, method, overrides, where)
        stems: dict[str, str] = {}
        for name, bank in self.banks.items():
            if stems.setdefault(bank.path.stem, name) != name:
                raise ValueError(f"banks.{name} and banks.{stems[bank.path.stem]} share the file stem "
                                 f"{bank.path.stem!r}, which names the run-dir slot; rename one file")
        for name, figure in self.figures.items():
            check_figure(f"figures.{name}", figure, self.tables, self.seeds)
        if self.claims is not None:
            check_claims(self.claims, self.tables)
        return self


def validate_workflow_config(raw: dict[str, Any], source: str = "config") -> WorkflowConfig:
    """Validate a workflow config mapping (snakemake's ``config``), naming the bad key on failure."""
    try:
        return WorkflowConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"{source}: invalid workflow config: {validation_message(error)}") from error


def workflow_schema() -> dict[str, Any]:
    """JSON schema (draft 2020-12) of ``WorkflowConfig``: workflow/schemas/config.schema.json is this."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **WorkflowConfig.model_json_schema()}
