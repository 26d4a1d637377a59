"""``python -m stages.data verify``: is each dataset on disk complete, as its release publishes it?

For a dataset with a manifest (``stages.data.manifest``) every split is listed through its adapter
(``build_dataset``: file names and metadata only, no image decoded) and its images, classes and,
where the release is balanced, per-class counts are compared with the manifest; any shortfall names
the dataset, split, found and expected counts and the prepare command that fixes it. The classic
misarrangement, ImageNet val extracted as 50,000 loose files without labels, is named as such.

Your own data (``imagefolder``, ``csv``, ``webdataset``) has no manifest: its classes and counts are
reported per split, and a class set that differs between the train split and an evaluation split is
refused, naming the classes (a class seen only at evaluation has no training images; one seen only in
training is scored on nothing).

``gate`` is the workflow's check before any job: it verifies the datasets a target reads, caching a
passing result per dataset under ``<data root>/.stages/verified/`` keyed by the manifest's version
and the listing's stamp (the mtimes of the dataset's folders, which change whenever a file is added,
removed or renamed in them), so a rerun costs a few stats instead of a listing.
"""

from __future__ import annotations

import json
import os
import shlex
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stages.data.layout import IMAGE_EXTENSIONS
from stages.data.manifest import SplitCounts, load_manifest
from stages.data.source import DatasetError, LabeledImages, build_dataset, dataset_layouts

if TYPE_CHECKING:
    from stages.data.routes import PrepareRoute

OWN_DATA = ("imagefolder", "csv", "webdataset")
"""Datasets that are the user's own: no manifest, a class-consistency check instead."""
STAMP_DIR = Path(".stages") / "verified"
STAMP_VERSION = 1
"""Bump when what verify checks changes: every cached result is then recomputed."""
STAMP_DEPTH = 2
"""Folder levels below a dataset's folder whose mtimes key the cache (ImageNet: imagenet/train/<wnid>/)."""
SHOWN = 5
"""Class names shown per problem (then a count)."""


def _route(dataset: str) -> PrepareRoute | None:
    """`dataset`'s prepare route (None: it has none)."""
    from stages.data.prepare import load_routes

    return load_routes().get(dataset)


def prepare_command(dataset: str, data_root: Path) -> str:
    """The command that (re)builds `dataset` under `data_root` (``--from DIR`` where files are manual)."""
    command = f"python -m stages.data prepare --dataset {dataset} --data-root {shlex.quote(str(data_root))}"
    route = _route(dataset)
    if route is not None and any(file.manual for file in route.files):
        command += f" --from DIR   (DIR: the folder holding {', '.join(f.name for f in route.files if f.manual)})"
    return command


@dataclass
class SplitReport:
    """What one split holds, against what its release holds."""

    split: str
    images: int | None = None
    classes: int | None = None
    expected: SplitCounts | None = None
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    """Class name -> images (own data: the report's per-class counts)."""

    def line(self, dataset: str) -> str:
        """``imagenet-r test: 200 of 30,000 images, 200 of 200 classes`` (+ problems)."""
        if self.images is None:
            found = "not readable"
        elif self.expected is None:
            found = f"{self.images:,} images in {self.classes:,} classes"
        elif self.expected.classes is None:  # only the label set is published, not the classes per split
            found = f"{self.images:,} of {self.expected.images:,} images, {self.classes:,} classes"
        else:
            found = (f"{self.images:,} of {self.expected.images:,} images, "
                     f"{self.classes:,} of {self.expected.classes:,} classes")
        status = "ok" if not self.problems else "; ".join(self.problems)
        return f"{dataset} {self.split}: {found}: {status}"


@dataclass
class DatasetReport:
    """Every split of one dataset, checked."""

    dataset: str
    data_root: Path
    folder: Path | None = None
    splits: list[SplitReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    has_manifest: bool = True

    @property
    def ok(self) -> bool:
        return not self.problems and all(not split.problems for split in self.splits)

    def summary(self) -> str:
        """``test 30,000 images`` per split."""
        return ", ".join(f"{split.split} {split.images:,} images" for split in self.splits if split.images is not None)

    def text(self, fix: bool = True) -> str:
        """Found vs expected per split, then the problems and (when any) the command that fixes them."""
        lines = [split.line(self.dataset) for split in self.splits]
        lines += [f"{self.dataset}: {problem}" for problem in self.problems]
        if fix and not self.ok:
            if self.has_manifest:
                lines.append(f"  fix: {prepare_command(self.dataset, self.data_root)}")
            else:
                lines.append(f"  fix: make every split of {self.folder or self.dataset} hold the same class folders")
        return "\n".join(lines)


def _names(labels: Iterable[int], classnames: list[str]) -> list[str]:
    return [classnames[label] if label < len(classnames) else str(label) for label in labels]


def _shown(names: list[str]) -> str:
    return ", ".join(names[:SHOWN]) + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def _imagenet_val_flat(folder: Path) -> str | None:
    """The classic misarrangement: val/ holds the flat tar's loose JPEGs and nothing labels them."""
    val = folder / "val"
    if not val.is_dir():
        return None
    with os.scandir(val) as entries:
        listed = list(entries)
    if any(entry.is_dir() for entry in listed):
        return None
    names = [entry.name for entry in listed]
    loose = sum(name.lower().endswith(IMAGE_EXTENSIONS) for name in names)
    from stages.data.imagenet import DEVKIT_DATA, KAGGLE_VAL_SOLUTION

    labelled = (folder / KAGGLE_VAL_SOLUTION).is_file() or (val / KAGGLE_VAL_SOLUTION).is_file() \
        or (folder / DEVKIT_DATA).is_dir()
    if loose and not labelled:
        return (f"val holds {loose:,} loose image files and no class folders (ILSVRC2012_img_val.tar extracted "
                f"as it is) and nothing labels them: sort them into val/<wnid>/ with the devkit")
    return None


LAYOUT_CHECKS = {"imagenet": _imagenet_val_flat}
"""Per-dataset misarrangements worth naming before the adapter's generic error (folder -> problem)."""


def _split_report(dataset: str, source: LabeledImages, expected: SplitCounts | None, split: str) -> SplitReport:
    """Counts of one built split against `expected`."""
    per_label = Counter(source.labels)
    report = SplitReport(split, len(source), len(per_label), expected,
                         counts=dict(zip(_names(sorted(per_label), source.classnames),
                                         (per_label[label] for label in sorted(per_label)))))
    if expected is None:
        return report
    if report.images != expected.images:
        report.problems.append(f"{'SHORT by' if report.images < expected.images else 'more than the release by'} "
                               f"{abs(expected.images - report.images):,} images")
    if expected.classes is not None and report.classes != expected.classes:
        absent = [label for label in range(len(source.classnames)) if label not in per_label]
        report.problems.append(f"missing {len(absent)} classes: {_shown(_names(absent, source.classnames))}" if absent
                               else f"{report.classes} classes, the release has {expected.classes}")
    if expected.per_class is not None:
        uneven = sorted(label for label, count in per_label.items() if count != expected.per_class)
        if uneven:
            shown = [f"{name} ({per_label[label]})" for label, name in zip(uneven, _names(uneven, source.classnames))]
            report.problems.append(f"{len(uneven)} classes do not have {expected.per_class} images: {_shown(shown)}")
    return report


def verify_dataset(dataset: str, data_root: Path, decode: bool = False, workers: int | None = None) -> DatasetReport:
    """Check every split of `dataset`'s manifest under `data_root` (listing only; `decode`: every image too).

    When it falls short, each dataset its route requires (``PrepareRoute.requires``) that does not
    verify either is named with the command that prepares it.
    """
    report = _verify_manifest(dataset, Path(data_root), decode, workers)
    if not report.ok:
        route = _route(dataset)
        for required in route.requires if route is not None else ():
            if not verify_dataset(required, data_root).ok:
                report.problems.append(f"reads {required}'s files too, and {required} does not verify: "
                                       f"{prepare_command(required, data_root)}")
    return report


def _verify_manifest(dataset: str, data_root: Path, decode: bool, workers: int | None) -> DatasetReport:
    """``verify_dataset`` of `dataset` alone."""
    manifest = load_manifest(dataset)
    if manifest is None:
        raise DatasetError(f"{dataset}: no manifest (stages/data/manifests/{dataset}.json); your own data is "
                           f"checked with verify_own_data, the others are: {', '.join(_manifest_names())}")
    report = DatasetReport(dataset, data_root)
    layout = dataset_layouts().get(dataset)
    if layout is not None:
        try:
            report.folder = layout.locate(data_root)
        except DatasetError:
            report.problems.append(f"not found under {data_root} (expected {data_root / layout.folders[0]})")
            return report
        check = LAYOUT_CHECKS.get(dataset)
        problem = check(report.folder) if check else None
        if problem:
            report.problems.append(problem)
            return report
    for split, expected in manifest.splits.items():
        try:
            source = build_dataset(dataset, data_root, split)
        except DatasetError as error:
            report.splits.append(SplitReport(split, expected=expected, problems=[str(error).splitlines()[0]]))
            continue
        split_report = _split_report(dataset, source, expected, split)
        if decode:
            _decode(source, split_report, workers)
        report.splits.append(split_report)
    return report


def _decode(source: LabeledImages, report: SplitReport, workers: int | None) -> None:
    """Add `check_images`' full-decode result to `report` (the first few unreadable files named)."""
    from stages.data.check import check_images

    bad = check_images(source, decode=True, workers=workers, progress=True)
    if bad:
        report.problems.append(f"{len(bad)} unreadable images: " + _shown([f"{path} ({why})" for path, why in bad]))


def _manifest_names() -> list[str]:
    from stages.data.manifest import manifest_datasets

    return manifest_datasets()


def own_splits(dataset: str, data_root: Path) -> list[str]:
    """The splits your own data has on disk: imagefolder's and webdataset's split folders, csv's ``csv/*.csv``."""
    base = Path(data_root) / dataset
    if not base.is_dir():
        return []
    if dataset == "csv":
        return sorted(f"{dataset}/{path.name}" for path in base.glob("*.csv"))
    return sorted(entry.name for entry in os.scandir(base) if entry.is_dir())


def verify_own_data(dataset: str, data_root: Path, splits: list[str], train_split: str | None = None,
                    options: dict[str, Any] | None = None, decode: bool = False,
                    workers: int | None = None) -> DatasetReport:
    """Classes and counts per split of your own data; every split must have the train split's classes.

    `train_split` defaults to the split named ``train`` (``csv/train.csv``) when there is one, else the first.
    """
    report = DatasetReport(dataset, Path(data_root), folder=Path(data_root) / dataset, has_manifest=False)
    if not splits:
        report.problems.append(f"no splits found under {Path(data_root) / dataset}")
        return report
    train = train_split or next((s for s in splits if Path(s).stem == "train"), splits[0])
    sources: dict[str, LabeledImages] = {}
    for split in [train] + [s for s in splits if s != train]:
        try:
            sources[split] = build_dataset(dataset, data_root, split, **(options or {}))
        except DatasetError as error:
            report.splits.append(SplitReport(split, problems=[str(error).splitlines()[0]]))
            continue
        split_report = _split_report(dataset, sources[split], None, split)
        if decode:
            _decode(sources[split], split_report, workers)
        report.splits.append(split_report)
    if train not in sources:
        return report
    train_classes = set(_names(set(sources[train].labels), sources[train].classnames))
    for split_report in report.splits:
        if split_report.split == train or split_report.split not in sources:
            continue
        classes = set(split_report.counts)
        only_eval, only_train = sorted(classes - train_classes), sorted(train_classes - classes)
        if only_eval:
            split_report.problems.append(f"classes not in {train}: {_shown(only_eval)}")
        if only_train:
            split_report.problems.append(f"classes of {train} missing here: {_shown(only_train)}")
    return report


# --- the workflow gate: cached, every dataset a target reads, all shortfalls at once -------------

def listing_stamp(folder: Path, depth: int = STAMP_DEPTH) -> dict[str, Any]:
    """The mtimes of `folder`'s directories down to `depth` levels (and size/mtime of its non-image files
    in the top two levels, e.g. metadata CSVs): any file added, removed or renamed changes one of them."""
    stamp: dict[str, Any] = {}

    def visit(path: Path, relative: str, level: int) -> None:
        stamp[relative + "/"] = path.stat().st_mtime_ns
        with os.scandir(path) as entries:
            for entry in entries:
                name = f"{relative}/{entry.name}"
                if entry.is_dir():
                    if level < depth:
                        visit(Path(entry.path), name, level + 1)
                    else:
                        stamp[name + "/"] = entry.stat().st_mtime_ns
                elif level <= 1 and not entry.name.lower().endswith(IMAGE_EXTENSIONS):
                    info = entry.stat()
                    stamp[name] = [info.st_size, info.st_mtime_ns]

    visit(Path(folder), ".", 0)
    return stamp


def _cache_key(dataset: str, folder: Path, extra: Any = None) -> dict[str, Any]:
    manifest = load_manifest(dataset)
    return {"stamp_version": STAMP_VERSION, "dataset": dataset, "manifest": manifest.version if manifest else None,
            "folder": str(folder.resolve()), "extra": extra, "listing": listing_stamp(folder)}


def _cached(data_root: Path, dataset: str, key: dict[str, Any]) -> bool:
    try:
        return json.loads((data_root / STAMP_DIR / f"{dataset}.json").read_text(encoding="utf-8")) == key
    except (OSError, ValueError):
        return False


def _remember(data_root: Path, dataset: str, key: dict[str, Any]) -> None:
    """Cache a passing result (a read-only data root only costs a listing next time)."""
    from stages.io import atomic_write_json

    try:
        atomic_write_json(data_root / STAMP_DIR / f"{dataset}.json", key)
    except OSError:
        pass


def cached_verify(dataset: str, data_root: Path, own: dict[str, Any] | None = None) -> DatasetReport | None:
    """Verify `dataset` unless a cached pass matches its listing stamp; None when it passes.

    `own`: for your own data, ``{"splits": [...], "train_split": ..., "options": {...}}``.
    """
    data_root = Path(data_root)
    layout = dataset_layouts().get(dataset)
    folder = None
    if layout is not None:
        folder = next((data_root / name for name in layout.folders if (data_root / name).is_dir()), None)
    elif (data_root / dataset).is_dir():  # csv, webdataset: <data_root>/<name>/ by default
        folder = data_root / dataset
    key = _cache_key(dataset, folder, own) if folder is not None else None
    if key is not None and _cached(data_root, dataset, key):
        return None
    if own is not None:
        report = verify_own_data(dataset, data_root, own["splits"], own.get("train_split"), own.get("options"))
    else:
        report = verify_dataset(dataset, data_root)
    if report.ok:
        if key is not None:
            _remember(data_root, dataset, key)
        return None
    return report


def gate_message(reports: list[DatasetReport]) -> str:
    """The one message naming every dataset that falls short (the same lines as ``verify``)."""
    names = ", ".join(report.dataset for report in reports)
    return (f"data not ready: {names} (python -m stages.data verify)\n" + "\n".join(report.text() for report in reports)
            + "\nFix each as its line says, or score what is there on purpose with --config allow_partial=true "
              "(every table then says so).")


def is_present(dataset: str, data_root: Path, own: dict[str, Any] | None = None) -> bool:
    """Whether any of `dataset` is under `data_root`: its layout's folder, or (your own data) one of its splits."""
    data_root = Path(data_root)
    layout = dataset_layouts().get(dataset)
    if layout is not None and any((data_root / name).is_dir() for name in layout.folders):
        return True
    for split in (own or {}).get("splits", []):
        path = Path(split) if Path(split).is_absolute() else data_root / split
        if path.is_file() or (data_root / dataset / split).is_dir():
            return True
    return False
