"""FLYP (Goyal et al., 2023): fine-tune like you pretrain, with CLIP's contrastive loss (paper Eq. 1)."""

from __future__ import annotations

from torch import Tensor

from stages.methods._base import Method, MethodContext, Progress
from stages.methods._spec import MethodSpec, register_method
from stages.training.distributed import gather_batch
from stages.training.losses import ClipLoss


@register_method(MethodSpec(name="flyp", display="FLYP", summary='CLIP contrastive on "a photo of a {c}." (Eq. 1); '
                            "trains both towers and the scale"))
class Flyp(Method):
    """Contrastive fine-tuning of both towers on the class captions, global batch over every rank."""

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        self.clip_loss = ClipLoss()

    def training_step(self, batch: dict[str, Tensor], progress: Progress) -> dict[str, Tensor]:
        image_features, text_features = gather_batch(*self.clip_features(batch["image"], batch["label"]))
        return {"clip": self.clip_loss(image_features, text_features, self.student.logit_scale.exp())}
