"""FLYP (Goyal et al., 2023): fine-tune like you pretrain, with CLIP's contrastive loss (paper Eq. 1)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from stages.methods._base import Method, MethodContext, Prepared, Progress
from stages.methods._spec import MethodSpec, register_method
from stages.losses import ClipLoss


@register_method(MethodSpec(name="flyp", display="FLYP", summary='CLIP contrastive on "a photo of a {c}." (Eq. 1); '
                            "trains both towers and the scale", couples_samples=True))
class Flyp(Method):
    """Contrastive fine-tuning of both towers on the class captions, global batch over every rank."""

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        self.clip_loss = ClipLoss()

    def prepare(self, batch: dict[str, Tensor], progress: Progress) -> Prepared:
        return Prepared(inputs={"image": batch["image"], "label": batch["label"]}, fixed={})

    def embed(self, inputs: dict[str, Any], progress: Progress) -> dict[str, Tensor]:
        image, text = self.clip_features(inputs["image"], inputs["label"])
        return {"image": image, "text": text}

    def batch_loss(self, features: dict[str, Tensor], fixed: dict[str, Tensor],
                   progress: Progress) -> dict[str, Tensor]:
        return {"clip": self.clip_loss(features["image"], features["text"], self.student.logit_scale.exp())}
