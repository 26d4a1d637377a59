"""Small file helpers shared by every stage: atomic writes and content hashes.

Every file a stage hands to the next one is written through these helpers, so a killed job
never leaves a half-written JSON or checkpoint behind (write to a temporary file in the same
folder, flush, fsync, then rename, which is atomic on POSIX filesystems).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600 files; give the result the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: Path, write: Callable[[IO[str]], None]) -> None:
    """Write a text file atomically: `write` receives an open text handle."""
    with _atomic_path(Path(path)) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        write(handle)


def atomic_write_binary(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write a binary file atomically (e.g. a PNG): `write` receives an open binary handle."""
    with _atomic_path(Path(path)) as tmp, open(tmp, "wb") as handle:
        write(handle)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically."""
    atomic_write(path, lambda handle: handle.write(text))


def atomic_write_json(path: Path, payload: Any) -> None:
    """Write `payload` as indented, key-sorted JSON, atomically."""
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(path: Path, payload: Any) -> None:
    """`torch.save` to `path` atomically (a checkpoint is either the old one or the new one)."""
    import torch  # here, not at the top: the CLIs that never save a checkpoint start without torch

    with _atomic_path(Path(path)) as tmp:
        torch.save(payload, tmp)


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_json(payload: Any) -> str:
    """Hex sha256 of the canonical JSON form of `payload` (sorted keys, no spaces, UTF-8)."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
