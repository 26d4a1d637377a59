"""Text forward trimmed to the longest caption in the batch.

open_clip 3.3's ``encode_text`` always runs the full 77-token context (it adds the whole
positional embedding and the 77x77 causal mask). Under a causal mask the tokens after a
sequence's end-of-text token cannot influence it, and the pooled feature is read at the EOT
position, so running only the first L = max(EOT position) + 1 tokens gives the same features
(to float rounding) for a fraction of the FLOPs. Training captions are short ("a photo of a
husky in the snow." is 10 tokens), so this is the largest single saving of the text tower.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def trim_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """Drop the trailing all-padding columns: keep up to the last non-zero token of any row."""
    nonzero_columns = (tokens != 0).any(dim=0).nonzero()
    length = int(nonzero_columns.max()) + 1 if len(nonzero_columns) else 1
    return tokens[:, :length]


def _supports_trimming(model: nn.Module) -> bool:
    """Trimming is exact only for open_clip's native text tower with a causal mask and EOT pooling."""
    return (
        hasattr(model, "token_embedding")
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", None) in ("argmax", "eos")
    )


def encode_text_trimmed(model: nn.Module, tokens: torch.Tensor, normalize: bool = False,
                        length: int | None = None) -> torch.Tensor:
    """``model.encode_text(tokens)`` computed on the trimmed context; falls back to it where trimming is not exact.

    `length`: keep this many tokens (any bound on every row's EOT position is exact) instead of
    the batch's longest, which needs the tokens read back from the device (a host-device sync).
    """
    if not _supports_trimming(model):
        return model.encode_text(tokens, normalize=normalize)
    tokens = trim_tokens(tokens) if length is None else tokens[:, :length]
    length = tokens.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    if model.text_pool_type == "argmax":
        # The EOT token has the largest id in the vocabulary, so argmax finds it.
        pooled = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    else:
        eos_positions = (tokens == model.text_eos_id).int().argmax(dim=-1)
        pooled = x[torch.arange(x.shape[0], device=x.device), eos_positions]
    if model.text_projection is not None:
        pooled = model.text_projection(pooled) if isinstance(model.text_projection, nn.Linear) else pooled @ model.text_projection
    return F.normalize(pooled, dim=-1) if normalize else pooled
