"""WiSE-FT weight-space ensembling (Wortsman et al., 2022): theta_alpha = (1 - alpha) theta_zs + alpha theta_ft."""

from __future__ import annotations

import torch


def interpolate_state_dicts(
    zeroshot: dict[str, torch.Tensor], finetuned: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """Return ``(1 - alpha) * zeroshot + alpha * finetuned`` key by key.

    alpha = 0 and alpha = 1 return the inputs' tensors exactly (no float round-trip); integer
    buffers (e.g. position ids) must agree and are copied.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"WiSE-FT alpha must lie in [0, 1], got {alpha}")
    if zeroshot.keys() != finetuned.keys():
        only_zs, only_ft = zeroshot.keys() - finetuned.keys(), finetuned.keys() - zeroshot.keys()
        raise ValueError(f"state dicts differ: only zero-shot {sorted(only_zs)[:5]}, only fine-tuned {sorted(only_ft)[:5]}")
    merged: dict[str, torch.Tensor] = {}
    for key, theta_zs in zeroshot.items():
        theta_ft = finetuned[key]
        if alpha == 0.0 or not theta_zs.is_floating_point():
            merged[key] = theta_zs.clone()
        elif alpha == 1.0:
            merged[key] = theta_ft.clone()
        else:
            merged[key] = (1.0 - alpha) * theta_zs + alpha * theta_ft.to(theta_zs.dtype)
    return merged
