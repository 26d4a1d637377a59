"""The head-based methods' shared parts: a linear head initialised zero-shot, and a regularised step.

As WiSE-FT's FT baseline, only the image tower and the head train; the text tower stays at its
zero-shot weights so that new class sets can still be evaluated through it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stages.methods._base import Method, MethodContext, Prepared, Progress, unit
from stages.models.teacher import frozen_copy
from stages.models.classifier import build_zeroshot_weights
from stages.losses import _as_float


class HeadMethod(Method):
    """Cross-entropy through a linear head on normalised image features, initialised zero-shot.

    The trained parameter is ``H = s·W`` (WiSE-FT: zero-shot weights times the logit scale,
    logits ``f·Hᵀ``); with ``scaled_head`` (Lipsum-FT) it is ``W`` itself, unit-norm rows at
    initialisation and trained freely, and the logits are ``s·f·Wᵀ`` with the zero-shot scale ``s``
    fixed, so an optimiser step moves the logits ``s`` times more. Checkpoints store the effective
    ``s·W`` either way (``head_state``), the form evaluation reads.
    """

    scaled_head: ClassVar[bool] = False
    gathers: ClassVar[bool] = False  # per-sample terms on each rank's shard (DDP averages the gradients)

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        for name, parameter in self.student.named_parameters():
            parameter.requires_grad_(name.startswith("visual."))
        templates = self.settings.head_templates or [self.settings.caption_template]
        # Built under no_grad (not inference_mode): the head is trained from these weights.
        zeroshot = build_zeroshot_weights(self.student, self.tokenizer, self.classnames, templates)
        self.zeroshot_scale = float(self.student.logit_scale.exp())
        self.head_scale = self.zeroshot_scale if self.scaled_head else 1.0
        self.head = nn.Parameter(zeroshot if self.scaled_head else zeroshot * self.zeroshot_scale)

    def head_logits(self, image_features: Tensor) -> Tensor:
        logits = image_features @ self.head.T.to(image_features.dtype)
        return self.head_scale * logits if self.scaled_head else logits

    def prepare(self, batch: dict[str, Tensor], progress: Progress) -> Prepared:
        return Prepared(inputs={"image": batch["image"]}, fixed={"label": batch["label"]})

    def embed(self, inputs: dict[str, Any], progress: Progress) -> dict[str, Tensor]:
        return {"image": unit(self.student.encode_image(inputs["image"]))}

    def batch_loss(self, features: dict[str, Tensor], fixed: dict[str, Tensor],
                   progress: Progress) -> dict[str, Tensor]:
        """The head is used here directly: its gradient comes from this part."""
        return self.head_terms(features["image"], fixed)

    def head_terms(self, image_features: Tensor, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        # fp32 for half-precision logits; float64 stays float64 (as every loss, stages/losses.py)
        return {"ce": F.cross_entropy(_as_float(self.head_logits(image_features)), batch["label"])}

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


class RegularisedHeadMethod(HeadMethod):
    """CE + ``options.weight`` · a term comparing the student's image features with the frozen zero-shot model's.

    The step shared by CAR-FT and Lipsum-FT: each defines only its `regulariser` and the name of its term.
    """

    term: ClassVar[str]

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        self.teacher = frozen_copy(self.student)

    def regulariser(self, teacher_features: Tensor, image_features: Tensor) -> Tensor:
        """The unweighted regulariser of the zero-shot model's (`teacher_features`) and the student's unit features."""
        raise NotImplementedError

    def prepare(self, batch: dict[str, Tensor], progress: Progress) -> Prepared:
        prepared = super().prepare(batch, progress)
        with torch.no_grad():
            prepared.fixed["teacher_image"] = unit(self.teacher.encode_image(batch["image"]))
        return prepared

    def batch_loss(self, features: dict[str, Tensor], fixed: dict[str, Tensor],
                   progress: Progress) -> dict[str, Tensor]:
        terms = self.head_terms(features["image"], fixed)
        terms[self.term] = self.options.weight * self.regulariser(fixed["teacher_image"], features["image"])
        return terms
