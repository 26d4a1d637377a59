"""Evaluation images decoded once per (image set, geometry) and memory-mapped afterwards.

Evaluation preprocessing is deterministic: open_clip's ``preprocess_val`` resizes, center-crops
and converts to RGB on the PIL image, then ``ToTensor`` + ``Normalize``. The PIL part (JPEG
decoding and bicubic resizing, a few ms per ImageNet image per core) is the same for every
checkpoint, every method and every WiSE-FT α, so with a cache folder it runs once: each
image's crop is stored as uint8 ``H x W x 3`` in one ``.npy`` file (ImageNet val at 224 px:
50,000 x 150,528 B = 7.5 GB) that later evaluations memory-map, and the paper's 990 WiSE-FT
evaluations stop being decode-bound. ``ToTensor`` turns that array into exactly the tensor it
makes from the PIL crop, so cached and uncached evaluations give identical predictions
(tests/test_evaluation.py).

The file name is a hash of the image list (base folder and relative paths) and of the PIL
transforms' repr (sizes, interpolation), so ViT-B-16 and ViT-L-14 with the same 224 px
bicubic preprocessing share one file, and anything else gets its own. Concurrent jobs (a SLURM
array of α values) serialise on a lock file beside it (`lock_file`, a filelock soft lease, which network
filesystems honour where ``flock`` is not: see ``stages.io``): one builds, the others wait and then
read. A waiter whose lock stays held for `WAIT_LIMIT_S` (a holder alive but stuck) evaluates without
the cache, with the same results. A build writes ``<file>.<host>-<pid>.tmp`` and renames it into
place; the temporary file of a build that was killed (7.5 GB for ImageNet val) is removed by the
next lock holder, since the lock admits one builder at a time and that builder is then itself.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T
from tqdm import tqdm

from stages.data.layout import PathList
from stages.data.source import DatasetError, ImageDataset, LabeledImages, load_image
from stages.io import held_lock

WAIT_LIMIT_S = 4 * 3600.0
"""Longest wait for another job's build of a cache file (ImageNet val: minutes to an hour on a few cores)."""


def split_at_to_tensor(preprocess: Callable[[Image.Image], torch.Tensor]) -> tuple[T.Compose, T.Compose] | None:
    """(PIL part, tensor part) of a torchvision ``Compose`` split before its ``ToTensor``; None without one."""
    if not isinstance(preprocess, T.Compose):
        return None
    steps = preprocess.transforms
    positions = [i for i, step in enumerate(steps) if isinstance(step, T.ToTensor)]
    if len(positions) != 1:
        return None
    return T.Compose(steps[: positions[0]]), T.Compose(steps[positions[0]:])


def describe(step: Callable[..., Any]) -> str:
    """A transform's settings as text that is the same in every process (no memory addresses)."""
    if inspect.isfunction(step) or inspect.ismethod(step):
        return f"{step.__module__}.{step.__qualname__}"
    text = repr(step)
    if " at 0x" in text:  # a class without its own __repr__: name and attributes instead
        return f"{type(step).__module__}.{type(step).__qualname__}{sorted(vars(step).items())!r}"
    return text


def cache_file(cache_dir: Path, source: LabeledImages, pil_part: T.Compose) -> Path:
    """``<cache_dir>/<dataset>-<hash of image list and PIL transforms>.npy``."""
    assert isinstance(source.images, PathList)
    digest = hashlib.sha256()
    settings = {"base": str(source.images.base.resolve()), "transforms": [describe(step) for step in pil_part.transforms]}
    digest.update(json.dumps(settings).encode())
    for relative in source.images.relative_names():
        digest.update(relative + b"\0")
    return Path(cache_dir) / f"{source.name}-{digest.hexdigest()[:20]}.npy"


class _Crops(Dataset):
    """The PIL part of the preprocessing, as uint8 arrays (what the cache stores)."""

    def __init__(self, source: LabeledImages, pil_part: T.Compose) -> None:
        self.source, self.pil_part = source, pil_part

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> np.ndarray:
        return np.asarray(self.pil_part(load_image(self.source.images[index])), dtype=np.uint8)


def lock_file(path: Path) -> Path:
    """The lock of cache file `path`: ``<file>.lock`` (``<name>.lock``, without ``.npy``, was the flock of older
    code; it is empty, and a soft lease would take it for a holder that recorded no pid)."""
    return path.with_name(f"{path.name}.lock")


def _temporary(path: Path) -> Path:
    """This process's temporary file for building `path` (host and pid say whose it is to a reader)."""
    return path.with_name(f"{path.name}.{socket.gethostname()}-{os.getpid()}.tmp")


def remove_leftovers(path: Path) -> list[Path]:
    """Delete the temporary files of earlier builds of `path`; call only while holding its lock (which
    admits one builder at a time, so every such file belongs to a build that is gone)."""
    # ".tmp<pid>" is the name builds used before host names were added.
    leftovers = sorted({*path.parent.glob(f"{path.name}.*.tmp"), *path.parent.glob(f"{path.name}.tmp*")})
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)
        print(f"removed {leftover}: the temporary file of a crop-cache build that did not finish")
    return leftovers


def _build(path: Path, source: LabeledImages, pil_part: T.Compose, workers: int) -> None:
    """Decode every image once into a temporary ``.npy``, then rename it into place (atomic)."""
    loader = DataLoader(_Crops(source, pil_part), batch_size=64, num_workers=workers, collate_fn=list)
    temporary = _temporary(path)
    array: np.ndarray | None = None
    position = 0
    try:
        for crops in tqdm(loader, desc=f"caching {source.name} crops", unit="batch", leave=False):
            if array is None:
                array = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.uint8,
                                                  shape=(len(source), *crops[0].shape))
            for crop in crops:
                if crop.shape != array.shape[1:]:
                    raise DatasetError(f"{source.images[position]}: crop of shape {crop.shape}, expected "
                                       f"{array.shape[1:]}; the evaluation transform must give one size")
                array[position] = crop
                position += 1
        if array is None:
            raise DatasetError(f"{source.name}: no images to cache")
        array.flush()
        del array
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


class CachedImages(ImageDataset):
    """``ImageDataset``'s samples, with each image read from the cached crops instead of its file."""

    def __init__(self, source: LabeledImages, crops: np.ndarray, tensor_part: T.Compose) -> None:
        super().__init__(source, tensor_part)
        self.crops = crops

    def image(self, index: int) -> torch.Tensor:
        return self.transform(np.array(self.crops[index]))  # ToTensor of the uint8 crop, then Normalize


def evaluation_images(
    source: LabeledImages, preprocess: Callable[[Image.Image], torch.Tensor], cache_dir: Path | None, workers: int,
) -> Dataset:
    """The evaluation dataset of `source`: from the crop cache in `cache_dir` (built on first use), else decoded.

    Images held in memory (CIFAR, STL10, the demo) and transforms without a ``ToTensor`` step
    are always decoded: there is nothing to save, or nothing safe to cache.
    """
    parts = split_at_to_tensor(preprocess)
    if cache_dir is None or parts is None or not isinstance(source.images, PathList):
        return ImageDataset(source, preprocess)
    pil_part, tensor_part = parts
    path = cache_file(cache_dir, source, pil_part)
    with held_lock(lock_file(path), f"building {path.name}", WAIT_LIMIT_S) as held:
        if not held:  # the message said which lock and holder; decoding gives the same predictions
            return ImageDataset(source, preprocess)
        remove_leftovers(path)
        legacy = path.with_suffix(".lock")  # the empty flock file of older code (a soft lease would wait on it)
        if legacy.is_file() and legacy.stat().st_size == 0:
            legacy.unlink(missing_ok=True)
        if not path.is_file():
            _build(path, source, pil_part, workers)
    crops = np.load(path, mmap_mode="r", allow_pickle=False)
    if len(crops) != len(source):
        raise DatasetError(f"{path} holds {len(crops)} crops for {len(source)} images; delete it to rebuild")
    return CachedImages(source, crops, tensor_part)
