"""Safe, streaming extraction of downloaded archives (tar, tar.gz, zip) and the file moves the prepare routes share.

Archives come from the network (or a mirror, or a user's folder), so no member is trusted: a
name that is absolute, has a drive letter or a ``..`` component, a link whose target leaves the
dataset folder (judged both lexically and through the links already extracted, so ``up -> .``
followed by ``up/x -> ..`` is refused), a member that would be written through a link, and any
device or special file refuse the whole archive with a ``DatasetError`` naming the archive and the
member. Nothing is silently skipped, because a skipped member is a dataset that later scores on
fewer images.

Tars are read as one forward stream (``r|*``, ``open_tar``): each member is written once, straight
to its final place, so a 138 GB ImageNet train tar (a tar of tars, each streamed in turn) or a
54 GB WILDS archive is read once and never held in memory; a gzip stream is read to its end so
that its CRC-32 trailer is checked (for releases that publish no checksum this is what catches a
corrupted download). Zips are checked member by member by ``zipfile`` (CRC-32 per member).
``strip`` removes an archive's top folder where its members have it (``imagenet-r/`` in
``imagenet-r.tar``; WILDS archives may or may not have one), so a route writes the folder under
the name its layout uses. Standard library only.
"""

from __future__ import annotations

import gzip
import os
import posixpath
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from stages.data.source import DatasetError

COPY_BYTES = 1 << 20
Rename = Callable[[str], "str | None"]
"""``rename(relative)``: the path a member gets under the target, or None to leave it out on purpose."""


def _refuse(archive: str, member: str, why: str) -> DatasetError:
    return DatasetError(
        f"{archive}: member {member!r} {why}; refusing to extract this archive. It is not the official file: "
        "delete it and download it again"
    )


def member_path(archive: str, name: str, strip: str | None = None) -> str | None:
    """The normalised relative POSIX path of member `name`, with a leading `strip` folder removed if present.

    Returns None for the archive's root (``.``, or the `strip` folder itself). Refuses absolute
    names, drive letters and any ``..`` component (checked before normalising, so ``a/../..`` is refused too).
    """
    slashed = name.replace("\\", "/")
    if slashed.startswith("/") or (len(slashed) > 1 and slashed[1] == ":") or ".." in slashed.split("/"):
        raise _refuse(archive, name, "has an absolute path or '..' (it would be written outside the dataset folder)")
    relative = posixpath.normpath(slashed)
    if strip:
        prefix = strip.strip("/")
        if relative == prefix:
            return None
        if relative.startswith(prefix + "/"):
            relative = relative[len(prefix) + 1:]
    return None if relative in (".", "") else relative


def _inside(root: Path, path: Path) -> bool:
    """Whether `path` lies inside `root`, following every link that already exists on disk."""
    root_real = os.path.realpath(root)
    return os.path.commonpath([root_real, os.path.realpath(path)]) == root_real


def _destination(archive: str, member: str, target: Path, strip: str | None, rename: Rename | None) -> Path | None:
    """Where member `member` goes under `target` (None: left out), refused when its name or its destination
    (through links already extracted) is outside `target`."""
    relative = member_path(archive, member, strip)
    if relative is not None and rename is not None:
        relative = rename(relative)
    if relative is None:
        return None
    path = target / relative
    if not _inside(target, path.parent) or ((path.is_symlink() or path.exists()) and not _inside(target, path)):
        raise _refuse(archive, member, "would be written outside the dataset folder (through a link)")
    return path


def _check_link(archive: str, member: str, target: Path, path: Path, link: str, symbolic: bool, strip: str | None) -> Path:
    """The path a link member points to, refused when it is absolute or leaves `target`."""
    if symbolic:
        if link.startswith("/") or (len(link) > 1 and link[1] == ":"):
            raise _refuse(archive, member, f"is a link to the absolute path {link!r}")
        pointee = path.parent / link
    else:  # a hard link names another member of the same archive
        relative = member_path(archive, link, strip)
        if relative is None:
            raise _refuse(archive, member, f"is a hard link to the archive root {link!r}")
        pointee = target / relative
    # Both readings must stay inside: the lexical one (for parts not on disk yet) and the one that
    # follows the links already extracted (``up -> .`` then ``up/x -> ..`` is lexically inside).
    lexical = os.path.abspath(pointee)
    if not _inside(target, pointee) or os.path.commonpath([os.path.abspath(target), lexical]) != os.path.abspath(target):
        raise _refuse(archive, member, f"links outside the dataset folder ({link!r})")
    return pointee


def _write(source: IO[bytes], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        shutil.copyfileobj(source, handle, COPY_BYTES)


@contextmanager
def open_tar(source: Path | IO[bytes], label: str | None = None) -> Iterator[tarfile.TarFile]:
    """Open a tar (plain, gzip, or any ``r|*`` compression) as a forward-only stream of its members, in order.

    `source` is a path or an open binary stream (e.g. a member of an outer tar: ImageNet's train tar
    of per-class tars); `label` names it in errors. Iterate the yielded tar once; a member's data
    (``tar.extractfile(member)``) is readable until the next member. A gzip stream is drained at the
    end (its CRC-32 is checked), and any read error inside the block, a truncated archive included,
    becomes one DatasetError naming `label`. Member names are not checked here: use ``member_path``.
    """
    label = label or str(source)
    opened: list[IO[bytes]] = []
    try:
        raw = open(source, "rb") if isinstance(source, (str, Path)) else source
        if isinstance(source, (str, Path)):
            opened.append(raw)
        magic = raw.peek(2)[:2] if hasattr(raw, "peek") else b""
        if magic == b"\x1f\x8b":
            stream: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="rb")
            opened.append(stream)
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                yield tar
            while stream.read(COPY_BYTES):  # the rest of the gzip member: its CRC-32 and length are checked at EOF
                pass
        else:
            with tarfile.open(fileobj=raw, mode="r|*") as tar:
                yield tar
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zipfile.BadZipFile, OSError) as error:
        raise DatasetError(f"{label}: not a complete, readable tar archive ({error}); delete it and download it again") from error
    finally:
        for handle in reversed(opened):
            handle.close()


def extract_tar(source: Path | IO[bytes], target: Path, *, label: str | None = None, strip: str | None = None,
                rename: Rename | None = None) -> int:
    """Extract a tar or tar.gz into `target` in one pass, safely; return the number of regular files written.

    `strip` removes the archive's top folder when members have it; `rename` may move a member or
    leave it out (None). `source` is a path or an open binary stream (e.g. a tar inside a zip).
    """
    label = label or str(source)
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    written = 0
    with open_tar(source, label) as tar:
        for member in tar:
            path = _destination(label, member.name, target, strip, rename)
            if path is None:
                continue
            if member.isdir():
                path.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                data = tar.extractfile(member)
                if data is None:
                    raise _refuse(label, member.name, "has no data")
                _write(data, path)
                written += 1
            elif member.issym() or member.islnk():
                pointee = _check_link(label, member.name, target, path, member.linkname, member.issym(), strip)
                path.parent.mkdir(parents=True, exist_ok=True)
                if member.issym():
                    os.symlink(member.linkname, path)
                else:
                    os.link(pointee, path)
                    written += 1
            else:
                raise _refuse(label, member.name, "is a device, FIFO or other special file")
    return written


def extract_zip(archive: Path, target: Path, *, strip: str | None = None, rename: Rename | None = None) -> int:
    """Extract a zip into `target` safely (names and links checked as for tars); return the files written."""
    label = str(archive)
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        with zipfile.ZipFile(archive) as bundle:
            for info in bundle.infolist():
                path = _destination(label, info.filename, target, strip, rename)
                if path is None:
                    continue
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    link = bundle.read(info).decode("utf-8")
                    _check_link(label, info.filename, target, path, link, True, strip)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(link, path)
                elif info.is_dir():
                    path.mkdir(parents=True, exist_ok=True)
                elif stat.S_IFMT(mode) not in (0, stat.S_IFREG):  # many zips store no file type: a regular file
                    raise _refuse(label, info.filename, "is a device, FIFO or other special file")
                else:
                    with bundle.open(info) as data:
                        _write(data, path)
                    written += 1
    except (zipfile.BadZipFile, EOFError, OSError) as error:  # a CRC mismatch is a BadZipFile
        raise DatasetError(f"{archive}: not a complete, readable zip archive ({error}); delete it and download it again") from error
    return written


@contextmanager
def zip_member(archive: Path, basename: str) -> Iterator[IO[bytes]]:
    """Open the one member of zip `archive` whose file name is `basename` (e.g. a tar.gz inside the zip)."""
    try:
        with zipfile.ZipFile(archive) as bundle:
            matches = [info for info in bundle.infolist()
                       if posixpath.basename(info.filename) == basename and not info.filename.startswith("__MACOSX/")]
            if len(matches) != 1:
                found = ", ".join(info.filename for info in bundle.infolist()[:10])
                raise DatasetError(f"{archive}: expected one member named {basename} (found {len(matches)}; "
                                   f"members: {found} ...). Is this the official archive?")
            member_path(str(archive), matches[0].filename)  # refuse a hostile name even though it is not written
            with bundle.open(matches[0]) as handle:
                yield handle
    except zipfile.BadZipFile as error:
        raise DatasetError(f"{archive}: not a readable zip archive ({error}); delete it and download it again") from error


def link_or_copy(source: Path, destination: Path) -> None:
    """Place `source` at `destination` as a hard link (no second copy on disk), else as a copy.

    Hard links keep the FLYP split folders free (they share the images' blocks) and survive the
    rename of the prepared folder into place; a filesystem without them gets a plain copy.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def hoist(target: Path, marker: str, max_depth: int = 3) -> Path:
    """Move the release folder holding `marker` (a relative path) up to `target` itself; return `target`.

    For archives whose top folders differ between mirrors (e.g. Kaggle re-packs): finds the one
    folder under `target` (depth <= `max_depth`) that contains `marker` and moves its contents to
    `target`, removing the emptied wrapper folders. No folder or several folders: a DatasetError.
    """
    if (target / marker).exists():
        return target
    candidates = [folder for depth in range(1, max_depth + 1) for folder in target.glob("/".join(["*"] * depth))
                  if folder.is_dir() and not folder.is_symlink() and (folder / marker).exists()]
    if len(candidates) != 1:
        raise DatasetError(f"{target}: expected exactly one folder holding {marker}, found {len(candidates)} "
                           f"({', '.join(str(c.relative_to(target)) for c in candidates[:5])}). Is this the official archive?")
    release = candidates[0]
    top = target / release.relative_to(target).parts[0]
    staging = target / ".hoist-staging"
    release.rename(staging)
    shutil.rmtree(top, ignore_errors=True)
    for child in staging.iterdir():
        child.rename(target / child.name)
    staging.rmdir()
    return target
