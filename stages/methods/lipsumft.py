"""Lipsum-FT (Nam et al., 2024): FT + w · MSE of logits on random-token texts vs the zero-shot model."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from stages.methods._base import MethodContext, unit
from stages.methods._head import RegularisedHeadMethod
from stages.methods._spec import MethodSpec, register_method
from stages.models.text import encode_text_trimmed
from stages.strict import Strict
from stages.losses import RandomTextLogitMSE


class LipsumftOptions(Strict):
    """Lipsum-FT's coefficients, defaults from its code (scripts/Lipsum-FT.py)."""

    weight: float = Field(1.0, ge=0, description="w of the random-text logit MSE")
    texts: int = Field(80, ge=1, description="random texts per step")
    tokens: int = Field(8, ge=1, description="random tokens per text")
    weight_decay: float | None = Field(0.0, ge=0, description="AdamW weight decay of Lipsum-FT runs (its code's "
                                       "default 0.0); null: the train set's optim.weight_decay")


@register_method(MethodSpec(name="lipsumft", display="Lipsum-FT", summary="FT + MSE of random-text logits to the "
                            "zero-shot ones", has_head=True, couples_samples=True,
                            options=LipsumftOptions))
class LipsumFT(RegularisedHeadMethod):
    """As its ``scripts/Lipsum-FT.py``: logits ``s·f·W`` with ``s`` the fixed zero-shot scale and ``W``
    (unit-norm zero-shot rows at initialisation, never renormalised) trained; AdamW's weight decay
    is ``options.lipsumft.weight_decay`` (its code's default 0.0) unless that is null.
    """

    scaled_head = True
    term = "lipsum"

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        self.random_text_loss = RandomTextLogitMSE()
        self.sot_id, self.eot_id = self.tokenizer.sot_token_id, self.tokenizer.eot_token_id

    def optimizer_weight_decay(self) -> float:
        decay = self.options.weight_decay
        return self.settings.weight_decay if decay is None else decay

    def _random_texts(self, device: torch.device) -> Tensor:
        ids = torch.randint(0, self.sot_id, (self.options.texts, self.options.tokens), device=device)
        sot = torch.full((self.options.texts, 1), self.sot_id, device=device)
        eot = torch.full((self.options.texts, 1), self.eot_id, device=device)
        return torch.cat([sot, ids, eot], dim=1)

    def regulariser(self, teacher_features: Tensor, image_features: Tensor) -> Tensor:
        with torch.no_grad():
            texts = self._random_texts(image_features.device)  # every row ends with EOT: nothing to trim
            text_features = unit(encode_text_trimmed(self.teacher, texts, length=texts.shape[1]))
        return self.random_text_loss(teacher_features, image_features, text_features, self.zeroshot_scale)
