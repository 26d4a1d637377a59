"""What a complete copy of each benchmark holds: per split, its image and class counts, from its release.

A manifest is data shipped in the package, ``stages/data/manifests/<dataset>.json`` (``<dataset>``
is the registered dataset name), so that ``verify`` and the workflow gate can tell a partial or
misarranged download from a complete one by listing files, without decoding an image. Schema::

    {
      "dataset": "imagenet-r",                 # the registered dataset name (= the file's stem)
      "version": "1",                          # bump when the counts change; the gate's cache is keyed by it
      "source": "https://github.com/hendrycks/imagenet-r",   # the release the numbers come from
      "splits": {
        "test": {"images": 30000, "classes": 200, "per_class": null}
      }
    }

``splits`` keys are the split names the dataset's adapter takes (``build_dataset(name, root, split)``);
``images`` is the split's exact image count in the official release. ``classes`` is the number of
distinct classes that have at least one image in the split (``verify`` counts the labels present, so a
download missing whole class folders is named), or ``null`` where the release publishes only the
label set and not which classes each split holds (iWildCam's 182 and FMoW's 62 classes: several
splits lack some of them, and WILDS publishes no per-split class counts); a ``null`` split is checked
on its image count alone, and its adapter still refuses any label outside the label set. ``per_class``
is the number of images in every class when the split is balanced (ImageNet val: 50), else ``null``
(and always ``null`` when ``classes`` is). Standard library only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.data.source import DatasetError

MANIFEST_DIR = Path(__file__).parent / "manifests"


@dataclass(frozen=True)
class SplitCounts:
    """The expected contents of one split."""

    images: int
    classes: int | None
    """Classes with at least one image in the split; None: not published (only the label set is known)."""
    per_class: int | None = None


@dataclass(frozen=True)
class Manifest:
    """A dataset's expected split sizes and the release they come from."""

    dataset: str
    version: str
    source: str
    splits: dict[str, SplitCounts]


def _int(path: Path, where: str, value: Any, optional: bool = False) -> int | None:
    """A non-negative integer field of a manifest (a bad one names the file and field: manifests are code)."""
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise DatasetError(f"{path}: {where} must be a non-negative integer{' or null' if optional else ''}, "
                           f"not {value!r}")
    return value


def parse_manifest(path: Path) -> Manifest:
    """Read and validate one manifest file (the schema above); any deviation names the file and the field."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DatasetError(f"{path}: not a readable manifest ({error})") from error
    expected = {"dataset", "version", "source", "splits"}
    if not isinstance(raw, dict) or set(raw) != expected:
        found = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise DatasetError(f"{path}: a manifest has exactly the keys {sorted(expected)}; found {found}")
    if not all(isinstance(raw[key], str) and raw[key] for key in ("dataset", "version", "source")):
        raise DatasetError(f"{path}: dataset, version and source must be non-empty strings")
    if not isinstance(raw["splits"], dict) or not raw["splits"]:
        raise DatasetError(f"{path}: splits must map each split name to its counts")
    splits = {}
    for split, counts in raw["splits"].items():
        if not isinstance(counts, dict) or not {"images", "classes"} <= set(counts) <= {"images", "classes", "per_class"}:
            raise DatasetError(f"{path}: splits.{split} must have images, classes and optionally per_class")
        splits[split] = SplitCounts(
            images=_int(path, f"splits.{split}.images", counts["images"]),
            classes=_int(path, f"splits.{split}.classes", counts["classes"], optional=True),
            per_class=_int(path, f"splits.{split}.per_class", counts.get("per_class"), optional=True),
        )
        c = splits[split]
        if c.per_class is not None and c.classes is None:
            raise DatasetError(f"{path}: splits.{split}: per_class needs the split's number of classes, not null")
        if c.per_class is not None and c.per_class * c.classes != c.images:
            raise DatasetError(f"{path}: splits.{split}: {c.classes} classes x {c.per_class} per class != {c.images}")
    return Manifest(dataset=raw["dataset"], version=raw["version"], source=raw["source"], splits=splits)


def load_manifest(dataset: str) -> Manifest | None:
    """The shipped manifest of registered dataset `dataset`, or None when it has none (own data, the demo).

    Read on every call (a few hundred bytes): ``MANIFEST_DIR`` is looked up when called, not imported."""
    path = MANIFEST_DIR / f"{dataset}.json"
    if not path.is_file():
        return None
    manifest = parse_manifest(path)
    if manifest.dataset != dataset:
        raise DatasetError(f"{path}: its dataset field says {manifest.dataset!r}, not {dataset!r}")
    return manifest


def manifest_datasets() -> list[str]:
    """Names of every dataset with a shipped manifest."""
    return sorted(path.stem for path in MANIFEST_DIR.glob("*.json"))
