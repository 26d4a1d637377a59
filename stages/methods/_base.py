"""The base of every method: the student, its class captions, and the hooks the training loop calls.

A method computes named, already weighted loss terms of one micro-batch (`training_step`); the loop
sums them, backpropagates and logs each one. The maths of every term lives in
stages/losses.py.

The step is three parts, so that the loop can accumulate micro-batches exactly (gradient caching,
stages/training/gradcache.py): `prepare` (what needs no gradient: per-sample draws, the frozen
teacher's features, labels), `embed` (the student's per-sample features, the only part with a
graph through the towers) and `batch_loss` (the named terms on the features of the whole batch,
gathered over the ranks; parameters used here directly, such as the learnable logit scale or a
head, get their gradients from this part). ``training_step`` is their composition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stages.models.classifier import build_zeroshot_weights
from stages.models.text import encode_text_trimmed, trim_tokens
from stages.methods._spec import MethodSpec
from stages.collectives import gather_batch
from stages.strict import Strict

if TYPE_CHECKING:
    from stages.config import SpuriousConfig, TrainConfig
    from stages.models.factory import ClipBundle


@dataclass(frozen=True)
class Progress:
    """Where training stands when a step starts: `step` optimiser steps taken so far, in `epoch` (0-based)."""

    step: int
    epoch: int
    total_steps: int
    epochs: int


@dataclass(frozen=True)
class MethodSettings:
    """The settings of a run that a method reads, and nothing else of its ``TrainConfig``.

    A method sees only these, so what a method depends on is listed here, and a config field a
    method does not read can change without touching any method. Built by `MethodContext.from_config`.

    - ``caption_template``: ``data.caption_template``, the class caption of the contrastive terms and
      of the ID-validation head (``{c}`` = the class name).
    - ``head_templates``: ``data.head_templates``, the contexts of the head methods' zero-shot
      initialisation and of CAR-FT's context distributions (None: not set).
    - ``weight_decay``: ``optim.weight_decay``, AdamW's decay unless the method overrides it.
    - ``lam``: the top-level ``lam`` (λ), for a method whose spec ``uses_lambda``.
    - ``spurious``: the ``spurious`` settings (suffix, bank, concept, mask, decay), for a method whose
      spec ``uses_spurious``.
    - ``options``: this method's ``options.<name>`` block, validated by its options model (None for a
      method without options).
    """

    caption_template: str
    head_templates: tuple[str, ...] | None
    weight_decay: float
    lam: float
    spurious: SpuriousConfig
    options: Strict | None


@dataclass(frozen=True)
class MethodContext:
    """Everything a method needs to set itself up: the student, the class names, its settings, the run's length."""

    bundle: ClipBundle
    classnames: list[str]
    settings: MethodSettings
    total_steps: int

    @classmethod
    def from_config(cls, bundle: ClipBundle, classnames: list[str], config: TrainConfig, total_steps: int,
                    method: str | None = None) -> MethodContext:
        """The context of the method registered as `method` (default ``config.method``) in a run of `config`.

        The one place that reads a ``TrainConfig`` for a method. `method` names whose options block
        the method gets: the benchmark builds several methods from one config.
        """
        name = config.method if method is None else method
        data = config.data
        settings = MethodSettings(
            caption_template=data.caption_template,
            head_templates=None if data.head_templates is None else tuple(data.head_templates),
            weight_decay=config.optim.weight_decay, lam=config.lam, spurious=config.spurious,
            options=config.options.get(name),
        )
        return cls(bundle, classnames, settings, total_steps)


@dataclass
class Prepared:
    """What `Method.prepare` computed for one micro-batch without gradient.

    ``inputs``: what the student's forward (`Method.embed`) reads (images, tokens, a trimmed length);
    ``fixed``: per-sample tensors (dim 0 = the micro-batch's samples) the loss reads without gradient
    (labels, teacher features), gathered over the ranks and concatenated over micro-batches like the
    features.
    """

    inputs: dict[str, Any]
    fixed: dict[str, Tensor]


def unit(features: Tensor) -> Tensor:
    """L2-normalised features (the last dimension)."""
    return F.normalize(features, dim=-1)


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's (first) parameter."""
    return next(module.parameters()).device


class Method(nn.Module):
    """Holds the student and the tokenised class captions; subclasses add their terms and teachers."""

    spec: ClassVar[MethodSpec]  # set by register_method
    # Whether the loss sees the global batch (features gathered over the ranks): contrastive methods.
    # Head methods' terms are per sample: each rank's loss is its own shard's, DDP averages.
    gathers: ClassVar[bool] = True

    def __init__(self, context: MethodContext) -> None:
        super().__init__()
        self.student = context.bundle.model
        self.tokenizer = context.bundle.tokenizer
        self.classnames = list(context.classnames)
        self.settings = context.settings
        expected = self.spec.options
        if not (self.settings.options is None if expected is None else isinstance(self.settings.options, expected)):
            # A context built for another method (its options block, or none) would run with the wrong coefficients.
            raise ValueError(f"{self.spec.name}: the context's options are {type(self.settings.options).__name__}, "
                             f"not {'None' if expected is None else expected.__name__}; build the context with "
                             f"MethodContext.from_config(..., method={self.spec.name!r})")
        # This method's `options.<name>` block (None for a method without options).
        self.options = self.settings.options
        captions = [self.settings.caption_template.format(c=name) for name in self.classnames]
        self.register_buffer("caption_tokens", self.tokenizer(captions).to(module_device(self.student)),
                             persistent=False)
        # The longest caption's length, read once: trimming each batch to its own longest would
        # read the tokens back from the device (a host-device sync) every step.
        self.caption_length = trim_tokens(self.caption_tokens).shape[1]

    def train(self, mode: bool = True) -> Method:
        """Switch the student; a frozen or EMA teacher always stays in eval mode (and its fast inference paths)."""
        super().train(mode)
        teacher = getattr(self, "teacher", None)
        if teacher is not None:
            teacher.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimiser updates (weight decay applies to all of them, as the official code)."""
        return [p for p in self.parameters() if p.requires_grad]

    def training_step(self, batch: dict[str, Tensor], progress: Progress) -> dict[str, Tensor]:
        """Named, already weighted loss terms of one (micro-)batch; the loop sums them.

        `prepare`, `embed`, gather, `batch_loss` (a method may override this instead of the three parts;
        it then accumulates micro-batches independently only).
        """
        prepared = self.prepare(batch, progress)
        features = self.embed(prepared.inputs, progress)
        features, fixed = self.gather(features, prepared.fixed)
        return self.batch_loss(features, fixed, progress)

    def prepare(self, batch: dict[str, Tensor], progress: Progress) -> Prepared:
        """A micro-batch's inputs of `embed` and the per-sample tensors the loss reads without gradient."""
        raise NotImplementedError(f"{self.spec.name} defines training_step only")

    def embed(self, inputs: dict[str, Any], progress: Progress) -> dict[str, Tensor]:
        """The student's per-sample features of one micro-batch (dim 0 = samples), with graph."""
        raise NotImplementedError(f"{self.spec.name} defines training_step only")

    def batch_loss(self, features: dict[str, Tensor], fixed: dict[str, Tensor],
                   progress: Progress) -> dict[str, Tensor]:
        """Named, already weighted loss terms of the whole batch's `features` and `fixed` tensors."""
        raise NotImplementedError(f"{self.spec.name} defines training_step only")

    @classmethod
    def splits_step(cls) -> bool:
        """Whether the step is `prepare` / `embed` / `batch_loss` (what exact accumulation needs)."""
        return cls.embed is not Method.embed

    def gather(self, features: dict[str, Tensor], fixed: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """`features` and `fixed` with every rank's shard (one process, or a method that does not gather: as they are)."""
        if not self.gathers:
            return features, fixed
        names = list(features) + list(fixed)
        gathered = dict(zip(names, gather_batch(*features.values(), *fixed.values())))
        return {name: gathered[name] for name in features}, {name: gathered[name] for name in fixed}

    def sample_draw(self) -> Callable[[], dict[str, int]] | None:
        """A picklable function the data loader calls for each sample under that sample's seed (after its
        crop), whose values join the batch; None when the method draws nothing per sample."""
        return None

    def begin_step(self, progress: Progress) -> None:
        """Hook run before each optimiser step's micro-batches."""

    def after_optimizer_step(self, step: int) -> None:
        """Hook run after each optimiser step (CaRot's EMA); `step` = optimiser steps taken, this one included."""

    def log_values(self, progress: Progress) -> dict[str, float]:
        """Scalars of the method's own schedule logged with each train_log.jsonl row (StarFT: λ)."""
        return {}

    def record(self) -> dict[str, Any]:
        """Facts of the run's inputs the method read (its bank's sha256), recorded in run.json."""
        return {}

    def optimizer_weight_decay(self) -> float:
        """AdamW's weight decay for this method (the train set's ``optim.weight_decay`` unless it overrides)."""
        return self.settings.weight_decay

    def head_state(self) -> dict[str, Any] | None:
        """The trained classification head to checkpoint, or None for contrastive methods."""
        return None

    def load_head_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError(f"{self.spec.name} has no trained head")

    def teacher_state(self) -> dict[str, Tensor] | None:
        """State of a moving teacher that a resumed run must restore (CaRot's EMA), else None."""
        return None

    def load_teacher_state(self, state: dict[str, Tensor]) -> None:
        raise NotImplementedError(f"{self.spec.name} has no moving teacher")

    @torch.no_grad()
    def class_head(self) -> Tensor:
        """[classes, d] classifier for ID validation (built once per pass): zero-shot head of the current text tower."""
        return build_zeroshot_weights(self.student, self.tokenizer, self.classnames, [self.settings.caption_template])

    @torch.no_grad()
    def class_logits(self, images: Tensor, head: Tensor) -> Tensor:
        """Logits over the training classes of `head` (from :meth:`class_head`) on the student's image features."""
        return unit(self.student.encode_image(images).float()) @ head.T.float()

    def compile_towers(self) -> None:
        """``torch.compile`` the image and text towers of the student and of the teacher, in place.

        ``nn.Module.compile`` wraps each tower's call, so parameter names, state dicts and
        checkpoints are unchanged; the losses stay eager (they are small and must stay fp32).
        The trimmed text length varies between batches, which dynamo handles by marking that
        dimension dynamic after its first recompilation.
        """
        for model in (self.student, getattr(self, "teacher", None)):
            if model is None:
                continue
            for tower in ("visual", "transformer", "text"):  # open_clip CLIP, or CustomTextCLIP's text tower
                module = getattr(model, tower, None)
                if isinstance(module, nn.Module):
                    module.compile()

    def clip_features(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The student's unit image features and unit features of each sample's class caption."""
        return (unit(self.student.encode_image(images)),
                unit(encode_text_trimmed(self.student, self.caption_tokens[labels], length=self.caption_length)))
