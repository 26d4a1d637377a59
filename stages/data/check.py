"""Find unreadable images before a run needs them: a fast header check or a full decode, in parallel.

``check_images`` opens every file-backed image of a ``LabeledImages`` (in-memory arrays need no
check) with a thread pool: ``decode=False`` reads each header (format, size: catches empty, foreign
and garbage files in ~1 ms per image), ``decode=True`` decodes every pixel as training does (also
catches truncated files). Used by ``python -m stages.data check``.

``check_images_once`` is the check a training job runs: the same check, done once per dataset
version. Its verdict is stored as a stamp keyed by a fingerprint of the image list (each file's
path, size and modification time, from ``os.stat``, which opens nothing: seconds for ImageNet's
1.28 M files instead of minutes of header reads), so the next job on an unchanged dataset reads
the stamp and opens no image. Any file added, removed, resized or rewritten (a new mtime) changes
the fingerprint and the next job checks again. Stamps live in `stamp_dir` (a per-user cache, not
the dataset folder, which is often read-only, shared, and scanned by the adapters).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import PIL
from PIL import UnidentifiedImageError
from tqdm import tqdm

from stages.data.layout import PathList
from stages.data.source import ImageRef, LabeledImages, UnreadableImage, max_image_pixels, open_image
from stages.io import atomic_write_json, held_lock

CHECK_VERSION = 1
"""Part of every stamp's key: bump it when `image_problem` learns to find something new, so that every
dataset is checked again once."""

STAMP_DIR_ENV = "STAGES_CHECK_STAMPS"

STAMP_WAIT_S = 2 * 3600.0
"""Longest wait for another job's check of the same dataset version before checking it here as well."""

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


def _problems(refs: list[ImageRef], decode: bool, workers: int | None, progress: bool,
              name: str) -> list[tuple[int, str]]:
    """``(position in refs, reason)`` of every unreadable image in `refs`, in order, read by a thread pool."""
    chunks = [refs[start:start + CHUNK] for start in range(0, len(refs), CHUNK)]
    bad: list[tuple[int, str]] = []
    with ThreadPoolExecutor(max_workers=workers or min(16, (os.cpu_count() or 1) * 2)) as pool, \
            tqdm(total=len(refs), desc=f"{'decode' if decode else 'header'} check {name}", unit="img",
                 disable=not progress or not refs) as bar:
        for start, problems in zip(range(0, len(refs), CHUNK),
                                   pool.map(lambda chunk: [image_problem(p, decode) for p in chunk], chunks)):
            bad += [(start + offset, problem) for offset, problem in enumerate(problems) if problem is not None]
            bar.update(len(problems))
    return bad


def check_images(source: LabeledImages, decode: bool = False, workers: int | None = None,
                 progress: bool = False) -> list[tuple[ImageRef, str]]:
    """``(image, reason)`` for every unreadable image of `source` (files and shard members), in dataset order."""
    refs = [image for image in source.images if not isinstance(image, np.ndarray)]
    return [(refs[index], reason) for index, reason in _problems(refs, decode, workers, progress, source.name)]

def stamp_dir() -> Path:
    """Where check stamps live: ``$STAGES_CHECK_STAMPS``, else ``$XDG_CACHE_HOME/stages/checks``, else
    ``~/.cache/stages/checks`` (on a cluster, the home folder every node of a user's jobs shares)."""
    if os.environ.get(STAMP_DIR_ENV):
        return Path(os.environ[STAMP_DIR_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stages" / "checks"


def _backing_file(ref: ImageRef) -> str | None:
    """The file whose stat stands for `ref`: itself, or the shard holding it; None for anything else."""
    if isinstance(ref, (str, Path)):
        return str(ref)
    shard = getattr(ref, "shard", None)
    return str(shard) if shard is not None else None


def _file_state(path: str) -> str:
    """``size:mtime_ns`` of `path` (``missing`` when absent): what a rewrite, truncation or copy changes."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "missing"
    return f"{info.st_size}:{info.st_mtime_ns}"


def _listing(source: LabeledImages) -> tuple[list[int], list[str], list[str]] | None:
    """``(positions in source.images, names, backing files)`` of the file-backed images; None when one of them
    is backed by no file. A `PathList` is read as strings: a ``Path`` per image costs about as much as its
    stat (pathlib parses every one), half a minute for ImageNet's train set."""
    images = source.images
    if isinstance(images, PathList):
        base = str(images.base)
        names = [os.path.join(base, relative.decode("utf-8", "surrogateescape")) for relative in images.relative_names()]
        return list(range(len(names))), names, names
    positions, names, files = [], [], []
    for position, ref in enumerate(images):
        if isinstance(ref, np.ndarray):
            continue
        backing = _backing_file(ref)
        if backing is None:
            return None
        positions.append(position), names.append(str(ref)), files.append(backing)
    return positions, names, files


def _fingerprint(name: str, names: list[str], files: list[str], workers: int | None, progress: bool) -> str:
    unique = list(dict.fromkeys(files))  # a shard's members share one stat
    chunks = [unique[start:start + CHUNK] for start in range(0, len(unique), CHUNK)]
    states: dict[str, str] = {}
    # stat is one metadata round trip on a network filesystem: overlap them as the header check does.
    with ThreadPoolExecutor(max_workers=workers or min(16, (os.cpu_count() or 1) * 2)) as pool, \
            tqdm(total=len(unique), desc=f"stat {name}", unit="file", disable=not progress or not unique) as bar:
        for chunk, chunk_states in zip(chunks, pool.map(lambda chunk: [_file_state(path) for path in chunk], chunks)):
            states.update(zip(chunk, chunk_states))
            bar.update(len(chunk))
    digest = hashlib.sha256(json.dumps({"version": CHECK_VERSION, "max_pixels": max_image_pixels(),
                                        "pil": PIL.__version__}).encode())
    for image, path in zip(names, files):
        digest.update(f"{image}\0{states[path]}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def dataset_fingerprint(source: LabeledImages, workers: int | None = None, progress: bool = False) -> str | None:
    """sha256 of `source`'s file-backed image list, in order, with each file's size and mtime from ``os.stat``
    (plus the check's version, the decode cap and PIL's version, which change verdicts); None when an
    image is backed by no file (nothing to stat)."""
    listing = _listing(source)
    return None if listing is None else _fingerprint(source.name, listing[1], listing[2], workers, progress)


def _stamp_path(directory: Path, source: LabeledImages, fingerprint: str, decode: bool) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", source.name)
    return directory / f"{name}-{'decode' if decode else 'header'}-{fingerprint[:32]}.json"


def _read_stamp(path: Path, fingerprint: str, count: int) -> list[tuple[int, str]] | None:
    """The stamped ``(position in source.images, reason)`` pairs, or None when `path` is absent or not this version's."""
    try:
        stamp = json.loads(path.read_text(encoding="utf-8"))
        if stamp["fingerprint"] != fingerprint or stamp["images"] != count:
            return None
        return [(int(position), str(reason)) for position, reason in stamp["bad"]]
    except (OSError, ValueError, KeyError, TypeError):  # absent, torn or foreign: check again
        return None


def check_images_once(source: LabeledImages, decode: bool = False, workers: int | None = None,
                      progress: bool = False, stamps: Path | None = None,
                      recheck: bool = False) -> list[tuple[ImageRef, str]]:
    """`check_images`, once per dataset version: the verdict (bad images included) is stamped in `stamps`
    (default `stamp_dir`) under the fingerprint of the image list, and reused while it is unchanged
    (`recheck`: check and stamp even so, as ``python -m stages.data check`` does).

    A decode stamp also answers a header check (a decode finds everything a header read finds). Jobs
    that start together on a new version wait for the first one's check (a lock beside the stamp) and
    read its stamp. A stamp folder that cannot be written costs only the reuse: the check still runs."""
    listing = _listing(source)
    if listing is None or not listing[0]:
        return check_images(source, decode, workers, progress)
    positions, names, files = listing
    fingerprint = _fingerprint(source.name, names, files, workers, progress)
    directory = Path(stamps) if stamps is not None else stamp_dir()
    target = _stamp_path(directory, source, fingerprint, decode)
    candidates = [target] if decode else [target, _stamp_path(directory, source, fingerprint, True)]

    def stamped() -> list[tuple[ImageRef, str]] | None:
        for candidate in candidates:
            verdict = _read_stamp(candidate, fingerprint, len(positions))
            if verdict is not None:
                print(f"{source.name}: {len(positions)} images unchanged since their check ({candidate}): "
                      f"{len(verdict)} unreadable", file=sys.stderr)
                return [(source.images[position], reason) for position, reason in verdict]
        return None

    if not recheck and (verdict := stamped()) is not None:
        return verdict
    with ExitStack() as stack:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            held = stack.enter_context(held_lock(target.with_suffix(".lock"),
                                                 f"checking the {len(positions)} images of {source.name}", STAMP_WAIT_S))
        except OSError as error:
            print(f"warning: cannot keep image-check stamps in {directory} ({error}); checking without one "
                  f"(set {STAMP_DIR_ENV} to a writable folder to check each dataset version once)", file=sys.stderr)
            return check_images(source, decode, workers, progress)
        if held and not recheck and (verdict := stamped()) is not None:  # checked by another job meanwhile
            return verdict
        started = time.time()
        refs = [source.images[position] for position in positions]
        bad = [(positions[index], reason) for index, reason in _problems(refs, decode, workers, progress, source.name)]
        record: dict[str, Any] = {
            "dataset": source.name, "decode": decode, "fingerprint": fingerprint, "images": len(positions),
            "bad": [[position, reason] for position, reason in bad], "checked": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(time.time() - started, 3), "check_version": CHECK_VERSION,
        }
        try:
            atomic_write_json(target, record)
        except OSError as error:
            print(f"warning: cannot write the image-check stamp {target} ({error}); the next job checks again",
                  file=sys.stderr)
        return [(source.images[position], reason) for position, reason in bad]
