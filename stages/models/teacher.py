"""The frozen zero-shot teacher used by StarFT, CAR-FT, Lipsum-FT (and CaRot's EMA start)."""

from __future__ import annotations

import copy

from torch import nn


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with every parameter frozen.

    Callers run it under ``torch.inference_mode()`` (StarFT's teacher image forward) or
    ``torch.no_grad()`` where the output is later saved for backward.
    """
    teacher = copy.deepcopy(model)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher
