"""The per-item outcomes behind a metrics JSON: what a bootstrap over test items resamples.

Evaluation writes them beside each metrics file (``<request>.items.npz``: `stages.evalrequest.items_path`),
an uncompressed ``np.savez`` archive of plain arrays, in the dataset's image order:

- ``predictions`` (int64): the predicted class of each image (dataset class order);
- ``labels`` (int64): its true class;
- ``groups`` (int64) and ``group_names`` (unicode), when the dataset has groups (ids index the names);
- ``objects`` (int64), when the dataset draws one object on several images (the demo's paired splits):
  the object each image shows, so that a resample keeps an object's renders together.

Read only with ``np.load(allow_pickle=False)``: a data file never runs code. Torch-free, so that
reports read it without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np

from stages.errors import PipelineError
from stages.io import atomic_write_binary

if TYPE_CHECKING:  # a report that reads items files does not import the dataset adapters
    from stages.data.source import LabeledImages


class ItemsError(PipelineError, ValueError):
    """An items file that is missing, unreadable or inconsistent; the message names it and the fix."""


@dataclass(frozen=True)
class ItemOutcomes:
    """Per image of one benchmark: prediction, label and, where the dataset has them, group and object."""

    predictions: np.ndarray
    labels: np.ndarray
    groups: np.ndarray | None = None
    group_names: tuple[str, ...] | None = None
    objects: np.ndarray | None = None

    @classmethod
    def of(cls, source: LabeledImages, predictions: np.ndarray) -> ItemOutcomes:
        """The outcomes of `predictions` on `source` (the dataset the metrics JSON scored)."""
        has_groups = source.groups is not None and source.group_names is not None
        objects = source.metadata.get("objects")
        return cls(np.asarray(predictions, dtype=np.int64), np.asarray(source.labels, dtype=np.int64),
                   np.asarray(source.groups, dtype=np.int64) if has_groups else None,
                   tuple(source.group_names) if has_groups else None,
                   None if objects is None else np.asarray(objects, dtype=np.int64))

    def write(self, path: Path) -> None:
        """Write the ``.items.npz`` archive atomically (a reader never sees half of one)."""
        arrays = {"predictions": self.predictions, "labels": self.labels}
        if self.groups is not None and self.group_names is not None:
            arrays |= {"groups": self.groups, "group_names": np.asarray(self.group_names, dtype=np.str_)}
        if self.objects is not None:
            arrays["objects"] = self.objects

        def save(handle: IO[bytes]) -> None:
            np.savez(handle, **arrays)

        atomic_write_binary(Path(path), save)

    @classmethod
    def read(cls, path: Path) -> ItemOutcomes:
        """The outcomes in `path`; a missing or damaged file is an `ItemsError` naming it."""
        path = Path(path)
        if not path.is_file():
            raise ItemsError(f"{path} is missing: rerun the evaluation that wrote its metrics JSON "
                             "(the workflow's evaluate job writes both)")
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
        except (OSError, ValueError) as error:  # a truncated zip, or an object array refused without pickle
            raise ItemsError(f"{path} is not a readable items file ({error}); delete it and its metrics JSON, "
                             "then rerun the evaluation") from None
        names = arrays.get("group_names")
        outcomes = cls(arrays["predictions"], arrays["labels"], arrays.get("groups"),
                       None if names is None else tuple(str(name) for name in names), arrays.get("objects"))
        if any(len(column) != len(outcomes.labels) for column in outcomes.columns()):
            raise ItemsError(f"{path}: its arrays differ in length; delete it and rerun the evaluation")
        return outcomes

    def columns(self) -> list[np.ndarray]:
        """The per-image arrays it holds (predictions, labels, then groups and objects if present)."""
        return [column for column in (self.predictions, self.labels, self.groups, self.objects) if column is not None]

    def same_items(self, other: ItemOutcomes) -> bool:
        """Whether `other` scored the same test items: equal labels, groups and objects (predictions may differ)."""
        def equal(mine: np.ndarray | None, theirs: np.ndarray | None) -> bool:
            return (mine is None) == (theirs is None) and (mine is None or np.array_equal(mine, theirs))

        return (equal(self.labels, other.labels) and equal(self.groups, other.groups)
                and equal(self.objects, other.objects) and self.group_names == other.group_names)

    def take(self, images: np.ndarray, objects: np.ndarray | None = None) -> ItemOutcomes:
        """The outcomes of the images at indices `images` (repeats allowed: a bootstrap resample).

        `objects` replaces the object ids of the taken images: a resample that draws one object twice
        must count it as two objects, not as one object with twice the renders.
        """
        return ItemOutcomes(self.predictions[images], self.labels[images],
                            None if self.groups is None else self.groups[images], self.group_names,
                            None if self.objects is None else (self.objects[images] if objects is None else objects))
