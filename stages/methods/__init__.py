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
subclass (_base.py) registered with ``@register_method(spec)``. Every public module of this
package is imported below, so a new file is a new method (docs/extending.md). Modules whose
name starts with ``_`` hold shared parts.
"""

from __future__ import annotations

import importlib
import pkgutil

from stages.methods._base import Method, MethodContext, Progress
from stages.methods._spec import (
    MethodSpec,
    build_method,
    method_class,
    method_names,
    method_spec,
    option_models,
    register_method,
)

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Method", "MethodContext", "MethodSpec", "Progress", "build_method", "method_class", "method_names",
           "method_spec", "option_models", "register_method"]
