"""open_clip models: creation and loading, frozen teachers, trimmed text forward, zero-shot heads, WiSE-FT."""

from stages.models.factory import ClipBundle, ModelLoadError, create_clip, register_tiny_configs
from stages.models.teacher import frozen_copy
from stages.models.text import encode_text_trimmed, trim_tokens
from stages.models.wise import interpolate_state_dicts
from stages.models.classifier import build_zeroshot_weights

__all__ = [
    "ClipBundle",
    "ModelLoadError",
    "build_zeroshot_weights",
    "create_clip",
    "encode_text_trimmed",
    "frozen_copy",
    "interpolate_state_dicts",
    "register_tiny_configs",
    "trim_tokens",
]
