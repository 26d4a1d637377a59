"""Pydantic models for everything a training run needs (one source of truth for the CLI and the workflow).

Every model forbids unknown keys, so a typo in a YAML file is an error that names the field,
not a silently ignored setting.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

METHODS = ("zeroshot", "ft", "flyp", "carft", "carot", "lipsumft", "starft")
CONCEPTS = ("background", "texture", "resolution", "all")


class ConfigError(ValueError):
    """A configuration file or value that cannot be used; the message names the field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(Strict):
    """The open_clip model: ``(name, pretrained)``; pretrained is a tag, a local file, or ``none``."""

    name: str = "ViT-B-16"
    pretrained: str = "openai"


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


class SpuriousConfig(Strict):
    """StarFT's spurious captions and the Table 6/7/9 switches."""

    bank: Path = Path("descriptor_banks/official-code.json")
    concept: Literal["background", "texture", "resolution", "all"] = "background"
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


class MethodOptions(Strict):
    """Coefficients of the baselines, defaults from their papers/code."""

    carft_weight: float = Field(1.0, ge=0)
    carot_distill: float = Field(1.5, ge=0)
    carot_cross_norm: float = Field(0.05, ge=0)
    carot_orthogonality: float = Field(0.2, ge=0)
    carot_ema_every: int = Field(500, ge=1)
    carot_momentum_start: float = Field(0.05, ge=0, le=1)
    carot_momentum_end: float = Field(0.9, ge=0, le=1)
    carot_momentum_warmup: float = Field(0.2, gt=0, le=1, description="fraction of steps over which momentum rises")
    lipsum_weight: float = Field(1.0, ge=0)
    lipsum_texts: int = Field(80, ge=1)
    lipsum_tokens: int = Field(8, ge=1)


class TrainConfig(Strict):
    """One training run: (model, data, method, spurious concept, λ, seed) and how to optimise it."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    method: Literal["zeroshot", "ft", "flyp", "carft", "carot", "lipsumft", "starft"] = "starft"
    lam: float = Field(0.5, ge=0, description="λ of the Star term (Eq. 4)")
    spurious: SpuriousConfig = SpuriousConfig()
    optim: OptimConfig = OptimConfig()
    options: MethodOptions = MethodOptions()
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on CUDA, fp32 on CPU")
    device: str = "auto"
    select: Literal["last", "val"] = Field("last", description="final epoch (ImageNet) or best ID-validation epoch")
    checkpoint_every: int = Field(500, ge=1, description="optimiser steps between resumable checkpoints")

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
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in error.errors())
        raise ConfigError(f"{path}: invalid training config: {problems}") from error
