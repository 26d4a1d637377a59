"""CIFAR-10, CIFAR-100 (python pickles) and CIFAR-10.02 (CIFAR-10 test + CIFAR-10.2 test), read without torchvision.

torchvision's readers md5-check every batch file and re-download on mismatch; these readers
only parse the standard files, so a missing or damaged file is a clear error instead.

CIFAR-10.02 follows Zhang & Re (2022): the 10,000 CIFAR-10 test images, then the 2,000 CIFAR-10.2
test images; groups are ``2 * class + source`` (20 class x source groups, their worst-group
metric), and ``metadata["partitions"]["source"]`` holds the 2 source groups the paper's text names.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from stages.data.layout import Layout, check_split, classnames
from stages.data.source import DatasetError, LabeledImages, register_dataset

CIFAR10 = Layout(
    "cifar10", ("cifar-10-batches-py",),
    "  cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}   (python pickles)",
    "cifar-10-python.tar.gz from www.cs.toronto.edu/~kriz/cifar.html",
)
CIFAR100 = Layout(
    "cifar100", ("cifar-100-python",),
    "  cifar-100-python/{train, test, meta}   (python pickles)",
    "cifar-100-python.tar.gz from www.cs.toronto.edu/~kriz/cifar.html",
)
CIFAR102 = Layout(
    "cifar10.02", ("CIFAR-10.2",),
    "  cifar-10-batches-py/test_batch   (CIFAR-10, see cifar10)\n"
    "  CIFAR-10.2/cifar102_test.npz   (keys images uint8[2000,32,32,3], labels; or the older pickled-dict .npy)",
    "CIFAR-10: www.cs.toronto.edu/~kriz/cifar.html; CIFAR-10.2: github.com/modestyachts/cifar-10.2",
)


def _unpickle(path: Path) -> dict:
    """Read one CIFAR python batch (keys as str)."""
    try:
        with open(path, "rb") as handle:
            return pickle.load(handle, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as error:
        raise DatasetError(f"cannot read CIFAR batch {path}: {error}. Re-extract the archive") from error


def _cifar_batches(layout: Layout, root: Path, files: list[str], label_key: str, num_classes: int) -> tuple[np.ndarray, list[int]]:
    """Images [N, 32, 32, 3] uint8 and labels of the given batch files."""
    base = layout.locate(root)
    images, labels = [], []
    for name in files:
        path = layout.require(base / name, root)
        batch = _unpickle(path)
        for key in ("data", label_key):
            if key not in batch:
                raise DatasetError(f"{path}: no {key!r} entry (keys: {', '.join(map(str, batch))})")
        data = np.asarray(batch["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(batch[label_key]):
            raise DatasetError(f"{path}: 'data' has shape {data.shape}, expected [N, 3072] with one {label_key!r} each")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels += [int(label) for label in batch[label_key]]
    if labels and not 0 <= min(labels) <= max(labels) < num_classes:
        raise DatasetError(f"{base}: {label_key!r} spans [{min(labels)}, {max(labels)}], expected 0..{num_classes - 1}")
    return np.ascontiguousarray(np.concatenate(images)), labels


def _cifar10_test(root: Path) -> tuple[np.ndarray, list[int]]:
    return _cifar_batches(CIFAR10, root, ["test_batch"], "labels", 10)


@register_dataset("cifar10", CIFAR10)
def cifar10(root: Path, split: str) -> LabeledImages:
    """CIFAR-10 ``train`` (50,000) or ``test`` (10,000)."""
    check_split("cifar10", split, ("train", "test"))
    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = _cifar_batches(CIFAR10, root, files, "labels", 10)
    return LabeledImages(name="cifar10", classnames=classnames("cifar10"), images=images, labels=labels)


@register_dataset("cifar100", CIFAR100)
def cifar100(root: Path, split: str) -> LabeledImages:
    """CIFAR-100 ``train`` or ``test`` with the 100 fine labels (names with spaces, OpenAI order)."""
    check_split("cifar100", split, ("train", "test"))
    images, labels = _cifar_batches(CIFAR100, root, [split], "fine_labels", 100)
    return LabeledImages(name="cifar100", classnames=classnames("cifar100"), images=images, labels=labels)


def _cifar102_test(root: Path) -> tuple[np.ndarray, list[int]]:
    """The CIFAR-10.2 test set from ``cifar102_test.npz`` (or the older pickled-dict ``.npy``)."""
    base = CIFAR102.locate(root)
    npz, npy = base / "cifar102_test.npz", base / "cifar102_test.npy"
    path = npz if npz.is_file() else CIFAR102.require(npy, root)
    try:
        payload = np.load(path) if path == npz else np.load(path, allow_pickle=True).item()
        images, labels = np.asarray(payload["images"], dtype=np.uint8), np.asarray(payload["labels"])
    except (OSError, ValueError, KeyError, AttributeError) as error:
        raise DatasetError(f"cannot read {path}: {error}; expected keys 'images' (uint8 [N,32,32,3]) and 'labels'") from error
    if images.shape[1:] != (32, 32, 3) or len(images) != len(labels):
        raise DatasetError(f"{path}: images have shape {images.shape} for {len(labels)} labels; expected [N, 32, 32, 3]")
    return images, [int(label) for label in labels]


@register_dataset("cifar10.02", CIFAR102)
def cifar10_02(root: Path, split: str) -> LabeledImages:
    """CIFAR-10.02 ``test`` (12,000): 20 class x source groups; a 2-group source partition in metadata."""
    check_split("cifar10.02", split, ("test",))
    images_10, labels_10 = _cifar10_test(root)
    images_102, labels_102 = _cifar102_test(root)
    labels = labels_10 + labels_102
    sources = [0] * len(labels_10) + [1] * len(labels_102)
    names, source_names = classnames("cifar10"), ["cifar10", "cifar10.2"]
    return LabeledImages(
        name="cifar10.02", classnames=names, images=np.concatenate([images_10, images_102]), labels=labels,
        groups=[2 * label + source for label, source in zip(labels, sources)],
        group_names=[f"{name}/{source}" for name in names for source in source_names],
        metadata={"partitions": {"source": (sources, source_names)}},
    )
