"""``starft-reference``: StarFT's training step as the official code computes it (the benchmark's baseline)."""

from __future__ import annotations

import torch
from torch import Tensor

from stages.methods import MethodContext, Progress
from stages.methods.starft import StarFT

REFERENCE = "starft-reference"


class ReferenceStarFT(StarFT):
    """StarFT's training step as the official code computes it: the benchmark's baseline.

    Every step the student encodes the images, then the clean captions and the spurious
    captions in two separate ``encode_text`` calls over the full 77-token context, and the
    frozen teacher re-encodes the images and the spurious captions under ``no_grad``: no
    teacher-text cache, no trimming, no inference mode. The losses are StarFT's own (fp32), so
    both steps give the same loss and gradients (tests/test_bench.py checks it).
    """

    def __init__(self, context: MethodContext) -> None:
        if context.settings.spurious.suffix != "spurious":
            raise ValueError(f"{REFERENCE} supports spurious.suffix 'spurious' only")
        super().__init__(context)
        del self.teacher_text  # the reference keeps no cache: it re-encodes the teacher's text each step

    def training_step(self, batch: dict[str, Tensor], progress: Progress) -> dict[str, Tensor]:
        images, labels = batch["image"], batch["label"]
        spurious_tokens = self.spurious_tokens[labels, batch["descriptor_index"]]
        image_features = self.student.encode_image(images, normalize=True)
        clean_text = self.student.encode_text(self.caption_tokens[labels], normalize=True)
        spurious_text = self.student.encode_text(spurious_tokens, normalize=True)
        with torch.no_grad():
            teacher_image = self.teacher.encode_image(images, normalize=True)
            teacher_text = self.teacher.encode_text(spurious_tokens, normalize=True)
        return {
            "clip": self.clip_loss(image_features, clean_text, self.student.logit_scale.exp()),
            "star": self.lam(progress) * self.star_loss(
                teacher_image, teacher_text, image_features, spurious_text, labels, self.zeroshot_scale
            ),
        }
