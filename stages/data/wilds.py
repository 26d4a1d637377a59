"""WILDS iWildCam v2.0 and FMoW v1.1 read from the WILDS on-disk layout (the ``wilds`` package is not needed).

iWildCam: splits train / val (OOD) / test (OOD) / id_val / id_test from ``metadata.csv``; every
image lives in ``train/``; 182 classes; the paper's metric is macro-F1.

FMoW, split scheme ``official``: id_val / id_test = val / test rows before 2013, val (OOD) = val
rows in 2013-2015, test (OOD) = test rows from 2016, train = train rows before 2013. Images are
``images/rgb_img_<i>.png`` with ``i`` the row's index in ``rgb_metadata.csv`` (``seq`` rows
included). Groups are regions by name; the paper's OOD metric is the worst region (``Other``
excluded, as WILDS does).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from stages.data.layout import Layout, PathList, check_split, classnames, int_column, read_csv
from stages.data.source import DatasetError, LabeledImages, register_dataset

IWILDCAM = Layout(
    "iwildcam", ("iwildcam_v2.0",),
    "  iwildcam_v2.0/metadata.csv   (columns split, filename, y, ...)\n"
    "  iwildcam_v2.0/train/<filename>   (images of every split)",
    "wilds.get_dataset('iwildcam', root_dir=R, download=True) (pip install wilds; github.com/p-lambda/wilds)",
)
FMOW = Layout(
    "fmow", ("fmow_v1.1",),
    "  fmow_v1.1/rgb_metadata.csv   (columns split, timestamp, country_code, category)\n"
    "  fmow_v1.1/country_code_mapping.csv   (columns alpha-3, region)\n"
    "  fmow_v1.1/images/rgb_img_<row>.png",
    "wilds.get_dataset('fmow', root_dir=R, download=True) (pip install wilds; github.com/p-lambda/wilds)",
)
REGIONS = ["Asia", "Europe", "Africa", "Americas", "Oceania", "Other"]


@register_dataset("iwildcam", IWILDCAM)
def iwildcam(root: Path, split: str) -> LabeledImages:
    """iWildCam ``train``/``val``/``test``/``id_val``/``id_test``; 182 classes."""
    check_split("iwildcam", split, ("train", "val", "test", "id_val", "id_test"))
    base = IWILDCAM.locate(root)
    metadata = IWILDCAM.require(base / "metadata.csv", root)
    rows = [row for row in read_csv(metadata, ("split", "filename", "y")) if row["split"] == split]
    if not rows:
        raise DatasetError(f"{metadata}: no rows with split == {split!r}")
    names = classnames("iwildcam")
    labels = int_column(metadata, rows, "y", range(len(names)))
    return LabeledImages(
        name="iwildcam", classnames=names, images=PathList(base / "train", [row["filename"] for row in rows]),
        labels=labels,
    )


def _timestamp(path: Path, line: int, raw: str) -> datetime:
    """Parse an ISO timestamp (``Z`` allowed) as UTC; naive ones are taken as UTC."""
    try:
        stamp = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        raise DatasetError(f"{path}: column 'timestamp', line {line}: {raw!r} is not an ISO timestamp") from None
    return stamp.replace(tzinfo=timezone.utc) if stamp.tzinfo is None else stamp.astimezone(timezone.utc)


def _fmow_split(split: str, year: int) -> str | None:
    """The official-scheme split of a row from its ``split`` column value and UTC year."""
    if split == "seq":
        return None
    if year < 2013:
        return split if split == "train" else f"id_{split}"
    if split == "val" and year < 2016:
        return "val"
    if split == "test" and year >= 2016:
        return "test"
    return None


@register_dataset("fmow", FMOW)
def fmow(root: Path, split: str) -> LabeledImages:
    """FMoW ``train``/``id_val``/``id_test``/``val``/``test`` (official scheme); groups = regions."""
    check_split("fmow", split, ("train", "id_val", "id_test", "val", "test"))
    base = FMOW.locate(root)
    metadata = FMOW.require(base / "rgb_metadata.csv", root)
    mapping = FMOW.require(base / "country_code_mapping.csv", root)
    region_of = {row["alpha-3"]: row["region"] for row in read_csv(mapping, ("alpha-3", "region"))}
    names = classnames("fmow")
    label_of = {name.replace(" ", "_"): label for label, name in enumerate(names)}
    paths: list[str] = []
    labels: list[int] = []
    groups: list[int] = []
    for index, row in enumerate(read_csv(metadata, ("split", "timestamp", "country_code", "category"))):
        if _fmow_split(row["split"], _timestamp(metadata, index + 2, row["timestamp"]).year) != split:
            continue
        if row["category"] not in label_of:
            raise DatasetError(f"{metadata}: column 'category', line {index + 2}: unknown category {row['category']!r}")
        region = region_of.get(row["country_code"]) or "Other"
        if region not in REGIONS:
            raise DatasetError(f"{mapping}: column 'region': unknown region {region!r}; expected one of {REGIONS}")
        paths.append(f"images/rgb_img_{index}.png")
        labels.append(label_of[row["category"]])
        groups.append(REGIONS.index(region))
    if not paths:
        raise DatasetError(f"{metadata}: no rows in split {split!r}")
    return LabeledImages(
        name="fmow", classnames=names, images=PathList(base, paths), labels=labels, groups=groups, group_names=REGIONS,
    )
