"""Small file helpers shared by every stage: atomic writes and content hashes.

Every file a stage hands to the next one is written through these helpers, so a killed job
never leaves a half-written JSON or checkpoint behind (write to a temporary file in the same
folder, flush, fsync, then rename, which is atomic on POSIX filesystems).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


class DiskFullError(OSError):
    """A write ran out of space; the file it would have replaced is intact."""


def _gigabytes(count: float) -> str:
    return f"{count / 1e9:.2f} GB"


def _disk_full(path: Path, error: BaseException, needed: int | None) -> DiskFullError | None:
    """The `DiskFullError` for a failed write of `path`, when the disk is what failed; else None.

    torch's zip writer reports ENOSPC as ``RuntimeError: ... file write failed``, so besides the
    errno, a write that failed with less free space left than it needed counts as disk full.
    """
    free = shutil.disk_usage(path.parent).free
    out_of_space = isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
    if not out_of_space and not (needed is not None and free < needed) and free > 0:
        return None
    size = f"needs about {_gigabytes(needed)}, " if needed is not None else ""
    return DiskFullError(errno.ENOSPC, f"no space left on device writing {path} ({size}{_gigabytes(free)} free there; "
                         "a quota may be lower). Free space or point results elsewhere, then rerun: the previous "
                         "file is intact")


@contextmanager
def _atomic_path(path: Path, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    A block that fails for want of disk space (`needed`: the bytes it writes, when known) raises
    `DiskFullError` naming the path and the sizes instead of the writer's own error.
    """
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
    except (OSError, RuntimeError) as error:
        tmp.unlink(missing_ok=True)  # first: the check below should see the space it held as free
        full = _disk_full(path, error, needed)
        if full is None:
            raise
        raise full from None
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

    with _atomic_path(Path(path), needed=_tensor_bytes(payload)) as tmp:
        torch.save(payload, tmp)


def _tensor_bytes(payload: Any) -> int:
    """The bytes of every tensor in a (nested) payload: about what torch.save writes."""
    if hasattr(payload, "untyped_storage"):
        return payload.untyped_storage().nbytes()
    if isinstance(payload, dict):
        return sum(_tensor_bytes(value) for value in payload.values())
    if isinstance(payload, (list, tuple)):
        return sum(_tensor_bytes(value) for value in payload)
    return 0


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
