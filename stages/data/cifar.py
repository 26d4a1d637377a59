"""CIFAR-10, CIFAR-100 (python pickles) and CIFAR-10.02 (CIFAR-10 test + CIFAR-10.2 test), read without torchvision.

torchvision's readers md5-check every batch file and re-download on mismatch; these readers
only parse the standard files, so a missing or damaged file is a clear error instead.

The batch files are pickles, and a pickle can name any Python callable to run while it loads (a
tampered mirror then runs its code at evaluation). They are read with `SafeUnpickler`, which
admits only what the genuine files hold (dicts, lists, ints, strings and numpy arrays: the array
rebuilders and ``numpy.dtype``) and refuses every other global before calling anything;
CIFAR-10.2's ``.npz`` is read with ``allow_pickle=False``.

CIFAR-10.02 follows Zhang & Re (2022): the 10,000 CIFAR-10 test images, then the 2,000 CIFAR-10.2
test images; groups are ``2 * class + source`` (20 class x source groups, their worst-group
metric), and ``metadata["partitions"]["source"]`` holds the 2 source groups the paper's text names.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import IO, Any

import numpy as np

try:  # numpy >= 2 (files written by numpy 2 name numpy._core, those written by numpy 1 numpy.core)
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct
    from numpy.core.numeric import _frombuffer

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


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles written by Python 3 use it (bytes as latin-1 text), latin-1 only."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"forbidden codec {encoding!r} in _codecs.encode (only latin-1 rebuilds bytes)")
    return codecs.encode(text, "latin1")


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    # The array rebuilder of ndarray.__reduce__ (protocols 0-4), under numpy 1's and numpy 2's module names.
    **{(module, "_reconstruct"): _reconstruct for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    # The one of protocol 5 (an array from an in-band buffer).
    **{(module, "_frombuffer"): _frombuffer for module in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}
"""The only globals a CIFAR pickle may name: what dicts of lists, strings and numpy arrays need (the
dicts, lists, ints and strings themselves are pickle opcodes, not globals)."""


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves only `_ALLOWED_GLOBALS`: any other global (``os.system``,
    ``builtins.exec``, a class with a ``__reduce__`` payload) is refused before it can be called."""

    def __init__(self, file: IO[bytes], path: Path, fix: str) -> None:
        super().__init__(file, encoding="latin1")  # the originals are Python 2 pickles: str keys, bytes as latin-1
        self.path, self.fix = path, fix

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[module, name]
        raise DatasetError(
            f"{self.path} names the Python global {module}.{name}, which a genuine dataset file never holds "
            f"(only arrays, lists and strings): refused, nothing in it was run. The file was altered or is not "
            f"what it claims to be; delete it and re-download {self.fix}"
        )


def safe_unpickle(handle: IO[bytes], path: Path, fix: str) -> Any:
    """One pickle from `handle` through `SafeUnpickler` (`path` and `fix`, the official source, name it in errors)."""
    return SafeUnpickler(handle, path, fix).load()


def _unpickle(path: Path, layout: Layout) -> dict:
    """Read one CIFAR python batch (keys as str) without running anything it names."""
    try:
        with open(path, "rb") as handle:
            batch = safe_unpickle(handle, path, layout.source)
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError) as error:  # what a damaged pickle raises, by where it is cut
        raise DatasetError(f"cannot read CIFAR batch {path}: {error}. Re-extract {layout.source}") from error
    if not isinstance(batch, dict):
        raise DatasetError(f"{path} holds a {type(batch).__name__}, not a CIFAR batch (a dict). "
                           f"Re-extract {layout.source}")
    return batch


def _cifar_batches(layout: Layout, root: Path, files: list[str], label_key: str, num_classes: int) -> tuple[np.ndarray, list[int]]:
    """Images [N, 32, 32, 3] uint8 and labels of the given batch files."""
    base = layout.locate(root)
    images, labels = [], []
    for name in files:
        path = layout.require(base / name, root)
        batch = _unpickle(path, layout)
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


def _read_pickled_npy(path: Path) -> Any:
    """The object an object-dtype ``.npy`` holds (the older CIFAR-10.2 files: a pickled dict), unpickled by
    `SafeUnpickler` instead of ``np.load(allow_pickle=True)``, which would run whatever the pickle names."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        _, _, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)(handle)
        if not dtype.hasobject:
            raise ValueError(f"it holds a plain {dtype} array, not the pickled dict of the older CIFAR-10.2 files")
        return safe_unpickle(handle, path, CIFAR102.source).item()  # numpy pickles the 0-d object array whole


def _cifar102_test(root: Path) -> tuple[np.ndarray, list[int]]:
    """The CIFAR-10.2 test set from ``cifar102_test.npz`` (or the older pickled-dict ``.npy``)."""
    base = CIFAR102.locate(root)
    npz, npy = base / "cifar102_test.npz", base / "cifar102_test.npy"
    path = npz if npz.is_file() else CIFAR102.require(npy, root)
    try:
        if path == npz:
            with np.load(path, allow_pickle=False) as arrays:  # an object array in it is a ValueError, never run
                payload = {key: arrays[key] for key in ("images", "labels")}
        else:
            payload = _read_pickled_npy(path)
        images, labels = np.asarray(payload["images"], dtype=np.uint8), np.asarray(payload["labels"])
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError) as error:
        raise DatasetError(f"cannot read {path}: {error}; expected keys 'images' (uint8 [N,32,32,3]) and 'labels'. "
                           f"Re-download it from {CIFAR102.source}") from error
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3) or len(images) != len(labels):
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
