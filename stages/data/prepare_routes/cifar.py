"""Prepare routes of CIFAR-10, CIFAR-100 and CIFAR-10.2 (the second half of the cifar10.02 benchmark).

The CIFAR batches are python pickles; they are extracted as files and never unpickled here (the
adapter reads them). Checksums: the archive md5s are torchvision's (``torchvision/datasets/cifar.py``),
the sha256s torchvision's prototype datasets' (``torchvision/prototype/datasets/_builtin/cifar.py``);
sizes as the Toronto server reports them (Content-Length in public download logs).
CIFAR-10.2 publishes no checksum: its file is fetched from github.com/modestyachts/cifar-10.2 at
commit 521467a (the ``npy -> npz`` commit) and checked by its git blob id from that commit's tree.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from stages.data.archives import extract_tar, link_or_copy
from stages.data.prepare_routes._checks import require_files
from stages.data.routes import PrepareRoute, RemoteFile, register_route
from stages.data.source import DatasetError

CIFAR10_FILE = RemoteFile(
    name="cifar-10-python.tar.gz", url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
    sha256="6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce", size=170_498_071,
)
CIFAR100_FILE = RemoteFile(
    name="cifar-100-python.tar.gz", url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
    sha256="85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7", size=169_001_437,
)
CIFAR102_COMMIT = "521467a52ad494b78ff9c70051099c0d9ba74d40"
CIFAR102_FILE = RemoteFile(
    name="cifar102_test.npz",
    url=f"https://raw.githubusercontent.com/modestyachts/cifar-10.2/{CIFAR102_COMMIT}/cifar102_test.npz",
    git_sha1="7a3829681be56af70ea80ec99cf3822e2f5edff3",
)
CIFAR10_MEMBERS = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]
CIFAR100_MEMBERS = ["train", "test", "meta"]


def _batches(files: dict[str, Path], target: Path, archive: str, folder: str, members: list[str]) -> None:
    """Extract the ``<folder>/`` batch files of a CIFAR archive into `target` (= that folder)."""
    extract_tar(files[archive], target, label=archive, strip=folder)
    require_files(target, members, archive)


def arrange_cifar10(files: dict[str, Path], target: Path) -> None:
    """``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` from the official tar.gz."""
    _batches(files, target, CIFAR10_FILE.name, "cifar-10-batches-py", CIFAR10_MEMBERS)


def arrange_cifar100(files: dict[str, Path], target: Path) -> None:
    """``cifar-100-python/{train, test, meta}`` from the official tar.gz."""
    _batches(files, target, CIFAR100_FILE.name, "cifar-100-python", CIFAR100_MEMBERS)


def arrange_cifar102(files: dict[str, Path], target: Path) -> None:
    """``CIFAR-10.2/cifar102_test.npz``, after checking it holds uint8 images [N, 32, 32, 3] and N labels in 0..9.

    Only the ``images`` and ``labels`` arrays are read, with pickles refused (``allow_pickle=False``;
    the file's ``label_names`` and ``keywords`` are object arrays and are left unread).
    """
    source = files[CIFAR102_FILE.name]
    try:
        with zipfile.ZipFile(source) as bundle:
            broken = bundle.testzip()  # CRC-32 of every member
        with np.load(source, allow_pickle=False) as payload:
            images, labels = payload["images"], payload["labels"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise DatasetError(f"{source}: not a readable CIFAR-10.2 .npz with arrays 'images' and 'labels' ({error}); "
                           "delete it and download it again") from error
    if broken is not None:
        raise DatasetError(f"{source}: member {broken} fails its CRC check; delete the file and download it again")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3) or len(images) != len(labels):
        raise DatasetError(f"{source}: images {images.dtype} {images.shape} for {len(labels)} labels; expected uint8 "
                           "[N, 32, 32, 3] with one label each")
    if len(labels) and not (labels.min() >= 0 and labels.max() <= 9):
        raise DatasetError(f"{source}: labels span [{labels.min()}, {labels.max()}], expected 0..9")
    link_or_copy(source, target / CIFAR102_FILE.name)


register_route(PrepareRoute(
    dataset="cifar10", files=(CIFAR10_FILE,), arrange=arrange_cifar10, folder="cifar-10-batches-py",
    note="CIFAR-10 python version (www.cs.toronto.edu/~kriz/cifar.html).",
))
register_route(PrepareRoute(
    dataset="cifar100", files=(CIFAR100_FILE,), arrange=arrange_cifar100, folder="cifar-100-python",
    note="CIFAR-100 python version (www.cs.toronto.edu/~kriz/cifar.html).",
))
register_route(PrepareRoute(
    dataset="cifar10.02", files=(CIFAR102_FILE,), arrange=arrange_cifar102, folder="CIFAR-10.2", requires=("cifar10",),
    note="CIFAR-10.02 = the CIFAR-10 test set + the CIFAR-10.2 test set: cifar10 is prepared first (its "
         "cifar-10-batches-py/test_batch is the first 10,000 images). CIFAR-10.2 publishes no md5/sha256; its file "
         f"is pinned to commit {CIFAR102_COMMIT[:7]} of github.com/modestyachts/cifar-10.2 and checked by its git "
         "blob id, the zip CRCs and the array shapes.",
))
