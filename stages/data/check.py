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
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from stages.data.source import LabeledImages


def image_problem(path: Path, decode: bool) -> str | None:
    """Why `path` cannot be used as an image (None when it can): header only, or a full decode."""
    try:
        with Image.open(path) as image:
            if decode:
                image.convert("RGB")
            elif image.width < 1 or image.height < 1:
                return f"empty image ({image.width}x{image.height})"
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:  # PIL raises SyntaxError on bad headers
        return str(error) or type(error).__name__
    return None


def check_images(source: LabeledImages, decode: bool = False, workers: int | None = None,
                 progress: bool = False) -> list[tuple[Path, str]]:
    """``(path, reason)`` for every unreadable image of `source`, in dataset order."""
    paths = [Path(image) for image in source.images if not isinstance(image, np.ndarray)]
    if not paths:
        return []
    workers = workers or min(16, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        problems = pool.map(image_problem, paths, [decode] * len(paths), chunksize=64)
        results = list(tqdm(problems, total=len(paths), desc=f"{'decode' if decode else 'header'} check "
                            f"{source.name}", unit="img", disable=not progress))
    return [(path, problem) for path, problem in zip(paths, results) if problem is not None]
