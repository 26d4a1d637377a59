"""Shared pieces of the dataset adapters: shipped data files, layout checks, folder and CSV readers.

Every adapter documents its expected on-disk layout and where the standard distribution comes
from in a ``Layout``; a missing folder or file raises ``DatasetError`` quoting both, and a
malformed metadata file names the file, the column and the row.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, NoReturn, overload

import numpy as np

from stages.data.source import DatasetError, LabeledImages

PACKAGE_DIR = Path(__file__).parent
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@lru_cache(maxsize=None)
def data_file(kind: str, name: str) -> dict[str, Any]:
    """Load ``stages/data/<kind>/<name>.json`` (kind: ``classnames`` or ``templates``)."""
    path = PACKAGE_DIR / kind / f"{name}.json"
    if not path.is_file():
        available = sorted(p.stem for p in (PACKAGE_DIR / kind).glob("*.json"))
        raise DatasetError(f"no {kind} file {path.name}; shipped: {', '.join(available)}")
    return json.loads(path.read_text(encoding="utf-8"))


def templates(name: str) -> list[str]:
    """The prompt templates of ``stages/data/templates/<name>.json`` (``{c}`` slot, optional ``{a}`` article)."""
    return list(data_file("templates", name)["templates"])


def classnames(name: str) -> list[str]:
    """The class names of ``stages/data/classnames/<name>.json`` in label order."""
    return list(data_file("classnames", name)["classnames"])


@dataclass(frozen=True)
class Layout:
    """Where a dataset lives under the data root, what it must look like, and where it comes from."""

    dataset: str
    folders: tuple[str, ...]
    tree: str
    source: str

    def locate(self, root: Path) -> Path:
        """The first of ``folders`` present under `root`; else a DatasetError describing the layout."""
        for folder in self.folders:
            if (root / folder).is_dir():
                return root / folder
        self.missing(root / self.folders[0], root)

    def missing(self, path: Path, root: Path) -> NoReturn:
        """Raise the DatasetError for a missing `path` of this dataset."""
        raise DatasetError(
            f"{self.dataset}: {path} not found.\n"
            f"Expected layout under the data root {root}:\n{self.tree}\n"
            f"Standard distribution: {self.source}"
        )

    def require(self, path: Path, root: Path) -> Path:
        """Return `path` if it exists, else raise the layout error."""
        if not path.exists():
            self.missing(path, root)
        return path


def mat_variable(path: Path, name: str, layout: Layout, root: Path) -> np.ndarray:
    """Variable `name` of a MATLAB ``.mat`` file (structs as numpy records, at least 1-d).

    A missing file raises the layout error; an unreadable one or a missing variable names the file.
    """
    from scipy.io import loadmat  # only the .mat-based layouts (Cars, Flowers, the ImageNet devkit) need scipy

    layout.require(path, root)
    try:
        variables = loadmat(path, squeeze_me=True)
    except (ValueError, OSError, NotImplementedError) as error:
        raise DatasetError(f"{path}: not a readable MATLAB .mat file ({error}); re-download it") from error
    if name not in variables:
        found = ", ".join(key for key in variables if not key.startswith("__"))
        raise DatasetError(f"{path}: no variable {name!r} (found {found})")
    return np.atleast_1d(variables[name])


def check_split(dataset: str, split: str, splits: Iterable[str]) -> None:
    """Reject a split the dataset does not have."""
    splits = tuple(splits)
    if split not in splits:
        raise DatasetError(f"{dataset} has no split {split!r}; available: {', '.join(splits)}")


class PathList(Sequence[Path]):
    """A compact, fork-friendly list of image paths: one base folder plus UTF-8 relative paths in numpy.

    Millions of ``Path`` objects cost gigabytes and are copied into every DataLoader worker as
    reference counts change; a numpy byte array is one shared buffer.
    """

    def __init__(self, base: Path, relative: Sequence[str]) -> None:
        self.base = Path(base)
        self._relative = np.array([name.encode("utf-8") for name in relative], dtype=np.bytes_)

    def __len__(self) -> int:
        return len(self._relative)

    @overload
    def __getitem__(self, index: int) -> Path: ...

    @overload
    def __getitem__(self, index: slice) -> list[Path]: ...

    def __getitem__(self, index: int | slice) -> Path | list[Path]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self.base / self._relative[index].decode("utf-8")

    def __iter__(self) -> Iterator[Path]:
        return (self[i] for i in range(len(self)))

    def relative_names(self) -> Iterator[bytes]:
        """The UTF-8 relative paths, in order (cheap: no Path objects)."""
        return iter(self._relative.tolist())


def _image_files(folder: Path) -> list[str]:
    """Sorted names of the image files directly inside `folder`."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))


def class_folders(
    name: str, base: Path, label_of: dict[str, int], ignore: Iterable[str] = (), allow_empty: bool = True
) -> tuple[list[str], list[int]]:
    """Relative image paths and labels of ``base/<class folder>/<image>``.

    `label_of` maps every known folder name to its label; an unknown folder is an error (it would
    otherwise shift or drop labels silently), `ignore` lists folders to skip, and with
    `allow_empty` False a class folder without images is an error. Folders are visited in sorted
    order and files sorted within each, so the order is deterministic.
    """
    ignored = set(ignore)
    with os.scandir(base) as entries:
        folders = sorted(e.name for e in entries if e.is_dir() and e.name not in ignored)
    unknown = [folder for folder in folders if folder not in label_of]
    if unknown:
        raise DatasetError(
            f"{name}: {base} has class folders that are not in the class list: {unknown[:5]}"
            f"{' ...' if len(unknown) > 5 else ''}. Is the data root pointing at the right dataset?"
        )
    paths: list[str] = []
    labels: list[int] = []
    for folder in folders:
        files = _image_files(base / folder)
        if not files and not allow_empty:
            raise DatasetError(
                f"{name}: class folder {base / folder} has no images ({', '.join(IMAGE_EXTENSIONS)}); an empty class "
                "would still get a label and a head row. Put its images in it, or delete the folder from every split"
            )
        paths += [f"{folder}/{file}" for file in files]
        labels += [label_of[folder]] * len(files)
    if not paths:
        raise DatasetError(f"{name}: no images found under {base}/<class>/ (extensions {', '.join(IMAGE_EXTENSIONS)})")
    return paths, labels


def folder_dataset(
    name: str, base: Path, label_of: dict[str, int], names: list[str], ignore: Iterable[str] = (),
    allow_empty: bool = True, **metadata: Any
) -> LabeledImages:
    """A ``LabeledImages`` over ``base/<class folder>/<image>`` with labels from `label_of` (see `class_folders`)."""
    paths, labels = class_folders(name, base, label_of, ignore, allow_empty)
    return LabeledImages(name=name, classnames=names, images=PathList(base, paths), labels=labels, metadata=dict(metadata))


def read_csv(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a CSV file that must contain `columns`; a missing column names the file and the column."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [column for column in columns if column not in header]
        if missing:
            raise DatasetError(
                f"{path}: missing column(s) {', '.join(missing)} (header has: {', '.join(header) or 'nothing'}). "
                "Re-extract the file from the standard distribution"
            )
        return list(reader)


def int_column(path: Path, rows: list[dict[str, str]], column: str, allowed: range | None = None) -> list[int]:
    """Column `column` of `rows` as integers; a bad value names the file, column, row and value."""
    values = []
    for number, row in enumerate(rows, start=2):  # row 1 is the header
        raw = row[column]
        try:
            number_value = float(raw)
        except (TypeError, ValueError):
            number_value = float("nan")
        if not number_value.is_integer():
            raise DatasetError(f"{path}: column {column!r}, line {number}: {raw!r} is not an integer")
        value = int(number_value)
        if allowed is not None and value not in allowed:
            raise DatasetError(
                f"{path}: column {column!r}, line {number}: {value} is outside [{allowed.start}, {allowed.stop - 1}]"
            )
        values.append(value)
    return values
