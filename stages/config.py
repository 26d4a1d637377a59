"""Pydantic models for everything a training run needs (one source of truth for the CLI and the workflow).

Every model forbids unknown keys, so a typo in a YAML file is an error that names the field,
not a silently ignored setting.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Method = Literal["zeroshot", "ft", "flyp", "carft", "carot", "lipsumft", "starft"]
Concept = Literal["background", "texture", "resolution", "all"]
Tracker = Literal["tensorboard", "wandb"]


class ConfigError(ValueError):
    """A configuration file or value that cannot be used; the message names the field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(Strict):
    """The open_clip model: ``(name, pretrained)``; pretrained is a tag, a local file, or ``none``."""

    name: str = "ViT-B-16"
    pretrained: str = "openai"


class CsvOptions(Strict):
    """The ``csv`` dataset (FLYP/StarFT CSV files): columns, separator and where class names come from."""

    separator: str = Field("\t", description="field separator (the FLYP/StarFT CSVs use a tab)")
    img_key: str = Field("filepath", description="column with the image path (relative paths: under data_root)")
    caption_key: str = Field("title", description="column with the caption; class names are parsed from it "
                             "with title_template when there is no classnames file")
    label_key: str | None = Field("label", description="column with the integer label (absent: labels from the "
                                  "sorted class names)")
    title_template: str = Field("a photo of a {c}.", description="caption pattern whose {c} is the class name")
    classnames: Path | None = Field(None, description="text file, one class name per line in label order "
                                    "(relative: under data_root)")


class WebDatasetOptions(Strict):
    """The ``webdataset`` dataset: tar shards of ``<key>.jpg|png`` + ``<key>.cls`` (or ``json`` with a label)."""

    shards: str = Field("{00000..00009}.tar", description="shard names, brace-expanded, under "
                        "<data_root>/webdataset/<split>/")
    classnames: Path | None = Field(None, description="text file, one class name per line "
                                    "(default: <data_root>/webdataset/classnames.txt)")


class DataConfig(Strict):
    """Training data: a registered dataset under ``data_root`` and the caption it is trained with."""

    train_set: str = "imagenet"
    data_root: Path | None = None
    train_split: str = "train"
    val_split: str | None = Field(None, description="ID validation split for best-checkpoint selection")
    caption_template: str = Field("a photo of a {c}.", description="training caption; '{c}' is the class name")
    head_templates: list[str] | None = Field(
        None, description="templates for zero-shot head init (FT, CAR-FT, Lipsum-FT) and CAR-FT contexts; "
        "default: the training caption only"
    )
    workers: int = Field(4, ge=0)
    csv: CsvOptions = Field(CsvOptions(), description="options of train_set: csv")
    webdataset: WebDatasetOptions = Field(WebDatasetOptions(), description="options of train_set: webdataset")
    check: Literal["header", "decode", "none"] = Field(
        "header", description="before training, check every train image: header (fast, parallel), full decode, "
        "or none (same as `python -m stages.data check`)"
    )
    skip_corrupt: bool = Field(False, description="drop unreadable training images (counted in the log) instead of "
                               "stopping at the first one")

    def dataset_options(self) -> dict[str, Any]:
        """The options of ``train_set`` for ``stages.data.source.build_dataset`` (empty for other datasets)."""
        options = {"csv": self.csv, "webdataset": self.webdataset}.get(self.train_set)
        return options.model_dump() if options is not None else {}


class SpuriousConfig(Strict):
    """StarFT's spurious captions and the Table 6/7/9 switches."""

    bank: Path = Path("descriptor_banks/official-code.json")
    concept: Concept = "background"
    suffix: Literal["spurious", "random", "none"] = Field(
        "spurious", description="spurious: bank descriptors; random: 3-8 random vocabulary words; none: clean captions"
    )
    mask: bool = Field(True, description="exclude same-class columns from both softmaxes (Eq. 2)")
    decay: Literal["epoch", "step", "none"] = Field(
        "epoch", description="λ_e = λ(1-(e+1)/E) per epoch (official code), per step, or constant"
    )


class OptimConfig(Strict):
    """AdamW with linear warm-up then cosine decay, stepped per optimiser step."""

    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    warmup_steps: int = Field(500, ge=0)
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(512, ge=1)
    accum_steps: int = Field(1, ge=1, description="micro-batches per optimiser step (contrastive negatives stay per micro-batch)")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="cap on optimiser steps per epoch (smoke runs)")
    grad_clip: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _divisible(self) -> OptimConfig:
        if self.batch_size % self.accum_steps:
            raise ValueError(f"batch_size {self.batch_size} must be divisible by accum_steps {self.accum_steps} "
                             "(each optimiser step sums accum_steps equal micro-batches)")
        return self


class MethodOptions(Strict):
    """Coefficients of the baselines, defaults from their papers/code."""

    carft_weight: float = Field(1.0, ge=0)
    carot_distill: float = Field(1.5, ge=0)
    carot_cross_norm: float = Field(0.05, ge=0)
    carot_orthogonality: float = Field(0.2, ge=0)
    carot_ema_every: int = Field(500, ge=1, description="CaRot's ema_up_freq N: the EMA teacher is updated after "
                                 "optimiser steps 1, 1+N, 1+2N, ... (its carot_loss.py)")
    carot_momentum_start: float = Field(0.05, ge=0, le=1)
    carot_momentum_end: float = Field(0.9, ge=0, le=1)
    carot_momentum_warmup: float = Field(0.2, gt=0, le=1, description="fraction of steps over which momentum rises")
    lipsum_weight: float = Field(1.0, ge=0)
    lipsum_texts: int = Field(80, ge=1)
    lipsum_tokens: int = Field(8, ge=1)
    lipsum_weight_decay: float | None = Field(0.0, ge=0, description="AdamW weight decay of Lipsum-FT runs "
                                              "(its code's default 0.0); null: the train set's optim.weight_decay")


class TrainConfig(Strict):
    """One training run: (model, data, method, spurious concept, λ, seed) and how to optimise it."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    method: Method = "starft"
    lam: float = Field(0.5, ge=0, description="λ of the Star term (Eq. 4)")
    spurious: SpuriousConfig = SpuriousConfig()
    optim: OptimConfig = OptimConfig()
    options: MethodOptions = MethodOptions()
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on CPU; fp16: fp16 autocast with a gradient scaler "
        "(GPUs without bf16: V100, T4)"
    )
    device: str = "auto"
    select: Literal["last", "val"] = Field("last", description="final epoch (ImageNet) or best ID-validation epoch")
    checkpoint_every: int = Field(500, ge=1, description="optimiser steps between resumable checkpoints")
    compile: bool = Field(False, description="torch.compile the image and text towers (same maths; minutes of "
                          "compilation, then faster steps on GPU)")
    tracking: list[Tracker] = Field(["tensorboard"], description="live trackers: tensorboard (<run dir>/tb/), "
                                    "wandb (pip install wandb; WANDB_MODE=offline works without an account)")
    grad_checkpointing: bool = Field(False, description="recompute the student's tower activations in the backward "
                                     "(same loss and gradients, far less memory: big contrastive batches on small GPUs)")
    log_every: int = Field(10, ge=1, description="optimiser steps per train_log.jsonl row (loss terms averaged over "
                           "them; read from the device only then)")

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.select == "val" and self.data.val_split is None:
            raise ValueError("select: val needs data.val_split (the ID validation split)")
        if self.method == "starft" and self.spurious.decay == "epoch" and self.optim.epochs == 1:
            warnings.warn(
                "starft with spurious.decay=epoch and optim.epochs=1 has no Star term at all "
                "(λ_0 = λ(1-1/1) = 0); use epochs >= 2 or decay: step", stacklevel=2,
            )
        return self

    def variant(self) -> str:
        """The run-dir slot spelling the Table 6 switches (``-`` for methods without a Star term)."""
        if self.method != "starft":
            return "-"
        mask = "on" if self.spurious.mask else "off"
        return f"suffix-{self.spurious.suffix}_mask-{mask}_decay-{self.spurious.decay}"

    def run_dir(self, results: Path = Path("results")) -> Path:
        """``results/runs/<arch>-<pretrained>/<train_set>/<method>/<variant>/<bank>-<concept>/lam<λ>/seed<s>``."""
        pretrained = Path(self.model.pretrained).stem if "/" in self.model.pretrained else self.model.pretrained
        uses_bank = self.method == "starft" and self.spurious.suffix == "spurious"
        concept = f"{self.spurious.bank.stem}-{self.spurious.concept}" if uses_bank else "-"
        lam = f"lam{self.lam:g}" if self.method == "starft" else "-"
        return (results / "runs" / f"{self.model.name}-{pretrained}" / self.data.train_set / self.method
                / self.variant() / concept / lam / f"seed{self.seed}")


# Settings that change how a run executes, not what it computes (dotted names). A checkpoint or a
# finished run written under other values of these is the same run: it is resumed, and the
# workflow never reruns a job because one of them changed (docs/workflow.md, "When a job reruns").
EXECUTION_FIELDS = ("device", "compile", "checkpoint_every", "tracking", "grad_checkpointing", "log_every",
                    "data.workers", "data.data_root", "data.check")


def without_execution(config: dict[str, Any]) -> dict[str, Any]:
    """A dumped ``TrainConfig`` without its EXECUTION_FIELDS: what fixes the run's results."""
    kept = {key: dict(value) if isinstance(value, dict) else value for key, value in config.items()}
    for dotted in EXECUTION_FIELDS:
        *parents, leaf = dotted.split(".")
        node = kept
        for key in parents:
            node = node.get(key, {})
        node.pop(leaf, None)
    return kept


def load_train_config(path: Path, overrides: dict | None = None) -> TrainConfig:
    """Read a YAML training config (plus nested overrides) and validate it, naming the bad field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"training config {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, found {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"{path}: invalid training config: {validation_message(error)}") from error


# --------------------------------------------------------------------------------------------
# Workflow level: the grid snakemake expands (config/config.yaml, config/paper.yaml)
# --------------------------------------------------------------------------------------------

Metric = Literal["top1", "worst_group", "mean_group", "adjusted_mean", "macro_f1", "worst_region", "minority_mean",
                 "shortcut_rate"]
RowSlot = Literal["arch", "train_set", "method", "variant", "bank", "concept", "lam", "ensemble"]
NonNegative = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class TrainSetSpec(Strict):
    """Per-dataset hyper-parameters (Appendix B / Table 13) of fine-tuning on one registered dataset."""

    train_split: str = "train"
    val_split: str | None = Field(None, description="ID validation split (needed by select: val)")
    select: Literal["last", "val"] = "last"
    caption_template: str = "a photo of a {c}."
    head_templates: list[str] | None = None
    lam: float = Field(0.1, ge=0, description="StarFT's λ for this dataset unless a table sweeps λ")
    optim: OptimConfig = OptimConfig()
    csv: CsvOptions = Field(CsvOptions(), description="options of the csv dataset")
    webdataset: WebDatasetOptions = Field(WebDatasetOptions(), description="options of the webdataset dataset")


class BankSpec(Strict):
    """A descriptor bank: its file and the label reports print for it (e.g. ``GPT-3.5``)."""

    path: Path
    label: str | None = None


class VariantSpec(Strict):
    """The Table 6 switches of a StarFT run (see ``SpuriousConfig``)."""

    suffix: Literal["spurious", "random", "none"] = "spurious"
    mask: bool = True
    decay: Literal["epoch", "step", "none"] = "epoch"


class ColumnSpec(Strict):
    """One table column: a metric of one benchmark's metrics JSON (the label matches the paper CSV header)."""

    label: str
    benchmark: str
    metric: Metric = "top1"
    train_set: str | None = Field(None, description="only runs fine-tuned on this train set fill the column")


class TableSpec(Strict):
    """One report table: the runs it needs (a grid over the lists below) and its columns.

    Unset lists fall back to the workflow's defaults (the first arch, every seed, the first bank,
    each train set's λ). StarFT-only slots (variants, banks, concepts, lams) leave other methods
    unchanged; ``zeroshot`` is evaluated, never trained.
    """

    title: str
    rows: list[RowSlot] = Field(["method"], min_length=1, description="slots whose values label a row")
    archs: list[str] | None = None
    train_sets: list[str] = Field(["imagenet"], min_length=1)
    methods: list[Method] = Field(min_length=1)
    variants: list[VariantSpec] = Field([VariantSpec()], min_length=1)
    banks: list[str] | None = None
    concepts: list[Concept] = Field(["background"], min_length=1)
    lams: list[NonNegative] | None = None
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
        for name, parts in self.averages.items():
            unknown = sorted(set(parts) - set(labels))
            if unknown or not parts:
                raise ValueError(f"averages.{name}: {unknown or 'no'} columns; columns are {labels}")
        if self.rank is not None and self.rank in [*labels, *self.averages]:
            raise ValueError(f"rank: {self.rank!r} is already a column label")
        if self.alphas and (self.id_column not in labels or "ensemble" not in self.rows):
            raise ValueError(f"alphas need 'ensemble' in rows and id_column set to one of the columns {labels}")
        return self


FigureName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]


class GroupFigureSpec(Strict):
    """Figure 2: per subgroup, each method's top-1 minus zero-shot's (one panel per benchmark).

    Bars are the table's rows (zero-shot and WiSE-FT rows aside), mean ± std over seeds of the
    per-seed difference to the zero-shot run of the same arch and train set.
    """

    kind: Literal["groups"]
    title: str
    table: int = Field(description="the table whose runs (archs, train sets, methods, seeds) the figure reads")
    benchmarks: list[str] = Field(min_length=1, description="group-shift benchmarks among the table's columns")
    methods: list[Method] | None = Field(None, description="methods drawn (default: the table's, zero-shot aside)")


class TradeoffFigureSpec(Strict):
    """ID vs OOD as a knob varies: StarFT's λ (``lambda``, Table 10) or WiSE-FT's α (``alpha``, Table 8).

    One point per λ (StarFT rows) or per α (each method's ensembled row), mean ± std over seeds
    on both axes.
    """

    kind: Literal["lambda", "alpha"]
    title: str
    table: int = Field(description="the table whose runs and columns the figure reads (lams or alphas)")
    x: str = Field(description="column or average label on the x axis (e.g. the ID column)")
    y: str = Field(description="column or average label on the y axis (e.g. an OOD or group metric)")
    methods: list[Method] | None = Field(None, description="methods drawn (default: the table's, zero-shot aside)")


class LossFigureSpec(Strict):
    """Training curves: a train_log.jsonl field over optimiser steps, one curve per method, mean ± std over seeds."""

    kind: Literal["loss"]
    title: str
    table: int = Field(description="the table whose trained runs the figure reads (their train_log.jsonl)")
    field: str = Field("loss", description="the train_log.jsonl key drawn (loss, loss_clip, loss_star, lr, ...)")
    methods: list[Method] | None = Field(None, description="methods drawn (default: the table's, zero-shot aside)")


class GradcamFigureSpec(Strict):
    """Grad-CAM of the predicted class (the paper's Figure 3): one row per image, the image then one map per method.

    Each method's run is the first of the table's grid for that method (its first arch, train set,
    variant, bank, concept and λ) at `seed`; zero-shot is the pretrained model. A map is that of
    the class the run predicts, through the head its evaluation scores the benchmark with.
    """

    kind: Literal["gradcam"]
    title: str
    table: int = Field(description="the table whose runs the figure draws")
    benchmark: str = Field(description="the benchmark whose images are drawn (read from data_root)")
    methods: list[Method] = Field(["zeroshot", "flyp", "starft"], min_length=1,
                                  description="one column per method, in this order")
    images: int = Field(4, ge=1, le=64, description="rows: this many images, evenly spaced over the benchmark's "
                        "images (over each of `groups` in turn when given)")
    groups: list[str] | None = Field(None, description="draw only images of these groups of a group-shift "
                                     "benchmark (e.g. its minority groups)")
    indices: list[Annotated[int, Field(ge=0)]] | None = Field(None, description="exact image indices "
                                                              "(instead of `images` and `groups`)")
    seed: int | None = Field(None, description="seed of the drawn runs (default: the table's first seed)")


FigureSpec = Annotated[GroupFigureSpec | TradeoffFigureSpec | LossFigureSpec | GradcamFigureSpec,
                      Field(discriminator="kind")]


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


class ResourcesSpec(Strict):
    """Per-rule resources and the retry count of the GPU rules."""

    train: RuleResources = RuleResources(gpu=1, mem_mb=64000, runtime=1440, threads=8)
    evaluate: RuleResources = RuleResources(gpu=1, mem_mb=32000, runtime=120, threads=8)
    retries: int = Field(1, ge=0)


class DemoSettings(Strict):
    """The embedded demo's own pipeline files (workflow/rules/demo.smk): data under data_root, weights."""

    seed: int = 0
    correlation: float = Field(0.95, ge=0, le=1, description="P(class c on its own background) in the biased splits")
    sizes: dict[str, int] = Field({}, description="split -> number of images (stages.demo.data defaults otherwise)")
    weights: Path = Field(Path("results/demo/TinyCLIP-demo.pt"), description="the pretrained zero-shot model")
    model: str = "TinyCLIP-demo"
    pretrain_steps: int = Field(800, ge=1)
    pretrain_batch_size: int = Field(256, ge=2)
    pretrain_lr: float = Field(1e-3, gt=0)


class WorkflowConfig(Strict):
    """The whole workflow: what to train, evaluate and tabulate (``config/*.yaml``)."""

    results: Path = Field(Path("results"), description="output root (run dirs under results/runs)")
    data_root: Path = Field(Path("data"), description="parent folder of every dataset (checked before any job)")
    archs: dict[str, str] = Field(min_length=1, description="open_clip name -> pretrained tag (first = default)")
    model: ModelConfig | None = Field(None, description="one model that replaces archs in every table, e.g. "
                                      "--config 'model={name: TinyCLIP-test, pretrained: none}'")
    seeds: list[int] = Field([0], min_length=1)
    banks: dict[str, BankSpec] = Field(min_length=1, description="bank name -> file (first = default)")
    train_sets: dict[str, TrainSetSpec] = Field(min_length=1)
    options: MethodOptions = MethodOptions()
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = "auto"
    workers: int = Field(4, ge=0, description="data-loader workers of training and evaluation")
    checkpoint_every: int = Field(500, ge=1)
    compile: bool = Field(False, description="torch.compile the towers of every training run (GPU: faster steps "
                          "after minutes of compilation)")
    tracking: list[Tracker] = Field(["tensorboard"], description="live trackers of every training run "
                                    "(tensorboard, wandb)")
    grad_checkpointing: bool = Field(False, description="gradient checkpointing in every training run's student "
                                     "(same results, less GPU memory, ~30% more compute)")
    eval_batch_size: int = Field(256, ge=1)
    eval_image_cache: Path | None = Field(None, description="folder of decoded evaluation crops shared by all "
                                          "evaluation jobs (~150 kB per image at 224 px; same results, no re-decoding)")
    tables: dict[int, TableSpec] = Field(min_length=1, description="report number -> table")
    resources: ResourcesSpec = ResourcesSpec()
    descriptors: DescriptorsSettings | None = None
    demo: DemoSettings | None = Field(None, description="build the demo's data and zero-shot weights in the workflow")
    figures: dict[FigureName, FigureSpec] = Field({}, description="name -> figure (results/figure_<name>.png)")

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
        stems: dict[str, str] = {}
        for name, bank in self.banks.items():
            if stems.setdefault(bank.path.stem, name) != name:
                raise ValueError(f"banks.{name} and banks.{stems[bank.path.stem]} share the file stem "
                                 f"{bank.path.stem!r}, which names the run-dir slot; rename one file")
        for name, figure in self.figures.items():
            self._check_figure(f"figures.{name}", figure)
        return self

    def _check_figure(self, key: str, figure: FigureSpec) -> None:
        """A figure's table exists and has what the figure plots (benchmarks, labels, λ or α sweep, runs)."""
        if figure.table not in self.tables:
            raise ValueError(f"{key}.table: no table {figure.table}; tables: {sorted(self.tables)}")
        table = self.tables[figure.table]
        unknown = sorted(set(figure.methods or ()) - set(table.methods))
        if unknown:
            raise ValueError(f"{key}.methods: {unknown} are not in tables.{figure.table}.methods {table.methods}")
        if isinstance(figure, LossFigureSpec):
            return
        if isinstance(figure, GradcamFigureSpec):
            seeds = table.seeds or self.seeds
            if figure.seed is not None and figure.seed not in seeds:
                raise ValueError(f"{key}.seed: {figure.seed} is not a seed of tables.{figure.table} ({seeds})")
            return
        if isinstance(figure, GroupFigureSpec):
            benchmarks = {column.benchmark for column in table.columns}
            unknown = sorted(set(figure.benchmarks) - benchmarks)
            if unknown:
                raise ValueError(f"{key}.benchmarks: {unknown} are not benchmarks of tables.{figure.table}.columns "
                                 f"({sorted(benchmarks)})")
            if "zeroshot" not in table.methods:
                raise ValueError(f"{key}: tables.{figure.table}.methods needs zeroshot (the reference of the bars)")
            return
        labels = [column.label for column in table.columns] + list(table.averages)
        for axis in ("x", "y"):
            if getattr(figure, axis) not in labels:
                raise ValueError(f"{key}.{axis}: {getattr(figure, axis)!r} is not a column of tables.{figure.table}; "
                                 f"its columns and averages: {labels}")
        if figure.kind == "lambda" and not (table.lams and "starft" in table.methods):
            raise ValueError(f"{key}: kind lambda needs tables.{figure.table}.lams and starft in its methods")
        if figure.kind == "alpha" and not table.alphas:
            raise ValueError(f"{key}: kind alpha needs tables.{figure.table}.alphas (a WiSE-FT α grid)")

    def planned_archs(self) -> dict[str, str]:
        """The archs (name -> pretrained) that the tables' runs use, in first-use order (what a dry run trains)."""
        planned: dict[str, str] = {}
        for table in self.tables.values():
            for arch in table.archs or [next(iter(self.archs))]:
                planned.setdefault(arch, self.archs[arch])
        return planned

    def table_runs(self, number: int) -> list[TrainConfig]:
        """The runs table `number` needs, one per (arch, train set, method, variant, bank, concept, λ, seed).

        Zero-shot "runs" are evaluated, never trained: one per (arch, train set), seed 0.
        """
        table = self.tables[number]
        runs: dict[Path, TrainConfig] = {}
        for arch in table.archs or [next(iter(self.archs))]:
            for train_set in table.train_sets:
                spec = self.train_sets[train_set]
                for method in table.methods:
                    for seed in [0] if method == "zeroshot" else table.seeds or self.seeds:
                        for variant, bank, concept, lam in self._star_slots(table, spec, method):
                            config = self.train_config(arch, train_set, method, seed, variant, bank, concept, lam)
                            runs.setdefault(config.run_dir(self.results), config)
        return list(runs.values())

    def _star_slots(self, table: TableSpec, spec: TrainSetSpec,
                    method: str) -> list[tuple[VariantSpec, str, str, float]]:
        """(variant, bank, concept, λ) combinations: the table's grid for StarFT, the defaults otherwise."""
        default_bank = next(iter(self.banks))
        if method != "starft":
            return [(VariantSpec(), default_bank, "background", spec.lam)]
        return [(variant, bank, concept, lam)
                for variant in table.variants for bank in table.banks or [default_bank]
                for concept in table.concepts for lam in table.lams or [spec.lam]]

    def train_config(self, arch: str, train_set: str, method: str, seed: int, variant: VariantSpec,
                     bank: str, concept: str, lam: float) -> TrainConfig:
        """The ``TrainConfig`` of one grid point (per-dataset hyper-parameters from ``train_sets``)."""
        spec = self.train_sets[train_set]
        return TrainConfig(
            model=ModelConfig(name=arch, pretrained=self.archs[arch]),
            data=DataConfig(train_set=train_set, data_root=self.data_root, train_split=spec.train_split,
                            val_split=spec.val_split, caption_template=spec.caption_template,
                            head_templates=spec.head_templates, workers=self.workers, csv=spec.csv,
                            webdataset=spec.webdataset),
            method=method, lam=lam, seed=seed,
            spurious=SpuriousConfig(bank=self.banks[bank].path, concept=concept, **variant.model_dump()),
            optim=spec.optim, options=self.options, precision=self.precision, device=self.device,
            select=spec.select, checkpoint_every=self.checkpoint_every, compile=self.compile,
            tracking=self.tracking,
            grad_checkpointing=self.grad_checkpointing,
        )


def validation_message(error: ValidationError) -> str:
    """One line per problem, each naming the config key (dotted path) and pydantic's reason."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in error.errors())


def validate_workflow_config(raw: dict[str, Any], source: str = "config") -> WorkflowConfig:
    """Validate a workflow config mapping (snakemake's ``config``), naming the bad key on failure."""
    try:
        return WorkflowConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"{source}: invalid workflow config: {validation_message(error)}") from error


def workflow_schema() -> dict[str, Any]:
    """JSON schema (draft 2020-12) of ``WorkflowConfig``: workflow/schemas/config.schema.json is this."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **WorkflowConfig.model_json_schema()}
