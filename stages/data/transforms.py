"""Image transforms of the official recipe (CLIP/wise-ft/FLYP/StarFT).

Train: RandomResizedCrop(size, scale 0.9-1, bicubic), no horizontal flip, RGB, CLIP
normalisation. Eval: Resize(size, bicubic) + CenterCrop(size), same normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image
from torchvision import transforms as T


def _to_rgb(image: Image.Image) -> Image.Image:
    # Some ImageNet JPEGs are CMYK or greyscale; CLIP expects 3 channels.
    return image.convert("RGB")


def train_transform(size: int, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    """RandomResizedCrop(scale 0.9-1, bicubic), RGB, ToTensor, Normalize; no flip (as the official code)."""
    return T.Compose([
        T.RandomResizedCrop(size, scale=(0.9, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        _to_rgb,
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def eval_transform(size: int, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    """Resize(bicubic) + CenterCrop, RGB, ToTensor, Normalize."""
    return T.Compose([
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(size),
        _to_rgb,
        T.ToTensor(),
        T.Normalize(mean, std),
    ])
