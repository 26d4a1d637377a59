"""Find unreadable images before a run needs them: a fast header check or a full decode, in parallel.

``check_images`` opens every file-backed image of a ``LabeledImages`` (in-memory arrays need no
check) with a thread pool: ``decode=False`` reads each header (format, size: catches empty, foreign
and garbage files in ~1 ms per image), ``decode=True`` decodes every pixel as training does (also
catches truncated files). Used by ``python -m stages.data check`` and before every training run.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import UnidentifiedImageError
from tqdm import tqdm

from stages.data.source import ImageRef, LabeledImages, UnreadableImage, open_image

CHUNK = 256
"""Images per thread-pool task (a million-image split is a few thousand tasks, not a million futures)."""


def image_problem(ref: ImageRef, decode: bool) -> str | None:
    """Why `ref` (a path, or a file inside a shard) cannot be used as an image (None when it can):
    header only, or a full decode. An image over the decode cap (`stages.data.source.max_image_pixels`) is
    unreadable at its header, as `load_image` refuses it."""
    try:
        with open_image(ref) as image:
            if decode:
                image.convert("RGB")
            elif image.width < 1 or image.height < 1:
                return f"empty image ({image.width}x{image.height})"
    except UnreadableImage as error:
        return error.reason
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:  # PIL raises SyntaxError on bad headers
        return str(error) or type(error).__name__
    return None


def check_images(source: LabeledImages, decode: bool = False, workers: int | None = None,
                 progress: bool = False) -> list[tuple[ImageRef, str]]:
    """``(image, reason)`` for every unreadable image of `source` (files and shard members), in dataset order."""
    paths = [image for image in source.images if not isinstance(image, np.ndarray)]
    chunks = [paths[start:start + CHUNK] for start in range(0, len(paths), CHUNK)]
    bad: list[tuple[ImageRef, str]] = []
    with ThreadPoolExecutor(max_workers=workers or min(16, (os.cpu_count() or 1) * 2)) as pool, \
            tqdm(total=len(paths), desc=f"{'decode' if decode else 'header'} check {source.name}", unit="img",
                 disable=not progress or not paths) as bar:
        for chunk, problems in zip(chunks, pool.map(lambda chunk: [image_problem(p, decode) for p in chunk], chunks)):
            bad += [(path, problem) for path, problem in zip(chunk, problems) if problem is not None]
            bar.update(len(chunk))
    return bad
