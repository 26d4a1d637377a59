"""open_clip models: creation and loading, frozen teachers, trimmed text forward, zero-shot heads, WiSE-FT.

The names below load their module on first use: importing a light submodule (``stages.models.text``,
as every method does when the config registry imports them) must not import open_clip (~4 s).
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "ClipBundle": "factory", "ModelLoadError": "factory", "create_clip": "factory", "register_tiny_configs": "factory",
    "frozen_copy": "teacher", "encode_text_trimmed": "text", "trim_tokens": "text",
    "interpolate_state_dicts": "wise", "build_zeroshot_weights": "classifier",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)


__all__ = sorted(_HOMES)
