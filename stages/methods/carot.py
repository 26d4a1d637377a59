"""CaRot (Oh et al., 2024): FLYP + EMA self-distillation (both directions) + projection penalties."""

from __future__ import annotations

import torch
from pydantic import Field
from typing import Any

from torch import Tensor, nn

from stages.methods._base import Method, MethodContext, Prepared, Progress, unit
from stages.methods._spec import MethodSpec, register_method
from stages.models.teacher import frozen_copy
from stages.models.text import encode_text_trimmed
from stages.strict import Strict
from stages.losses import ClipLoss, ProjectionPenalties, SymmetricDistillLoss


class CarotOptions(Strict):
    """CaRot's coefficients and EMA schedule, defaults from its code (src/models/carot_loss.py)."""

    distill: float = Field(1.5, ge=0, description="weight of the EMA self-distillation term")
    cross_norm: float = Field(0.05, ge=0, description="weight of the cross-modal projection norm penalty")
    orthogonality: float = Field(0.2, ge=0, description="weight of the projection orthogonality penalty")
    ema_every: int = Field(500, ge=1, description="its ema_up_freq N: the EMA teacher is updated after optimiser "
                           "steps 1, 1+N, 1+2N, ...")
    momentum_start: float = Field(0.05, ge=0, le=1)
    momentum_end: float = Field(0.9, ge=0, le=1)
    momentum_warmup: float = Field(0.2, gt=0, le=1, description="fraction of steps over which momentum rises")


@register_method(MethodSpec(name="carot", display="CaRot", summary="FLYP + EMA self-distillation + projection "
                            "penalties; trains both towers and the scale", moving_teacher=True, couples_samples=True,
                            options=CarotOptions))
class CaRot(Method):
    """The EMA schedule is the one of CaRot's ``src/models/carot_loss.py``: its loop index ``t`` counts
    optimiser steps from 0, the teacher is updated after the optimiser step of every ``t`` with
    ``t % ema_up_freq == 0`` (after optimiser steps 1, 501, 1001, ... in our 1-based count) with
    the momentum of ``t`` (that of the step before), and the distillation term is skipped at
    ``t = 0``, where the teacher still equals the student.
    """

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        self.teacher = frozen_copy(self.student)
        self.total_steps = context.total_steps
        self.clip_loss, self.distill_loss, self.penalties = ClipLoss(), SymmetricDistillLoss(), ProjectionPenalties()

    @staticmethod
    def _projection(weight: Tensor | nn.Linear) -> Tensor:
        return weight.weight.T if isinstance(weight, nn.Linear) else weight

    def momentum(self, t: int) -> float:
        """EMA momentum at loop index `t`: linear from start to end over the first `momentum_warmup` of steps."""
        ramp = max(1.0, self.options.momentum_warmup * self.total_steps)
        progress = min(1.0, t / ramp)
        return self.options.momentum_start + progress * (self.options.momentum_end - self.options.momentum_start)

    def ema_momentum_after(self, step: int) -> float | None:
        """The momentum of the EMA update after optimiser step `step` (1-based), or None if none follows it."""
        t = step - 1  # CaRot's 0-based loop index of that step
        return self.momentum(t) if t % self.options.ema_every == 0 else None

    def prepare(self, batch: dict[str, Tensor], progress: Progress) -> Prepared:
        fixed = {}
        if progress.step > 0:  # CaRot skips distillation at its step 0 (the teacher is still the student)
            with torch.no_grad():
                fixed["teacher_image"] = unit(self.teacher.encode_image(batch["image"]))
                fixed["teacher_text"] = unit(encode_text_trimmed(self.teacher, self.caption_tokens[batch["label"]],
                                                                 length=self.caption_length))
        return Prepared(inputs={"image": batch["image"], "label": batch["label"]}, fixed=fixed)

    def embed(self, inputs: dict[str, Any], progress: Progress) -> dict[str, Tensor]:
        image, text = self.clip_features(inputs["image"], inputs["label"])
        return {"image": image, "text": text}

    def batch_loss(self, features: dict[str, Tensor], fixed: dict[str, Tensor],
                   progress: Progress) -> dict[str, Tensor]:
        """The projection penalties are the weights' own: their gradient comes from here, once per step."""
        image_features, text_features = features["image"], features["text"]
        student_scale = self.student.logit_scale.exp()
        cross, orthogonality = self.penalties(
            self._projection(self.student.visual.proj), self._projection(self.student.text_projection)
        )
        terms = {"clip": self.clip_loss(image_features, text_features, student_scale)}
        if "teacher_image" in fixed:
            terms["distill"] = self.options.distill * self.distill_loss(
                fixed["teacher_image"], fixed["teacher_text"], self.teacher.logit_scale.exp(), image_features,
                text_features, student_scale,
            )
        terms["cross_norm"] = self.options.cross_norm * cross
        terms["orthogonality"] = self.options.orthogonality * orthogonality
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
