"""Safe, streaming extraction of downloaded archives (tar, tar.gz, zip) for the prepare routes.

Archives come from the network, so every member name is checked before anything is written: an
absolute name, a ``..`` component, a link that points outside the target, or a device file is
refused with a ``DatasetError`` naming the archive and the member (nothing is silently skipped).
Tars are read as streams (``r|*``): each member is written once, straight to its final place, so a
138 GB ImageNet train tar is never extracted twice nor held in memory. ``strip`` removes the
archive's top folder (``imagenet-r/`` in ``imagenet-r.tar``), so a route can write the folder under
the name its layout uses. Standard library only.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from stages.data.source import DatasetError

COPY_BYTES = 1 << 20


def member_path(archive: Path, name: str, strip: str | None = None) -> str | None:
    """The safe relative POSIX path of member `name` after removing `strip` (None: the `strip` folder itself).

    Refuses absolute names, ``..`` components and members outside `strip`, naming the archive and member.
    """
    slashed = name.replace("\\", "/")
    if slashed.startswith("/") or (len(slashed) > 1 and slashed[1] == ":") or ".." in slashed.split("/"):
        raise DatasetError(f"{archive}: member {name!r} has an absolute path or '..'; refusing to extract this "
                           "archive (it is not the official file: delete it and download it again)")
    normal = posixpath.normpath(slashed)
    if strip:
        prefix = strip.strip("/")
        if normal == prefix or normal == ".":
            return None
        if not normal.startswith(prefix + "/"):
            raise DatasetError(f"{archive}: member {name!r} is not under {prefix}/ as in the official archive; "
                               "delete the file and download it again")
        normal = normal[len(prefix) + 1:]
    return None if normal == "." else normal


def _write_stream(source: IO[bytes], destination: Path) -> None:
    """Copy one member's bytes to `destination` (its folder created)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    with open(destination, "wb") as handle:
        shutil.copyfileobj(source, handle, COPY_BYTES)


def _inside(target: Path, path: Path) -> bool:
    """Whether `path` (resolved without touching the filesystem) lies inside `target`."""
    return os.path.commonpath([os.path.abspath(target), os.path.abspath(path)]) == os.path.abspath(target)


def iter_tar(archive: Path | IO[bytes], name: str | None = None) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """Stream the members of a tar (any compression) in archive order: ``(tar, member)`` pairs.

    `archive` is a path or an open binary stream (e.g. a member of an outer tar); `name` labels errors.
    """
    label = name or str(archive)
    try:
        if isinstance(archive, (str, Path)):
            tar = tarfile.open(archive, mode="r|*")
        else:
            tar = tarfile.open(fileobj=archive, mode="r|*")
        with tar:
            for member in tar:
                yield tar, member
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DatasetError(f"{label}: not a readable tar archive ({error}); delete it and download it again") from error


def extract_tar(archive: Path | IO[bytes], target: Path, strip: str | None = None, name: str | None = None,
                destination: Callable[[str], str | None] | None = None) -> int:
    """Extract a tar into `target` safely and in one pass; return the number of regular files written.

    `destination(relative)` may rename a member (None: leave it out on purpose, e.g. a file the
    layout does not use); by default a member keeps its path below `strip`.
    """
    label = Path(name or str(archive))
    target = Path(target)
    written = 0
    for tar, member in iter_tar(archive, str(label)):
        relative = member_path(label, member.name, strip)
        if relative is None:
            continue
        if destination is not None:
            relative = destination(relative)
            if relative is None:
                continue
        path = target / relative
        if member.isdir():
            path.mkdir(parents=True, exist_ok=True)
        elif member.isfile():
            source = tar.extractfile(member)
            assert source is not None  # a regular member always has data
            _write_stream(source, path)
            written += 1
        elif member.issym() or member.islnk():
            link = member.linkname
            if member.issym():
                resolved = path.parent / link
            else:
                resolved = target / (member_path(label, link, strip) or "")
            if posixpath.isabs(link) or not _inside(target, resolved):
                raise DatasetError(f"{label}: member {member.name!r} links outside the dataset folder ({link!r}); "
                                   "refusing to extract this archive (delete it and download it again)")
            path.parent.mkdir(parents=True, exist_ok=True)
            if member.issym():
                os.symlink(link, path)
            else:
                os.link(resolved, path)
        else:
            raise DatasetError(f"{label}: member {member.name!r} is a device or special file; refusing to extract "
                               "this archive (it is not the official file: delete it and download it again)")
    return written


def extract_zip(archive: Path, target: Path, strip: str | None = None,
                destination: Callable[[str], str | None] | None = None) -> int:
    """Extract a zip into `target` safely (names checked as for tars); return the number of files written."""
    written = 0
    try:
        with zipfile.ZipFile(archive) as handle:
            for info in handle.infolist():
                relative = member_path(archive, info.filename, strip)
                if relative is None:
                    continue
                if destination is not None:
                    relative = destination(relative)
                    if relative is None:
                        continue
                if info.is_dir():
                    (target / relative).mkdir(parents=True, exist_ok=True)
                    continue
                with handle.open(info) as source:
                    _write_stream(source, target / relative)
                written += 1
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise DatasetError(f"{archive}: not a readable zip archive ({error}); delete it and download it again") from error
    return written
