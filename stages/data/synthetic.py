"""Generated image folders, offline: learnable coloured noise (tiny runs) and ImageNet-like JPEGs (loader speed).

- `colour_images` / `colour_folder`: 32x32 coloured-noise images of 4 classes, each class with its own
  mean colour (a tiny model can learn it), as ``<root>/imagefolder/<split>/<class>/<n>.png`` with a
  ``classnames.json``: the registered ``imagefolder`` dataset, which the training and evaluation CLIs
  read. The test suite's fixtures and the GPU readiness check (``stages.training.gpucheck``) use it.
- `imagenet_like_folder`: ``<root>/imagefolder/train/<class>/<n>.JPEG`` at ImageNet's typical
  500 x 375, JPEG quality 90 with smooth content plus noise (about 90 kB each), for
  timing the training data path (decode, crop, resize, normalise) on realistic inputs.
"""

from __future__ import annotations

import json
import zlib
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

from stages.data.source import LabeledImages

COLOURS = {"red square": (200, 40, 40), "green circle": (40, 200, 40), "blue triangle": (40, 40, 200),
           "yellow star": (200, 200, 40)}


def colour_images(split: str, count: int) -> LabeledImages:
    """`count` 32x32 coloured-noise images in memory, 4 classes; `split` seeds the draw.

    Each class has its own mean colour, so a model can learn it."""
    rng = np.random.default_rng(zlib.crc32(split.encode()))
    palette = np.array(list(COLOURS.values()), dtype=np.float64)
    labels = [int(label) for label in rng.integers(0, len(COLOURS), size=count)]
    images = [np.clip(palette[label] + rng.normal(0, 40, size=(32, 32, 3)), 0, 255).astype(np.uint8) for label in labels]
    return LabeledImages(name="colours", classnames=list(COLOURS), images=images, labels=labels)


def colour_folder(root: Path, counts: dict[str, int]) -> Path:
    """The colour images as ``root/imagefolder/<split>/<class>/<n>.png`` (lossless), with
    ``classnames.json`` keeping `COLOURS`' label order; returns `root`.

    A registered dataset on disk rather than one registered in memory: training and evaluation
    subprocesses (the CLIs, torchrun) read it too."""
    base = root / "imagefolder"
    folders = [name.replace(" ", "_") for name in COLOURS]
    for split, count in counts.items():
        source = colour_images(split, count)
        for n, (pixels, label) in enumerate(zip(source.images, source.labels)):
            path = base / split / folders[label] / f"{n}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
    (base / "classnames.json").write_text(json.dumps(dict(zip(folders, COLOURS))))
    return root


def imagenet_like_jpeg(rng: np.random.Generator, width: int = 500, height: int = 375, quality: int = 90) -> bytes:
    """One JPEG of a smooth random colour field (bicubic-upsampled 8x6 grid) plus pixel noise: it decodes
    like a photograph of that size and weighs about 90 kB at 500 x 375 (ImageNet: about 110 kB)."""
    coarse = Image.fromarray(rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)).resize((width, height),
                                                                                       Image.Resampling.BICUBIC)
    pixels = np.asarray(coarse, dtype=np.float32) + rng.normal(0, 16, size=(height, width, 3))
    buffer = BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def imagenet_like_folder(root: Path, count: int, classes: int, size: tuple[int, int] = (500, 375),
                         distinct: int = 64, seed: int = 0) -> dict[str, float]:
    """``root/imagefolder/train/class_<k>/<n>.JPEG``: `count` files over `classes` folders, `distinct`
    different encodings written round-robin (decoding cost depends on the content's statistics, not on
    each file being unique; encoding thousands would take longer than the measurement). Returns the
    folder's facts: files, classes, width, height, mean bytes per file."""
    if count < 1 or classes < 1:
        raise ValueError(f"need count >= 1 and classes >= 1, got {count} and {classes}")
    rng = np.random.default_rng(seed)
    encoded = [imagenet_like_jpeg(rng, *size) for _ in range(min(distinct, count))]
    base = root / "imagefolder" / "train"
    total = 0
    for n in range(count):
        path = base / f"class_{n % classes:03d}" / f"{n:06d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = encoded[n % len(encoded)]
        path.write_bytes(data)
        total += len(data)
    return {"files": count, "classes": min(classes, count), "width": size[0], "height": size[1],
            "mean_bytes": total / count}
