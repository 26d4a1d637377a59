"""The methods of the paper's comparison: one module per method, each registering its spec and its class.

| name     | loss                                                   | trains                     |
|----------|--------------------------------------------------------|----------------------------|
| zeroshot | none (the pretrained model, evaluated as is)           | nothing                    |
| ft       | CE through a head initialised from zero-shot weights   | image tower + head         |
| flyp     | CLIP contrastive on "a photo of a {c}." (Eq. 1)        | both towers + scale        |
| carft    | ft + KL of context distributions to the zero-shot ones | image tower + head         |
| carot    | flyp + EMA self-distillation + projection penalties    | both towers + scale        |
| lipsumft | ft + MSE of random-text logits to the zero-shot ones   | image tower + head         |
| starft   | flyp + λ_e · Star (Eq. 4)                              | both towers + scale        |

A method is one module here: a ``MethodSpec`` (what planning, configs and reports know of it: see
_spec.py), an optional options model (its ``options.<name>`` config block) and a ``Method``
subclass (_base.py) registered with ``@register_method(spec)``. Every module of this package
whose name does not start with ``_`` (those hold shared parts) is imported the first time the
registry is read, so a new file is a new method (docs/extending.md).
"""

from __future__ import annotations

import importlib
from typing import Any

from stages.methods._spec import (
    MethodSpec,
    build_method,
    method_class,
    method_names,
    method_spec,
    option_models,
    register_method,
)

# The torch side (the base class and what the loop hands a method) loads on first use: importing the
# registry's spec API (the config schema, every CLI's --help) must not import torch.
_TORCH_SIDE = {"Method": "_base", "MethodContext": "_base", "MethodSettings": "_base", "Progress": "_base"}


def __getattr__(name: str) -> Any:
    if name not in _TORCH_SIDE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_TORCH_SIDE[name]}"), name)


__all__ = ["Method", "MethodContext", "MethodSettings", "MethodSpec", "Progress", "build_method", "method_class",
           "method_names", "method_spec", "option_models", "register_method"]
