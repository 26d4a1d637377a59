"""The generic labelled-image source every dataset adapter returns, and the dataset registry.

An adapter reads a benchmark's standard on-disk layout and returns a ``LabeledImages``: one
image reference (a file path or an in-memory uint8 array) per sample, its label, optionally its
group, and the class names in label order. Training and evaluation only ever see this type, so
a new dataset is one registered function, with the ``Layout`` it has under the data root (which
the workflow checks before any job runs; none for datasets named by their split, e.g. CSV files)::

    @register_dataset("waterbirds", WATERBIRDS)
    def waterbirds(root: Path, split: str) -> LabeledImages: ...

Importing ``stages.data`` (and so this module) imports every adapter, which registers them all.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from stages.errors import PipelineError

if TYPE_CHECKING:  # torch is imported by the stages that batch images, not by listing or checking them
    import torch

    from stages.data.layout import Layout  # imports this module

ImageRef = Union[Path, np.ndarray]
DatasetBuilder = Callable[..., "LabeledImages"]  # (root, split, **options)

_DATASETS: dict[str, DatasetBuilder] = {}
_LAYOUTS: dict[str, Layout] = {}


class DatasetError(PipelineError, RuntimeError):
    """A dataset root, split, metadata file or image that cannot be used; the message says the fix."""


class UnreadableImage(DatasetError):
    """One image file that cannot be used: ``cannot read image <ref>: <reason>`` (`check_images` lists the reason)."""

    def __init__(self, ref: Any, reason: str) -> None:
        super().__init__(f"cannot read image {ref}: {reason}")
        self.ref, self.reason = ref, reason


MAX_IMAGE_PIXELS = 89_478_485
"""Decoded pixels (width x height) above which an image file is refused at its header, before any pixel is
decoded: PIL's own default warning threshold (2**30 / 4 / 3, a 268 MB RGB decode, e.g. 9459 x 9459),
far above any benchmark photo here. A decompression bomb (a 30,000 x 30,000 PNG is 2.7 MB on disk and
2.7 GB decoded, in every data-loader worker at once) is then one unreadable file, not a crash.
Raise it with the environment variable `MAX_IMAGE_PIXELS_ENV`."""

MAX_IMAGE_PIXELS_ENV = "STAGES_MAX_IMAGE_PIXELS"


def max_image_pixels() -> int:
    """The decode cap: ``$STAGES_MAX_IMAGE_PIXELS`` when set (an integer, ``1e9`` allowed), else `MAX_IMAGE_PIXELS`.

    Read at every call, not at import: data-loader workers and tests see the environment as it is."""
    raw = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip()
    if not raw:
        return MAX_IMAGE_PIXELS
    try:
        limit = float(raw)
    except ValueError:
        limit = 0.0
    if not 1 <= limit < float("inf") or limit != int(limit):
        raise DatasetError(f"{MAX_IMAGE_PIXELS_ENV}={raw!r} is not a positive whole number of pixels "
                           f"(e.g. {MAX_IMAGE_PIXELS_ENV}=400000000); unset it for the default {MAX_IMAGE_PIXELS:,}")
    return int(limit)


def _too_large(pixels: str, limit: int) -> str:
    """Why an image over the decode cap is refused, and the two fixes."""
    return (f"{pixels}, over the decode limit of {limit:,} pixels (a decompression bomb, or an image far larger "
            f"than training needs); nothing was decoded. Replace it with a smaller copy, or raise the limit with "
            f"the environment variable {MAX_IMAGE_PIXELS_ENV}")


@contextmanager
def open_image(ref: Any) -> Iterator[Image.Image]:
    """``Image.open`` of a path or of an object with ``open()`` (a shard member), its header checked against
    `max_image_pixels` before the caller decodes anything: over it, `UnreadableImage` naming the file, its
    size, the limit and the fix.

    PIL's own check (process-wide ``Image.MAX_IMAGE_PIXELS``: a warning above it, DecompressionBombError
    above twice it) would refuse a raised cap first, so it is lifted to the cap when lower. Its warning is
    not turned into an error: ``warnings.catch_warnings`` is not thread-safe (`check_images` opens files
    from a thread pool) and is not needed, since anything PIL warns about is over the cap and refused here."""
    limit = max_image_pixels()
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < limit:
        Image.MAX_IMAGE_PIXELS = limit
    try:
        with Image.open(ref if isinstance(ref, (str, Path)) else ref.open()) as image:
            if image.width * image.height > limit:
                size = f"{image.width} x {image.height} = {image.width * image.height:,} pixels"
                raise UnreadableImage(ref, _too_large(size, limit))
            yield image
    # PIL's own check at open (over twice its limit) or at a later frame; its warning arrives as an exception
    # where warnings are errors (python -W error).
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        size = str(error).split(" exceeds")[0]  # PIL's "Image size (N pixels) exceeds limit of ..."
        raise UnreadableImage(ref, _too_large(size, limit)) from error


@dataclass
class LabeledImages:
    """Images with labels (and optional group ids) plus the class names in label order."""

    name: str
    classnames: list[str]
    images: Sequence[ImageRef]
    labels: list[int]
    groups: list[int] | None = None
    group_names: list[str] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise DatasetError(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels")
        if self.groups is not None and len(self.groups) != len(self.labels):
            raise DatasetError(f"{self.name}: {len(self.groups)} group ids but {len(self.labels)} labels")
        if self.labels and not 0 <= min(self.labels) <= max(self.labels) < len(self.classnames):
            raise DatasetError(
                f"{self.name}: labels span [{min(self.labels)}, {max(self.labels)}] "
                f"but there are {len(self.classnames)} class names"
            )

    def __len__(self) -> int:
        return len(self.labels)


def register_dataset(name: str, layout: Layout | None = None) -> Callable[[DatasetBuilder], DatasetBuilder]:
    """Decorator: make `builder(root, split)` available as ``build_dataset(name, ...)``, found under the
    data root as `layout` says (None: no fixed folder, the split names the files)."""
    if layout is not None and layout.dataset != name:
        raise ValueError(f"dataset {name!r} is registered with the layout of {layout.dataset!r}")

    def decorate(builder: DatasetBuilder) -> DatasetBuilder:
        if name in _DATASETS:
            raise ValueError(f"dataset {name!r} is registered twice")
        _DATASETS[name] = builder
        if layout is not None:
            _LAYOUTS[name] = layout
        return builder

    return decorate


def available_datasets() -> list[str]:
    """Names of every registered dataset."""
    return sorted(_DATASETS)


def dataset_layouts() -> dict[str, Layout]:
    """Dataset name -> its ``Layout``, for every dataset registered with one."""
    return dict(_LAYOUTS)


def build_dataset(name: str, root: Path | None, split: str, **options: Any) -> LabeledImages:
    """Build the registered dataset `name` for `split` from data root `root` (`options`: the dataset's own,
    e.g. ``DataConfig.csv`` for ``csv``; datasets without options take none)."""
    if name not in _DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; registered: {', '.join(available_datasets())}")
    return _DATASETS[name](Path(root) if root is not None else Path("."), split, **options)


def load_image(ref: ImageRef) -> Image.Image:
    """Open one image as RGB; a missing, corrupt or over-large (`max_image_pixels`) file fails with its path.

    Besides a path or an array, `ref` may be any object with an ``open()`` method returning a
    binary file (e.g. ``stages.data.formats.TarMember``, an image inside a tar shard)."""
    if isinstance(ref, np.ndarray):
        return Image.fromarray(ref).convert("RGB")
    try:
        with open_image(ref) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as error:
        raise UnreadableImage(ref, f"{error}. Re-extract or replace this file") from error


class ImageDataset:
    """Transforms the images of a ``LabeledImages``; yields ``{"image", "label", "index"[, "group"]}``.

    A map-style dataset for ``torch.utils.data.DataLoader`` (which needs only ``__len__`` and
    ``__getitem__``), so that importing the adapters does not import torch.
    """

    def __init__(self, source: LabeledImages, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.source = source
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source)

    def image(self, index: int) -> torch.Tensor:
        """The transformed image `index`."""
        return self.transform(load_image(self.source.images[index]))

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = {"image": self.image(index), "label": self.source.labels[index], "index": index}
        if self.source.groups is not None:
            sample["group"] = self.source.groups[index]
        return sample
