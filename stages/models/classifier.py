"""Zero-shot classifier weights from class names and prompt templates (Radford et al., 2021).

For each class: encode every template filled with the class name, L2-normalise each embedding,
average over templates, renormalise. Logits are then ``logit_scale * normalize(f(x)) @ W.T``.
Templates are format strings with a ``{c}`` slot, e.g. ``"a photo of a {c}."``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from stages.models.text import encode_text_trimmed


@torch.no_grad()
def build_zeroshot_weights(
    model: nn.Module,
    tokenizer: Callable[..., torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[str],
    classes_per_batch: int = 32,
) -> torch.Tensor:
    """Return the ``[num_classes, embed_dim]`` matrix of unit-norm class embeddings (fp32).

    Built under ``no_grad`` (not ``inference_mode``): FT heads are initialised from it and then
    trained, and inference tensors cannot be saved for backward.
    """
    if not classnames or not templates:
        raise ValueError("need at least one class name and one template")
    for template in templates:
        if "{c}" not in template:
            raise ValueError(f"template {template!r} has no '{{c}}' slot for the class name")
    device = next(model.parameters()).device
    rows = []
    for start in range(0, len(classnames), classes_per_batch):
        chunk = classnames[start:start + classes_per_batch]
        texts = [template.format(c=name) for name in chunk for template in templates]
        features = encode_text_trimmed(model, tokenizer(texts).to(device)).float()
        features = F.normalize(features, dim=-1).view(len(chunk), len(templates), -1)
        rows.append(F.normalize(features.mean(dim=1), dim=-1))
    return torch.cat(rows)
