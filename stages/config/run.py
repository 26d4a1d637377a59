"""The run schema: pydantic models of everything one training run needs (``TrainConfig`` and its parts).

Schema only: a run's directory is stages/rundir.py's, the workflow's grid expansion stages/plan.py's.
Every model forbids unknown keys, so a typo in a YAML file is an error that names the field, not a
silently ignored setting. Method names, their options blocks and their checks come from the method
registry (stages/methods), read when a config is validated, not when this module is imported: a new
method needs no change here, and importing the schema does not import torch.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

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
    return {name: _options_block(name, blocks.get(name) or {}) for name in models}


def _options_block(method: str, block: dict[str, Any], where: str = "") -> Strict:
    """`method`'s options block validated by its options model; a bad key is a ValueError naming
    ``<where><method>.<key>`` (the caller's prefix: ``tables.<N>.options[i].`` for a table's sweep)."""
    try:
        return option_models()[method].model_validate(block)
    except ValidationError as error:
        raise ValueError("; ".join(f"{where}{method}.{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                   for e in error.errors())) from None


def override_options(options: dict[str, Strict], method: str, overrides: dict[str, Any],
                     where: str = "") -> dict[str, Strict]:
    """`options` (validated blocks, `MethodOptions`) with `method`'s block updated by `overrides` and validated
    again (a table's ``options`` sweep on top of the workflow's block); errors name ``<where><method>.<key>``."""
    if method not in options:
        raise ValueError(f"{where}{method}: not a method with options; those are {sorted(options)}")
    return {**options, method: _options_block(method, {**options[method].model_dump(), **overrides}, where)}


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
    # Not dumped: train.yaml and run.json are what the run computes, and this names its directory only
    # (a run without swept options keeps the text and the run dir it had before sweeps existed).
    swept_options: list[str] = Field(
        [], exclude=True, description="keys of options.<method> spelled in the run dir's variant slot "
        "(stages.rundir.run_slots): the workflow sets those a table's options sweep moves off the workflow's block, "
        "so each swept value trains in its own run dir")

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.select == "val" and self.data.val_split is None:
            raise ValueError("select: val needs data.val_split (the ID validation split)")
        known = type(self.options[self.method]).model_fields if self.method in self.options else {}
        unknown = sorted(set(self.swept_options) - set(known))
        if unknown:
            raise ValueError(f"swept_options: {unknown} are not options of {self.method} ({sorted(known) or 'none'})")
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


def validation_message(error: ValidationError) -> str:
    """One line per problem, each naming the config key (dotted path) and pydantic's reason."""
    return validation_summary(error)
