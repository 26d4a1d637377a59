"""Small file helpers shared by every stage: atomic writes, content hashes, locks and scratch folders.

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
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from filelock import SoftFileLease, Timeout

from stages.errors import PipelineError


class DiskFullError(PipelineError, OSError):
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


def file_digest(path: Path, algorithm: str = "sha256", header: bytes = b"", chunk_bytes: int = 1 << 20) -> str:
    """Hex digest (hashlib's `algorithm`) of `header` followed by a file's bytes, read in chunks."""
    digest = hashlib.new(algorithm, header)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return file_digest(path)


def sha256_json(payload: Any) -> str:
    """Hex sha256 of the canonical JSON form of `payload` (sorted keys, no spaces, UTF-8)."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# --- Locks and scratch folders on shared filesystems ------------------------------------------------------
# fcntl/flock locks are not honoured by every network filesystem (some NFS setups, Lustre without
# flock, many FUSE mounts), so cross-job locks are filelock's soft leases: a marker file created with
# O_EXCL (atomic on those filesystems too) that its holder refreshes from a heartbeat thread. A holder
# that dies is detected by its peers: at once on its own host (its pid is gone), and after
# LEASE_SECONDS without a refresh from any other host.

LEASE_SECONDS = 60.0
"""How long a lock's marker may go unrefreshed (its holder refreshes it every third of that) before another
host treats the holder as gone and takes the lock over."""

STALE_SCRATCH_SECONDS = 3 * LEASE_SECONDS
"""Age of an unrefreshed owner marker after which `scratch_dir` removes another process's scratch folder."""

LEGACY_SCRATCH_SECONDS = 24 * 3600.0
"""Scratch folders with no owner marker (written before markers existed) are removed after this age."""

OWNER_MARKER = ".owner.lock"


def lease_lock(lock_file: Path) -> SoftFileLease:
    """A `filelock.SoftFileLease` on `lock_file` (see the comment above), its folder created."""
    Path(lock_file).parent.mkdir(parents=True, exist_ok=True)
    return SoftFileLease(str(lock_file), lease_duration=LEASE_SECONDS)


def lock_holder(lock: SoftFileLease) -> str:
    """``pid P on host H`` of the process a lease's marker names, or a placeholder when it names none."""
    owner = getattr(lock, "owner", None)
    return f"pid {owner.pid} on host {owner.hostname}" if owner is not None else "a process that recorded no pid"


@contextmanager
def held_lock(lock_file: Path, what: str, wait_limit_s: float, notify_every_s: float = 300.0) -> Iterator[bool]:
    """Hold the lease on `lock_file` for the block; yield True when held, False when it stayed taken for
    `wait_limit_s` (the caller then goes on without what the lock guards, and says so).

    While waiting it prints one line at first and every `notify_every_s`, naming the lock file, its holder
    and `what` the holder is doing, so a user who finds a job waiting knows which file and process to look at."""
    lock = lease_lock(lock_file)
    started = time.monotonic()
    last_note: list[float] = []

    def note() -> bool:  # filelock's cancel_check: called between attempts; never cancels
        now = time.monotonic()
        if not last_note or now - last_note[-1] >= notify_every_s:
            last_note.append(now)
            print(f"waiting for {lock_file} (held by {lock_holder(lock)}: {what}) for {now - started:.0f} s; "
                  f"a holder that is gone is taken over after {LEASE_SECONDS:.0f} s", flush=True)
        return False

    try:
        lock.acquire(timeout=wait_limit_s, cancel_check=note)
    except Timeout:
        held = False
        print(f"warning: {lock_file} stayed held by {lock_holder(lock)} ({what}) for {wait_limit_s:.0f} s; going on "
              f"without it. If that process is gone and the file stays, delete {lock_file}", flush=True)
    else:
        held = True
    if not held:
        yield False  # outside the except clause: an error in the caller's block is not chained to the Timeout
        return
    try:
        yield True
    finally:
        lock.release()


def _scratch_owner_gone(folder: Path) -> bool:
    """Whether the process that made scratch folder `folder` is gone (its folder is then only a leftover)."""
    marker = folder / OWNER_MARKER
    try:
        age = time.time() - marker.stat().st_mtime
    except FileNotFoundError:  # no marker: written by older code, or a folder whose marker is being created
        try:
            return time.time() - folder.stat().st_mtime > LEGACY_SCRATCH_SECONDS
        except FileNotFoundError:
            return False  # removed meanwhile by another sweeper
    if age > STALE_SCRATCH_SECONDS:  # no refresh for three lease periods: gone, on whatever host it ran
        return True
    lock = SoftFileLease(str(marker), lease_duration=LEASE_SECONDS)  # not lease_lock: never recreate the folder
    try:  # one attempt: succeeds at once when the holder ran on this host and its pid is gone
        lock.acquire(blocking=False)
    except Timeout:
        return False
    lock.release()
    return True


def remove_dead_scratch(parent: Path, prefix: str) -> list[Path]:
    """Remove the scratch folders ``<parent>/<prefix>*`` of processes that are gone; return those removed."""
    removed = []
    for folder in sorted(Path(parent).glob(f"{prefix}*")):
        if folder.is_dir() and _scratch_owner_gone(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


@contextmanager
def scratch_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A private temporary folder ``<parent>/<prefix><host>-<pid>-<random>`` for the block, removed after it.

    Unlike ``tempfile.TemporaryDirectory``, a process killed with its folder in place (SIGKILL, a lost node)
    does not leave it forever: the folder holds an owner lease (`OWNER_MARKER`), and every `scratch_dir` of
    the same `parent` and `prefix` removes, before and after its block, the folders whose owner is gone
    (`remove_dead_scratch`; after the block, since a holder on another host is only known gone once its
    marker has gone unrefreshed for `STALE_SCRATCH_SECONDS`)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    for folder in remove_dead_scratch(parent, prefix):
        print(f"removed {folder}: scratch files of a process that is gone")
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}{socket.gethostname()}-{os.getpid()}-", dir=parent))
    owner = lease_lock(folder / OWNER_MARKER)
    owner.acquire()
    try:
        yield folder
    finally:
        owner.release()
        shutil.rmtree(folder, ignore_errors=True)
        for leftover in remove_dead_scratch(parent, prefix):
            print(f"removed {leftover}: scratch files of a process that is gone")
