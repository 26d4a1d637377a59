"""What one training step computes, for every method of the paper's comparison.

Each method is registered with ``@register_method(name)`` and implements ``training_step(batch,
lam) -> {term: weighted loss}``; the shared loop (loop.py) sums the terms, backpropagates and
logs each one. The maths of every term lives in losses.py.

| name     | loss                                                   | trains                     |
|----------|--------------------------------------------------------|----------------------------|
| zeroshot | none (the pretrained model, evaluated as is)           | nothing                    |
| ft       | CE through a head initialised from zero-shot weights   | image tower + head         |
| flyp     | CLIP contrastive on "a photo of a {c}." (Eq. 1)        | both towers + scale        |
| carft    | ft + KL of context distributions to the zero-shot ones | image tower + head         |
| carot    | flyp + EMA self-distillation + projection penalties    | both towers + scale        |
| lipsumft | ft + MSE of random-text logits to the zero-shot ones   | image tower + head         |
| starft   | flyp + λ_e · Star (Eq. 4)                              | both towers + scale        |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stages.config import TrainConfig
from stages.models.factory import ClipBundle
from stages.models.teacher import frozen_copy
from stages.models.text import encode_text_trimmed, trim_tokens
from stages.models.classifier import build_zeroshot_weights
from stages.training.distributed import gather_batch
from stages.training.losses import (
    ClipLoss,
    ContextKLLoss,
    ProjectionPenalties,
    RandomTextLogitMSE,
    StarLoss,
    SymmetricDistillLoss,
)

_METHODS: dict[str, type[Method]] = {}


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: make a Method subclass available as ``build_method(name, ...)``."""

    def decorate(cls: type[Method]) -> type[Method]:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return decorate


def available_methods() -> list[str]:
    """Registered method names, in registration order."""
    return list(_METHODS)


@dataclass
class MethodContext:
    """Everything a method needs to set itself up."""

    bundle: ClipBundle
    classnames: list[str]
    config: TrainConfig
    descriptors: list[str]
    total_steps: int


def method_class(name: str) -> type[Method]:
    """The class registered as `name`."""
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(_METHODS)}")
    return _METHODS[name]


def build_method(name: str, context: MethodContext) -> Method:
    """Instantiate the registered method `name`."""
    return method_class(name)(context)


def _unit(features: Tensor) -> Tensor:
    return F.normalize(features, dim=-1)


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


class Method(nn.Module):
    """Base class: holds the student and the tokenised class captions."""

    name: ClassVar[str] = ""
    trains: ClassVar[bool] = True
    uses_lambda: ClassVar[bool] = False  # whether `lam` (the Star weight) means anything to this method

    def __init__(self, context: MethodContext) -> None:
        super().__init__()
        self.student = context.bundle.model
        self.tokenizer = context.bundle.tokenizer
        self.classnames = list(context.classnames)
        self.config = context.config
        captions = [context.config.data.caption_template.format(c=name) for name in self.classnames]
        self.register_buffer("caption_tokens", self.tokenizer(captions).to(_device(self.student)), persistent=False)
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

    def training_step(self, batch: dict[str, Tensor], lam: float) -> dict[str, Tensor]:
        """Named, already weighted loss terms of one (micro-)batch; the loop sums them."""
        raise NotImplementedError

    def begin_step(self, step: int) -> None:
        """Hook run before each optimiser step's micro-batches; `step` = optimiser steps taken so far."""

    def after_optimizer_step(self, step: int) -> None:
        """Hook run after each optimiser step (CaRot's EMA); `step` = optimiser steps taken, this one included."""

    def optimizer_weight_decay(self) -> float:
        """AdamW's weight decay for this method (the train set's ``optim.weight_decay`` unless it overrides)."""
        return self.config.optim.weight_decay

    def head_state(self) -> dict[str, Any] | None:
        """The trained classification head to checkpoint, or None for contrastive methods."""
        return None

    @torch.no_grad()
    def class_head(self) -> Tensor:
        """[classes, d] classifier for ID validation (built once per pass): zero-shot head of the current text tower."""
        return build_zeroshot_weights(self.student, self.tokenizer, self.classnames, [self.config.data.caption_template])

    @torch.no_grad()
    def class_logits(self, images: Tensor, head: Tensor) -> Tensor:
        """Logits over the training classes of `head` (from :meth:`class_head`) on the student's image features."""
        return _unit(self.student.encode_image(images).float()) @ head.T.float()

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

    def load_head_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError(f"{self.name} has no trained head")

    def teacher_state(self) -> dict[str, Tensor] | None:
        """State of a moving teacher that a resumed run must restore (CaRot's EMA), else None."""
        return None

    def load_teacher_state(self, state: dict[str, Tensor]) -> None:
        raise NotImplementedError(f"{self.name} has no moving teacher")

    # Shared pieces -----------------------------------------------------------------------
    def _clip_features(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        return (_unit(self.student.encode_image(images)),
                _unit(encode_text_trimmed(self.student, self.caption_tokens[labels], length=self.caption_length)))


@register_method("zeroshot")
class ZeroShot(Method):
    """The pretrained model itself; the loop writes its weights without any step."""

    trains = False

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        self.student.requires_grad_(False)


@register_method("flyp")
class Flyp(Method):
    """FLYP (Goyal et al., 2023): contrastive fine-tuning with the pretraining loss (Eq. 1)."""

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        self.clip_loss = ClipLoss()

    def training_step(self, batch: dict[str, Tensor], lam: float) -> dict[str, Tensor]:
        image_features, text_features = self._clip_features(batch["image"], batch["label"])
        return {"clip": self.clip_loss(gather_batch(image_features), gather_batch(text_features),
                                       self.student.logit_scale.exp())}


class _HeadMethod(Method):
    """Cross-entropy through a linear head on normalised image features, initialised zero-shot.

    As WiSE-FT's FT baseline, only the image tower and the head train; the text tower stays at
    its zero-shot weights so that new class sets can still be evaluated through it. The trained
    parameter is ``H = s·W`` (WiSE-FT: zero-shot weights times the logit scale, logits ``f·Hᵀ``);
    with ``scaled_head`` (Lipsum-FT) it is ``W`` itself, unit-norm rows at initialisation and
    trained freely, and the logits are ``s·f·Wᵀ`` with the zero-shot scale ``s`` fixed, so an
    optimiser step moves the logits ``s`` times more. Checkpoints store the effective ``s·W``
    either way (``head_state``), the form evaluation reads.
    """

    scaled_head: ClassVar[bool] = False

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        for name, parameter in self.student.named_parameters():
            parameter.requires_grad_(name.startswith("visual."))
        templates = context.config.data.head_templates or [context.config.data.caption_template]
        # Built under no_grad (not inference_mode): the head is trained from these weights.
        zeroshot = build_zeroshot_weights(self.student, self.tokenizer, self.classnames, templates)
        self.zeroshot_scale = float(self.student.logit_scale.exp())
        self.head_scale = self.zeroshot_scale if self.scaled_head else 1.0
        self.head = nn.Parameter(zeroshot if self.scaled_head else zeroshot * self.zeroshot_scale)

    def _head_logits(self, image_features: Tensor) -> Tensor:
        logits = image_features @ self.head.T.to(image_features.dtype)
        return self.head_scale * logits if self.scaled_head else logits

    def training_step(self, batch: dict[str, Tensor], lam: float) -> dict[str, Tensor]:
        image_features = _unit(self.student.encode_image(batch["image"]))
        return self._head_terms(image_features, batch)

    def _head_terms(self, image_features: Tensor, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"ce": F.cross_entropy(self._head_logits(image_features).float(), batch["label"])}

    def head_state(self) -> dict[str, Any]:
        """``weight`` = the effective head (logits = normalize(f) @ weight.T); ``parameter`` = what trains."""
        parameter = self.head.detach().float().cpu().clone()
        return {"weight": parameter * self.head_scale if self.scaled_head else parameter,
                "classnames": list(self.classnames), "parameter": parameter}

    def load_head_state(self, state: dict[str, Any]) -> None:
        """Restore the trained parameter from a ``head_state`` (resuming a run)."""
        self.head.data.copy_(state["parameter"])

    @torch.no_grad()
    def class_head(self) -> Tensor:
        head = self.head.detach()
        return head * self.head_scale if self.scaled_head else head


@register_method("ft")
class FineTune(_HeadMethod):
    """Standard fine-tuning (WiSE-FT's FT): cross-entropy through the zero-shot-initialised head."""


@register_method("carft")
class CarFT(_HeadMethod):
    """CAR-FT (Mao et al., 2024): CE + w · KL(p_ctx^zs || p_ctx^ft) over context templates."""

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        templates = context.config.data.head_templates or []
        if len(templates) < 2:
            raise ValueError(
                "carft needs data.head_templates with at least 2 context templates "
                "(the paper uses FLYP's/OpenAI's ImageNet templates)"
            )
        self.teacher = frozen_copy(self.student)
        with torch.no_grad():
            per_template = torch.stack([
                build_zeroshot_weights(self.teacher, self.tokenizer, self.classnames, [template])
                for template in templates
            ])  # [K, C, d]: each row unit-norm
            self.register_buffer("context_weights", _unit(per_template.mean(dim=1)), persistent=False)
        self.context_loss = ContextKLLoss()

    def training_step(self, batch: dict[str, Tensor], lam: float) -> dict[str, Tensor]:
        image_features = _unit(self.student.encode_image(batch["image"]))
        with torch.no_grad():
            teacher_features = _unit(self.teacher.encode_image(batch["image"]))
        terms = self._head_terms(image_features, batch)
        terms["context"] = self.config.options.carft_weight * self.context_loss(
            teacher_features, image_features, self.context_weights, self.zeroshot_scale
        )
        return terms


@register_method("lipsumft")
class LipsumFT(_HeadMethod):
    """Lipsum-FT (Nam et al., 2024): CE + w · MSE of logits on random-token texts vs the zero-shot model.

    As its ``scripts/Lipsum-FT.py``: logits ``s·f·W`` with ``s`` the fixed zero-shot scale and ``W``
    (unit-norm zero-shot rows at initialisation, never renormalised) trained; AdamW's weight decay
    is ``options.lipsum_weight_decay`` (its code's default 0.0) unless that is null.
    """

    scaled_head = True

    def optimizer_weight_decay(self) -> float:
        decay = self.config.options.lipsum_weight_decay
        return self.config.optim.weight_decay if decay is None else decay

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        self.teacher = frozen_copy(self.student)
        self.random_text_loss = RandomTextLogitMSE()
        self.sot_id, self.eot_id = self.tokenizer.sot_token_id, self.tokenizer.eot_token_id

    def _random_texts(self, device: torch.device) -> Tensor:
        options = self.config.options
        ids = torch.randint(0, self.sot_id, (options.lipsum_texts, options.lipsum_tokens), device=device)
        sot = torch.full((options.lipsum_texts, 1), self.sot_id, device=device)
        eot = torch.full((options.lipsum_texts, 1), self.eot_id, device=device)
        return torch.cat([sot, ids, eot], dim=1)

    def training_step(self, batch: dict[str, Tensor], lam: float) -> dict[str, Tensor]:
        image_features = _unit(self.student.encode_image(batch["image"]))
        with torch.no_grad():
            teacher_features = _unit(self.teacher.encode_image(batch["image"]))
            texts = self._random_texts(batch["image"].device)  # every row ends with EOT: nothing to trim
            text_features = _unit(encode_text_trimmed(self.teacher, texts, length=texts.shape[1]))
        terms = self._head_terms(image_features, batch)
        terms["lipsum"] = self.config.options.lipsum_weight * self.random_text_loss(
            teacher_features, image_features, text_features, self.zeroshot_scale
        )
        return terms


@register_method("carot")
class CaRot(Method):
    """CaRot (Oh et al., 2024): FLYP + EMA self-distillation (both directions) + projection penalties.

    The EMA schedule is the one of CaRot's ``src/models/carot_loss.py``: its loop index ``t`` counts
    optimiser steps from 0, the teacher is updated after the optimiser step of every ``t`` with
    ``t % ema_up_freq == 0`` (after optimiser steps 1, 501, 1001, ... in our 1-based count) with
    the momentum of ``t`` (that of the step before), and the distillation term is skipped at
    ``t = 0``, where the teacher still equals the student.
    """

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        self.teacher = frozen_copy(self.student)
        self.total_steps = context.total_steps
        self.steps_taken = 0  # optimiser steps before the current one (CaRot's loop index t)
        self.clip_loss, self.distill_loss, self.penalties = ClipLoss(), SymmetricDistillLoss(), ProjectionPenalties()

    @staticmethod
    def _projection(weight: Tensor | nn.Linear) -> Tensor:
        return weight.weight.T if isinstance(weight, nn.Linear) else weight

    def momentum(self, t: int) -> float:
        """EMA momentum at loop index `t`: linear from start to end over the first `carot_momentum_warmup` of steps."""
        options = self.config.options
        ramp = max(1.0, options.carot_momentum_warmup * self.total_steps)
        progress = min(1.0, t / ramp)
        return options.carot_momentum_start + progress * (options.carot_momentum_end - options.carot_momentum_start)

    def ema_momentum_after(self, step: int) -> float | None:
        """The momentum of the EMA update after optimiser step `step` (1-based), or None if none follows it."""
        t = step - 1  # CaRot's 0-based loop index of that step
        return self.momentum(t) if t % self.config.options.carot_ema_every == 0 else None

    def begin_step(self, step: int) -> None:
        self.steps_taken = step

    def training_step(self, batch: dict[str, Tensor], lam: float) -> dict[str, Tensor]:
        options = self.config.options
        image_features, text_features = self._clip_features(batch["image"], batch["label"])
        student_scale = self.student.logit_scale.exp()
        cross, orthogonality = self.penalties(
            self._projection(self.student.visual.proj), self._projection(self.student.text_projection)
        )
        image_features, text_features = gather_batch(image_features), gather_batch(text_features)
        terms = {"clip": self.clip_loss(image_features, text_features, student_scale)}
        if self.steps_taken > 0:  # CaRot skips distillation at its step 0 (the teacher is still the student)
            with torch.no_grad():
                teacher_image = gather_batch(_unit(self.teacher.encode_image(batch["image"])))
                teacher_text = gather_batch(_unit(encode_text_trimmed(self.teacher, self.caption_tokens[batch["label"]],
                                                                      length=self.caption_length)))
                teacher_scale = self.teacher.logit_scale.exp()
            terms["distill"] = options.carot_distill * self.distill_loss(
                teacher_image, teacher_text, teacher_scale, image_features, text_features, student_scale
            )
        terms["cross_norm"] = options.carot_cross_norm * cross
        terms["orthogonality"] = options.carot_orthogonality * orthogonality
        return terms

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        momentum = self.ema_momentum_after(step)
        if momentum is None:
            return
        for teacher_param, student_param in zip(self.teacher.parameters(), self.student.parameters()):
            teacher_param.mul_(momentum).add_(student_param.detach(), alpha=1.0 - momentum)

    def teacher_state(self) -> dict[str, Tensor]:
        return self.teacher.state_dict()

    def load_teacher_state(self, state: dict[str, Tensor]) -> None:
        self.teacher.load_state_dict(state)


@register_method("starft")
class StarFT(Method):
    """StarFT: L = L_C + λ_e · L_Star (paper Eq. 4).

    Each sample carries a uniformly drawn descriptor index d; its spurious caption is
    descriptor_d.format("a photo of a <class>"). The frozen teacher's embeddings of every
    (class, descriptor) caption are computed once here and looked up by index, since the
    teacher never changes; the student encodes the clean and spurious captions in one trimmed
    text forward. Suffix "random" appends 3-8 random vocabulary words (fresh per sample), so
    its teacher text runs per step.
    """

    uses_lambda = True

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        spurious = context.config.spurious
        self.suffix = spurious.suffix
        self.clip_loss, self.star_loss = ClipLoss(), StarLoss(mask_same_class=spurious.mask)
        self.teacher = frozen_copy(self.student)
        self.zeroshot_scale = float(self.teacher.logit_scale.exp())
        device = _device(self.student)
        base_captions = [context.config.data.caption_template.format(c=name).rstrip(".") for name in self.classnames]
        if self.suffix == "random":
            self._prepare_random_suffix(base_captions)
            return
        descriptors = context.descriptors if self.suffix == "spurious" else ["{}."]
        captions = [descriptor.format(base) for base in base_captions for descriptor in descriptors]
        tokens = self.tokenizer(captions).view(len(base_captions), len(descriptors), -1).to(device)
        self.register_buffer("spurious_tokens", tokens, persistent=False)
        self.text_length = max(self.caption_length, trim_tokens(tokens.flatten(0, 1)).shape[1])
        self.register_buffer("teacher_text", self._encode_teacher(tokens.flatten(0, 1)).view(
            len(base_captions), len(descriptors), -1), persistent=False)

    @torch.no_grad()
    def _encode_teacher(self, tokens: Tensor, chunk: int = 1024) -> Tensor:
        return torch.cat([
            _unit(encode_text_trimmed(self.teacher, tokens[start:start + chunk]).float())
            for start in range(0, len(tokens), chunk)
        ])

    def _prepare_random_suffix(self, base_captions: list[str]) -> None:
        """Token ids of each class's base caption and of the tokenizer's whole-word vocabulary."""
        encoder: dict[str, int] = self.tokenizer.encoder
        self.word_ids = torch.tensor(sorted(i for t, i in encoder.items() if t.endswith("</w>") and t[:-4].isalpha()))
        self.base_ids = [self.tokenizer.encode(caption) for caption in base_captions]
        self.sot_id, self.eot_id = self.tokenizer.sot_token_id, self.tokenizer.eot_token_id
        self.context_length = self.caption_tokens.shape[1]

    def _random_suffix_tokens(self, labels: Tensor) -> Tensor:
        """"a photo of a <class>" + 3-8 uniformly drawn vocabulary words, one fresh draw per sample."""
        tokens = torch.zeros(len(labels), self.context_length, dtype=torch.long)
        lengths = torch.randint(3, 9, (len(labels),))
        for row, (label, length) in enumerate(zip(labels.tolist(), lengths.tolist())):
            words = self.word_ids[torch.randint(len(self.word_ids), (length,))].tolist()
            ids = [self.sot_id, *self.base_ids[label], *words][: self.context_length - 1] + [self.eot_id]
            tokens[row, : len(ids)] = torch.tensor(ids)
        return tokens.to(labels.device)

    def training_step(self, batch: dict[str, Tensor], lam: float) -> dict[str, Tensor]:
        images, labels = batch["image"], batch["label"]
        if self.suffix == "random":
            spurious_tokens = self._random_suffix_tokens(labels)
            teacher_text = self._encode_teacher(spurious_tokens)
            length = None  # fresh captions every step: trimmed to this batch's longest
        else:
            spurious_tokens = self.spurious_tokens[labels, batch["descriptor_index"]]
            teacher_text = self.teacher_text[labels, batch["descriptor_index"]]
            length = self.text_length
        clean_tokens = self.caption_tokens[labels]
        # One student text forward over clean + spurious captions (trimmed to the longer of both).
        width = max(clean_tokens.shape[1], spurious_tokens.shape[1])
        all_tokens = torch.cat([F.pad(clean_tokens, (0, width - clean_tokens.shape[1])),
                                F.pad(spurious_tokens, (0, width - spurious_tokens.shape[1]))])
        text_features = _unit(encode_text_trimmed(self.student, all_tokens, length=length))
        clean_text, spurious_text = text_features[: len(labels)], text_features[len(labels):]
        image_features = gather_batch(_unit(self.student.encode_image(images)))
        clean_text, spurious_text = gather_batch(clean_text), gather_batch(spurious_text)
        terms = {"clip": self.clip_loss(image_features, clean_text, self.student.logit_scale.exp())}
        if lam > 0:
            with torch.inference_mode():
                teacher_image = _unit(self.teacher.encode_image(images))
            # Leave inference mode's tensors behind: only ordinary tensors may meet autograd.
            terms["star"] = lam * self.star_loss(
                gather_batch(teacher_image.clone()), gather_batch(teacher_text), image_features, spurious_text,
                gather_batch(labels), self.zeroshot_scale,
            )
        return terms

