"""Pydantic models for everything a training run needs (one source of truth for the CLI and the workflow).

Schema only: a run's directory is stages/rundir.py's, the workflow's grid expansion stages/plan.py's.
Every model forbids unknown keys, so a typo in a YAML file is an error that names the field, not a
silently ignored setting. Method names, their options blocks and their checks come from the method
registry (stages/methods): a new method needs no change here.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, get_args

from pydantic import AfterValidator, Field, ValidationError, WithJsonSchema, model_validator

from stages.errors import ConfigError, read_yaml, validation_summary
from stages.methods import method_spec, option_models
from stages.strict import Strict

Concept = Literal["background", "texture", "resolution", "all"]
Tracker = Literal["tensorboard", "wandb"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Suffix = Literal["spurious", "random", "none"]
Decay = Literal["epoch", "step", "none"]
Select = Literal["last", "val"]
ImageCheck = Literal["header", "decode", "none"]
SaveDtype = Literal["fp32", "bf16"]
Accumulation = Literal["auto", "exact", "independent"]


def _registered(name: str) -> str:
    method_spec(name)  # a ValueError listing the registered methods
    return name


# The JSON schema (workflow/schemas/config.schema.json) names no method, so that a new method module
# changes no other file; pydantic checks the name and the options blocks against the registry.
MethodName = Annotated[str, AfterValidator(_registered),
                       WithJsonSchema({"type": "string", "description": "a registered method (stages/methods/)"})]
"""A registered method's name (stages/methods)."""


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


class DataSettings(Strict):
    """What a train set's data is: splits, captions, format options (per train set in a workflow config)."""

    train_split: str = "train"
    val_split: str | None = Field(None, description="ID validation split for best-checkpoint selection")
    caption_template: str = Field("a photo of a {c}.", description="training caption; '{c}' is the class name")
    head_templates: list[str] | None = Field(
        None, description="templates for zero-shot head init (FT, CAR-FT, Lipsum-FT) and CAR-FT contexts; "
        "default: the training caption only"
    )
    csv: CsvOptions = Field(CsvOptions(), description="options of train_set: csv")
    webdataset: WebDatasetOptions = Field(WebDatasetOptions(), description="options of train_set: webdataset")
    check: ImageCheck = Field(
        "header", description="before training, check every train image: header (fast, parallel), full decode, "
        "or none (same as `python -m stages.data check`)"
    )
    skip_corrupt: bool = Field(False, description="drop unreadable training images (counted in the log) instead of "
                               "stopping at the first one")


class DataConfig(DataSettings):
    """Training data: a registered dataset under ``data_root`` and the caption it is trained with."""

    train_set: str = "imagenet"
    data_root: Path | None = None
    workers: int = Field(4, ge=0)

    def dataset_options(self) -> dict[str, Any]:
        """The options of ``train_set`` for ``stages.data.source.build_dataset`` (empty for other datasets)."""
        options = {"csv": self.csv, "webdataset": self.webdataset}.get(self.train_set)
        return options.model_dump() if options is not None else {}


class VariantSpec(Strict):
    """The Table 6 switches of the spurious captions (a run-dir slot of the methods that use them)."""

    suffix: Suffix = Field(
        "spurious", description="spurious: bank descriptors; random: 3-8 random vocabulary words; none: clean captions"
    )
    mask: bool = Field(True, description="exclude same-class columns from both softmaxes (Eq. 2)")
    decay: Decay = Field(
        "epoch", description="λ_e = λ(1-(e+1)/E) per epoch (official code), per step, or constant"
    )


class SpuriousConfig(VariantSpec):
    """The spurious captions of the methods that use them (StarFT): bank, concept and the Table 6/7/9 switches."""

    bank: Path = Path("descriptor_banks/official-code.json")
    concept: Concept = "background"


class OptimConfig(Strict):
    """AdamW with linear warm-up then cosine decay, stepped per optimiser step."""

    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    warmup_steps: int = Field(500, ge=0)
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(512, ge=1)
    accum_steps: int = Field(1, ge=1, description="micro-batches per optimiser step (how their losses combine: accum)")
    accum: Accumulation = Field(
        "auto", description="with accum_steps > 1: exact = gradient caching (Gao et al. 2021): every micro-batch is "
        "embedded without graph, the whole batch's loss is computed on the cached embeddings, then each micro-batch "
        "is re-embedded with graph and backpropagates its slice of the embedding gradient: the loss and gradients "
        "of one batch_size step (contrastive negatives over the whole batch, every rank), for one extra student "
        "forward per micro-batch (about +30-50 % compute) and the memory of one micro-batch plus the batch's "
        "embeddings; independent = each micro-batch's own loss, averaged (negatives stay within a micro-batch: "
        "another loss for coupled methods, no extra compute); auto = exact for methods whose loss couples the "
        "samples of a batch (flyp, carot, starft, lipsumft's shared random texts), independent for per-sample "
        "losses (ft, carft), where both are the same step. Ignored (and not part of a run's identity) when "
        "accum_steps is 1")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="cap on optimiser steps per epoch (smoke runs)")
    grad_clip: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _divisible(self) -> OptimConfig:
        if self.batch_size % self.accum_steps:
            raise ValueError(f"batch_size {self.batch_size} must be divisible by accum_steps {self.accum_steps} "
                             "(each optimiser step sums accum_steps equal micro-batches)")
        return self


def _method_options(blocks: dict[str, Any]) -> dict[str, Strict]:
    """Every method's options block, validated by its options model (defaults where absent)."""
    models = option_models()
    unknown = sorted(set(blocks) - set(models))
    if unknown:
        raise ValueError(f"{unknown}: not methods with options; those are {sorted(models)}")
    validated = {}
    for name, model in models.items():
        try:
            validated[name] = model.model_validate(blocks.get(name) or {})
        except ValidationError as error:  # name the block: options.<method>.<key>
            raise ValueError("; ".join(f"{name}.{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                       for e in error.errors())) from None
    return validated


# ``options.<method>``: each block is validated by that method's options model when a config is
# (the registry is read then, not when this module is imported: every CLI's --help stays torch-free).
MethodOptions = Annotated[
    dict[str, Any],
    AfterValidator(_method_options),
    WithJsonSchema({"type": "object", "description": "options.<method>: that method's coefficients (its options "
                    "model in stages/methods/<method>.py)"}),
]


class RunSettings(Strict):
    """How runs compute and execute, set alike for one run (TrainConfig) and for a workflow's whole grid."""

    precision: Precision = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on CPU; fp16: fp16 autocast with a gradient scaler "
        "(GPUs without bf16: V100, T4)"
    )
    device: str = "auto"
    checkpoint_every: int = Field(500, ge=1, description="optimiser steps between resumable checkpoints")
    checkpoint_minutes: float | None = Field(
        30.0, gt=0, description="minutes of training between resumable checkpoints as well (a node lost without a "
        "signal loses at most this much); null: steps only")
    keep_checkpoints: bool = Field(False, description="keep ckpt/ (the resumable state, 3x the weights with AdamW's "
                                   "moments) once best.pt is written; off: a finished run keeps best.pt only")
    max_nonfinite_steps: int = Field(
        10, ge=1, description="consecutive steps with a non-finite loss or gradient norm (each skipped, not applied) "
        "after which the run stops with the step and the terms that went non-finite")
    lock_wait_s: float = Field(0.0, ge=0, description="seconds a second trainer of the same run directory waits for "
                               "the first to finish before it exits naming the holder")
    save_dtype: SaveDtype = Field("fp32", description="dtype of best.pt's weights (bf16: half the disk; evaluation and "
                                  "export upcast to fp32)")
    compile: bool = Field(False, description="torch.compile the image and text towers (same maths; minutes of "
                          "compilation, then faster steps on GPU)")
    tracking: list[Tracker] = Field(["tensorboard"], description="live trackers: tensorboard (<run dir>/tb/), "
                                    "wandb (pip install wandb; WANDB_MODE=offline works without an account)")
    grad_checkpointing: bool = Field(False, description="recompute the student's tower activations in the backward "
                                     "(same loss and gradients, far less memory: big contrastive batches on small GPUs)")
    log_every: int = Field(10, ge=1, description="optimiser steps per train_log.jsonl row (loss terms averaged over "
                           "them; read from the device only then)")


class TrainConfig(RunSettings):
    """One training run: (model, data, method, spurious concept, λ, seed) and how to optimise it."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    method: MethodName = "starft"
    lam: float = Field(0.5, ge=0, description="λ of the Star term (Eq. 4), for a method that uses λ")
    spurious: SpuriousConfig = SpuriousConfig()
    optim: OptimConfig = OptimConfig()
    options: MethodOptions = Field(default_factory=dict, validate_default=True)
    seed: int = 0
    select: Select = Field("last", description="final epoch (ImageNet) or best ID-validation epoch")

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.select == "val" and self.data.val_split is None:
            raise ValueError("select: val needs data.val_split (the ID validation split)")
        check = method_spec(self.method).check
        for message in check(self) if check is not None else ():
            warnings.warn(message, stacklevel=2)
        return self


# Settings that change how a run executes, not what it computes (dotted names). A checkpoint or a
# finished run written under other values of these is the same run: it is resumed, and the
# workflow never reruns a job because one of them changed (docs/workflow.md, "When a job reruns").
EXECUTION_FIELDS = ("device", "compile", "checkpoint_every", "checkpoint_minutes", "keep_checkpoints",
                    "max_nonfinite_steps", "lock_wait_s", "tracking", "grad_checkpointing", "log_every",
                    "data.workers", "data.data_root", "data.check")


def without_execution(config: dict[str, Any]) -> dict[str, Any]:
    """A dumped ``TrainConfig`` without its EXECUTION_FIELDS and other methods' options: what fixes its results."""
    kept = {key: dict(value) if isinstance(value, dict) else value for key, value in config.items()}
    options = {name: value for name, value in kept.get("options", {}).items() if name == kept.get("method")}
    if options:
        kept["options"] = options
    else:
        kept.pop("options", None)
    for dotted in EXECUTION_FIELDS:
        *parents, leaf = dotted.split(".")
        node = kept
        for key in parents:
            node = node.get(key, {})
        node.pop(leaf, None)
    optim = kept.get("optim")
    if isinstance(optim, dict) and optim.get("accum_steps", 1) == 1:  # one micro-batch: both modes are one step
        kept["optim"] = {key: value for key, value in optim.items() if key != "accum"}
    return kept


def load_train_config(path: Path, overrides: dict | None = None) -> TrainConfig:
    """Read a YAML training config (plus nested overrides) and validate it, naming the bad field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"training config {path} does not exist")
    raw = read_yaml(path, "training config") or {}
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
RowSlot = Literal["arch", "train_set", "method", "variant", "bank", "concept", "lam", "ensemble"]
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
    captions, lams to those that use λ (their specs); a method that does not train is evaluated once.
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
    methods: list[MethodName] | None = Field(None, description="methods drawn (default: the table's, zero-shot aside)")


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
    methods: list[MethodName] | None = Field(None, description="methods drawn (default: the table's, zero-shot aside)")


class LossFigureSpec(Strict):
    """Training curves: a train_log.jsonl field over optimiser steps, one curve per method, mean ± std over seeds."""

    kind: Literal["loss"]
    title: str
    table: int = Field(description="the table whose trained runs the figure reads (their train_log.jsonl)")
    field: str = Field("loss", description="the train_log.jsonl key drawn (loss, loss_clip, loss_star, lr, ...)")
    methods: list[MethodName] | None = Field(None, description="methods drawn (default: the table's, zero-shot aside)")


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
    methods: list[MethodName] = Field(["zeroshot", "flyp", "starft"], min_length=1,
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
            if all(method_spec(method).trains for method in table.methods):
                raise ValueError(f"{key}: tables.{figure.table}.methods needs a method that does not train, "
                                 "such as zeroshot (the reference of the bars)")
            return
        labels = [column.label for column in table.columns] + list(table.averages)
        for axis in ("x", "y"):
            if getattr(figure, axis) not in labels:
                raise ValueError(f"{key}.{axis}: {getattr(figure, axis)!r} is not a column of tables.{figure.table}; "
                                 f"its columns and averages: {labels}")
        if figure.kind == "lambda" and not (table.lams and any(method_spec(m).uses_lambda for m in table.methods)):
            raise ValueError(f"{key}: kind lambda needs tables.{figure.table}.lams and a method that uses λ "
                             "(starft) in its methods")
        if figure.kind == "alpha" and not table.alphas:
            raise ValueError(f"{key}: kind alpha needs tables.{figure.table}.alphas (a WiSE-FT α grid)")


def validation_message(error: ValidationError) -> str:
    """One line per problem, each naming the config key (dotted path) and pydantic's reason."""
    return validation_summary(error)


def validate_workflow_config(raw: dict[str, Any], source: str = "config") -> WorkflowConfig:
    """Validate a workflow config mapping (snakemake's ``config``), naming the bad key on failure."""
    try:
        return WorkflowConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"{source}: invalid workflow config: {validation_message(error)}") from error


def workflow_schema() -> dict[str, Any]:
    """JSON schema (draft 2020-12) of ``WorkflowConfig``: workflow/schemas/config.schema.json is this."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **WorkflowConfig.model_json_schema()}
