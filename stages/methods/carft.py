"""CAR-FT (Mao et al., 2024): FT + w · KL of the context distributions to the zero-shot model's."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from stages.methods._base import MethodContext, unit
from stages.methods._head import RegularisedHeadMethod
from stages.methods._spec import MethodSpec, register_method
from stages.models.classifier import build_zeroshot_weights
from stages.strict import Strict
from stages.losses import ContextKLLoss


class CarftOptions(Strict):
    """CAR-FT's coefficient (its paper's default)."""

    weight: float = Field(1.0, ge=0, description="w of the context KL term")


@register_method(MethodSpec(name="carft", display="CAR-FT", summary="FT + KL of context distributions to the "
                            "zero-shot ones", has_head=True, options=CarftOptions))
class CarFT(RegularisedHeadMethod):
    """CE + w · KL(p_ctx^zs || p_ctx^ft) over the contexts of ``data.head_templates`` (at least 2)."""

    term = "context"

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        templates = self.settings.head_templates or ()
        if len(templates) < 2:
            raise ValueError(
                "carft needs data.head_templates with at least 2 context templates "
                "(the paper uses FLYP's/OpenAI's ImageNet templates)"
            )
        with torch.no_grad():
            per_template = torch.stack([
                build_zeroshot_weights(self.teacher, self.tokenizer, self.classnames, [template])
                for template in templates
            ])  # [K, C, d]: each row unit-norm
            self.register_buffer("context_weights", unit(per_template.mean(dim=1)), persistent=False)
        self.context_loss = ContextKLLoss()

    def regulariser(self, teacher_features: Tensor, image_features: Tensor) -> Tensor:
        return self.context_loss(teacher_features, image_features, self.context_weights, self.zeroshot_scale)
