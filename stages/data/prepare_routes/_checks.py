"""The content checks a route's ``arrange`` runs after extracting, and the rule for unpublished checksums.

Rule for releases that publish no checksum (WILDS, group_DRO's Waterbirds tarball, the FLYP split
CSVs, CIFAR-10.2; and the manual Kaggle / Google Drive files, whose bytes differ per re-pack):
a checksum is never made up. Instead

1. the download is checked against the published compressed size where the release has one
   (``RemoteFile.size``: WILDS publishes it for iWildCam and FMoW), and files served from a git
   repository at a pinned commit carry their git blob id (``RemoteFile.git_sha1``), a content
   hash GitHub publishes in the repository tree, which ``stages.data.prepare`` checks as it
   checks a published md5 or sha256;
2. the archive is decompressed to its end (gzip CRC-32 trailer, zip per-member CRC-32), so a
   truncated or corrupted download fails to extract;
3. ``arrange`` cross-checks the release's own metadata file with the extracted files: every
   image it names must be there (``require_images``), and its columns must be present;
4. ``python -m stages.data verify`` then compares the split sizes with the dataset's manifest.

Each route's ``note`` says which of these apply to it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from stages.data.source import DatasetError


def require_files(target: Path, relative: Iterable[str], source: str) -> None:
    """Every path of `relative` must exist under `target` after extracting `source` (named in the error)."""
    missing = [name for name in relative if not (target / name).exists()]
    if missing:
        raise DatasetError(f"{source}: the archive lacks {', '.join(missing)} (expected under {target}); it is "
                           "incomplete or not the official release: delete it and download it again")


def require_images(base: Path, relative: Iterable[str], metadata: Path | str) -> int:
    """Every image `metadata` names (paths relative to `base`) must have been extracted; return how many.

    Stats each file once without decoding it (seconds for the 200,000 iWildCam images).
    """
    count, missing = 0, []
    for name in relative:
        count += 1
        if not os.path.isfile(base / name):
            missing.append(name)
    if missing:
        raise DatasetError(f"{metadata} names {len(missing)} of {count} images that the archive did not contain "
                           f"(first: {', '.join(missing[:3])}) under {base}; the download is incomplete: delete "
                           "it and download it again")
    return count
