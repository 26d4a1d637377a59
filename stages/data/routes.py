"""How each dataset gets onto disk: its published files and the step that arranges them into its layout.

A ``PrepareRoute`` is data plus one function: the files a dataset's official release publishes
(name, URL, checksum, size; or the manual step for files behind a login), and ``arrange``, which
turns the downloaded (or user-supplied) files into the folder the dataset's adapter reads
(``stages.data.layout.Layout``). ``stages.data.prepare`` downloads, checks and calls ``arrange``;
``stages.data.verify`` compares the result with the dataset's manifest. Light: standard library only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ArrangeFn = Callable[[dict[str, Path], Path], None]
"""``arrange(files, target)``: `files` maps each ``RemoteFile.name`` to its local path; `target` is the
dataset's folder under the data root (the layout's first folder name), which ``arrange`` fills. It is
called on a fresh temporary folder beside the final one, which prepare renames into place afterwards."""


@dataclass(frozen=True)
class RemoteFile:
    """One published file of a dataset's release."""

    name: str
    """The file name as published (a mirror serves it under this name)."""
    url: str
    """The official URL (``--mirror`` replaces its scheme and host)."""
    sha256: str | None = None
    md5: str | None = None
    """Checksums from the release (or recorded here from the official archive). A file with none of md5, sha256
    or `git_sha1` is either `manual` or follows the unpublished-checksum rule of ``prepare_routes._checks``
    (published `size` + full decompression + the metadata cross-check in ``arrange``), which its route's note names."""
    size: int | None = None
    """Bytes, when published (the progress bar's total)."""
    manual: str | None = None
    """Set for files behind a login or a browser (Kaggle, Google Drive, licence forms): the exact manual step."""
    git_sha1: str | None = None
    """For a file served from a git repository at a pinned commit, whose release publishes no md5/sha256: its
    git blob id (``git hash-object``, as the repository tree lists it), which ``stages.data.prepare`` checks
    (``prepare.git_blob_sha1``) as it checks md5 and sha256."""


@dataclass(frozen=True)
class PrepareRoute:
    """A dataset's published files and the function that arranges them into its layout."""

    dataset: str
    files: tuple[RemoteFile, ...]
    arrange: ArrangeFn
    folder: str
    """The dataset's folder under the data root (its layout's first folder name)."""
    note: str = ""
    """Anything a user must know (licence, which files are manual)."""
    requires: tuple[str, ...] = ()
    """Datasets whose folders this one's adapter also reads (cifar10.02: cifar10's test_batch): ``prepare``
    prepares them first, and ``verify`` names them when this one falls short."""


_ROUTES: dict[str, PrepareRoute] = {}


def register_route(route: PrepareRoute) -> PrepareRoute:
    """Make `route` available to ``python -m stages.data prepare --dataset <route.dataset>``."""
    if route.dataset in _ROUTES:
        raise ValueError(f"prepare route {route.dataset!r} is registered twice")
    _ROUTES[route.dataset] = route
    return route


def prepare_routes() -> dict[str, PrepareRoute]:
    """Dataset name -> its registered route."""
    return dict(_ROUTES)
