"""Zero-shot heads from prompt templates, cached per (model state, class names, templates).

The head of class c is ``normalize(mean_t normalize(text(t(c))))`` (``build_zeroshot_weights``).
Templates fill ``{c}`` with the class name and, where present, ``{a}`` with its article
("an" before a vowel, else "a", as wise-ft's ``append_proper_article``), which the paper's
Table 14 prompt "a [class]." needs ("an elephant."). The cache key hashes every tensor outside
the image tower, so a fine-tuned, interpolated or randomly initialised text tower never reuses
another's head; heads are kept in memory and, given a folder, on disk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from stages.io import atomic_torch_save, sha256_json
from stages.models.classifier import build_zeroshot_weights


def article(name: str) -> str:
    """``"an"`` if `name` starts with a vowel, else ``"a"``."""
    return "an" if name[:1].lower() in "aeiou" else "a"


def text_head(
    model: nn.Module, tokenizer: Callable[..., torch.Tensor], classnames: Sequence[str], templates: Sequence[str]
) -> torch.Tensor:
    """Unit-norm ``[C, d]`` class embeddings from `templates` (``{c}`` and optional ``{a}`` slots)."""
    if not any("{a}" in template for template in templates):
        return build_zeroshot_weights(model, tokenizer, list(classnames), list(templates))
    rows: list[torch.Tensor | None] = [None] * len(classnames)
    for word in ("a", "an"):
        members = [i for i, name in enumerate(classnames) if article(name) == word]
        if members:
            filled = [template.replace("{a}", word) for template in templates]
            weights = build_zeroshot_weights(model, tokenizer, [classnames[i] for i in members], filled)
            for i, row in zip(members, weights):
                rows[i] = row
    return torch.stack(rows)


def text_state_hash(model: nn.Module) -> str:
    """sha256 of every parameter and buffer outside the image tower (what a text head depends on)."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        if key.startswith("visual."):
            continue
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class HeadCache:
    """Zero-shot heads built once per (text-tower state, class names, templates); on disk under `directory`."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._memory: dict[str, torch.Tensor] = {}

    def get(
        self, model: nn.Module, tokenizer: Callable[..., torch.Tensor], classnames: Sequence[str], templates: Sequence[str]
    ) -> torch.Tensor:
        """The unit-norm head for `classnames` and `templates` under `model`'s current text weights."""
        key = sha256_json({"state": text_state_hash(model), "classnames": list(classnames), "templates": list(templates)})
        if key not in self._memory:
            self._memory[key] = self._load_or_build(key, model, tokenizer, classnames, templates)
        return self._memory[key]

    def _load_or_build(
        self, key: str, model: nn.Module, tokenizer: Callable[..., torch.Tensor],
        classnames: Sequence[str], templates: Sequence[str],
    ) -> torch.Tensor:
        path = self.directory / f"{key}.pt" if self.directory is not None else None
        if path is not None and path.is_file():
            return torch.load(path, map_location="cpu", weights_only=True)["weight"]
        weight = text_head(model, tokenizer, classnames, templates).float().cpu()
        if path is not None:
            atomic_torch_save(path, {"weight": weight, "classnames": list(classnames), "templates": list(templates)})
        return weight
