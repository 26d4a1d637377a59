"""The head-based methods' shared parts: a linear head initialised zero-shot, and a regularised step.

As WiSE-FT's FT baseline, only the image tower and the head train; the text tower stays at its
zero-shot weights so that new class sets can still be evaluated through it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stages.methods._base import Method, MethodContext, Progress, unit
from stages.models.teacher import frozen_copy
from stages.models.classifier import build_zeroshot_weights


class HeadMethod(Method):
    """Cross-entropy through a linear head on normalised image features, initialised zero-shot.

    The trained parameter is ``H = s·W`` (WiSE-FT: zero-shot weights times the logit scale,
    logits ``f·Hᵀ``); with ``scaled_head`` (Lipsum-FT) it is ``W`` itself, unit-norm rows at
    initialisation and trained freely, and the logits are ``s·f·Wᵀ`` with the zero-shot scale ``s``
    fixed, so an optimiser step moves the logits ``s`` times more. Checkpoints store the effective
    ``s·W`` either way (``head_state``), the form evaluation reads.
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

    def head_logits(self, image_features: Tensor) -> Tensor:
        logits = image_features @ self.head.T.to(image_features.dtype)
        return self.head_scale * logits if self.scaled_head else logits

    def training_step(self, batch: dict[str, Tensor], progress: Progress) -> dict[str, Tensor]:
        return self.head_terms(unit(self.student.encode_image(batch["image"])), batch)

    def head_terms(self, image_features: Tensor, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"ce": F.cross_entropy(self.head_logits(image_features).float(), batch["label"])}

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

    def training_step(self, batch: dict[str, Tensor], progress: Progress) -> dict[str, Tensor]:
        image_features = unit(self.student.encode_image(batch["image"]))
        with torch.no_grad():
            teacher_features = unit(self.teacher.encode_image(batch["image"]))
        terms = self.head_terms(image_features, batch)
        terms[self.term] = self.options.weight * self.regulariser(teacher_features, image_features)
        return terms
