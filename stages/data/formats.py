"""Bring the data you already have: FLYP/StarFT CSV files and WebDataset tar shards.

``csv`` (``data.train_set: csv``, options ``data.csv``): ``data.train_split`` / ``val_split`` name
a CSV file (relative paths: under ``data_root``), one row per image with an image path
(``img_key``, default ``filepath``; relative paths under ``data_root``), a caption (``caption_key``,
default ``title``) and optionally an integer label (``label_key``, default ``label``); fields
separated by ``separator`` (default a tab, as the FLYP/StarFT CSVs). Class names come from the
``classnames`` file (one per line, label order) or are parsed from the captions with
``title_template`` (``"a photo of a {c}."`` turns ``"a photo of a goldfish."`` into ``goldfish``).
The benchmarks ``csv-val`` / ``csv-test`` evaluate ``<data_root>/csv/{val,test}.csv`` with the
default options.

``webdataset`` (``data.train_set: webdataset``, options ``data.webdataset``): tar shards under
``<data_root>/webdataset/<split>/`` named by ``shards`` (brace-expanded with webdataset's
``braceexpand``), each sample ``<key>.jpg|jpeg|png|webp`` + ``<key>.cls`` (an integer) or
``<key>.json`` (``{"label": int}``), optionally ``<key>.txt`` (a caption). The shards are indexed
once (tar headers and labels only) and images are read at their offsets, so the loop's
per-sample seeding by (seed, epoch, index), its exact resume and its DDP split (rank r takes
every W-th sample of the epoch's permutation) are those of every other dataset.
"""

from __future__ import annotations

import csv
import io
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from stages.config import CsvOptions
from stages.data.source import DatasetError, LabeledImages, register_dataset

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def _under(root: Path, path: Path | str) -> Path:
    """`path` itself when absolute, else under the data root."""
    path = Path(path)
    return path if path.is_absolute() else root / path


def _classnames_file(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"class names file {path} does not exist (one class name per line, in label order)")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"{path}: no class names")
    return names


def caption_class(caption: str, template: str) -> str:
    """The class name inside `caption` when it follows `template` (``{c}`` = the name), else the caption."""
    prefix, _, suffix = template.partition("{c}")
    match = re.fullmatch(re.escape(prefix) + r"(.+?)" + re.escape(suffix), caption.strip())
    return match.group(1) if match else caption.strip()


def labels_and_names(where: str, captions: list[str], labels: list[int] | None, template: str,
                     names: list[str] | None) -> tuple[list[int], list[str]]:
    """(labels, class names): given labels, or labels from the class parsed out of each caption."""
    if labels is not None:
        if names is None:
            first: dict[int, str] = {}
            for label, caption in zip(labels, captions):
                first.setdefault(label, caption_class(caption, template))
            absent = sorted(set(range(max(first) + 1)) - set(first)) if first else []
            if absent:
                raise DatasetError(f"{where}: no sample has labels {absent[:5]}, so their class names are unknown; "
                                   "give a classnames file")
            names = [first[label] for label in range(len(first))]
        return labels, names
    parsed = [caption_class(caption, template) for caption in captions]
    names = names or sorted(set(parsed))
    index = {name: label for label, name in enumerate(names)}
    unknown = sorted(set(parsed) - set(index))
    if unknown:
        raise DatasetError(f"{where}: classes {unknown[:5]} are not in the class names file")
    return [index[name] for name in parsed], names


# The config's options model (data.csv) owns these defaults and their descriptions.
_CSV = CsvOptions()


@register_dataset("csv")
def csv_dataset(root: Path, split: str, separator: str = _CSV.separator, img_key: str = _CSV.img_key,
                caption_key: str = _CSV.caption_key, label_key: str | None = _CSV.label_key,
                title_template: str = _CSV.title_template, classnames: Path | None = _CSV.classnames) -> LabeledImages:
    """A FLYP/StarFT CSV file `split` (see the module docstring for the options)."""
    path = _under(root, split)
    if not path.is_file():
        raise DatasetError(f"CSV file {path} does not exist (data.train_split / val_split name the CSV file, "
                           "relative to data_root)")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter=separator)
        columns = reader.fieldnames or []
        needed = [img_key, caption_key]
        if any(key not in columns for key in needed):
            raise DatasetError(f"{path}: columns {columns} lack {[k for k in needed if k not in columns]}; set "
                               "data.csv.img_key / caption_key / separator (got separator "
                               f"{separator!r})")
        rows = list(reader)
    with_labels = label_key is not None and label_key in columns
    try:
        labels = [int(row[label_key]) for row in rows] if with_labels else None
    except ValueError as error:
        raise DatasetError(f"{path}: column {label_key!r} must hold integer labels ({error})") from error
    labels, names = labels_and_names(str(path), [row[caption_key] for row in rows], labels, title_template,
                                     _classnames_file(_under(root, classnames)) if classnames else None)
    return LabeledImages(name="csv", classnames=names, images=[_under(root, row[img_key]) for row in rows],
                         labels=labels, metadata={"captions": [row[caption_key] for row in rows]})


@dataclass(frozen=True)
class TarMember:
    """One file inside a tar shard, read at its offset (an image reference ``load_image`` opens)."""

    shard: Path
    offset: int
    size: int

    def open(self) -> IO[bytes]:
        """The member's bytes as a binary file."""
        with open(self.shard, "rb") as handle:
            handle.seek(self.offset)
            return io.BytesIO(handle.read(self.size))

    def __str__(self) -> str:
        return f"{self.shard}@{self.offset}"


def _index_shard(shard: Path) -> list[tuple[TarMember, int, str | None]]:
    """(image, label, caption) per sample of one shard, in the shard's order."""
    from webdataset.tariterators import base_plus_ext  # webdataset's own key/extension split

    samples: dict[str, dict[str, object]] = {}
    try:
        with tarfile.open(shard, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, extension = base_plus_ext(member.name)
                if key is None:
                    continue
                sample = samples.setdefault(key, {})
                extension = extension.lower()
                if extension in IMAGE_EXTENSIONS:
                    sample["image"] = TarMember(shard, member.offset_data, member.size)
                elif extension in ("cls", "json", "txt"):
                    text = tar.extractfile(member).read().decode("utf-8").strip()
                    if extension == "cls":
                        sample["label"] = int(text)
                    elif extension == "json":
                        sample.setdefault("label", json.loads(text).get("label"))
                    else:
                        sample["caption"] = text
    except (OSError, tarfile.TarError, ValueError) as error:
        raise DatasetError(f"cannot index shard {shard}: {error}") from error
    indexed = []
    for key, sample in samples.items():
        if "image" not in sample or sample.get("label") is None:
            raise DatasetError(f"{shard}: sample {key!r} lacks an image ({'/'.join(IMAGE_EXTENSIONS)}) or a label "
                               "(.cls, or .json with \"label\")")
        indexed.append((sample["image"], int(sample["label"]), sample.get("caption")))
    return indexed


@register_dataset("webdataset")
def webdataset_dataset(root: Path, split: str, shards: str = "{00000..00009}.tar",
                       classnames: Path | None = None) -> LabeledImages:
    """Tar shards ``<data_root>/webdataset/<split>/<shards>`` (see the module docstring)."""
    from braceexpand import braceexpand  # imported here: stages.data stays light for every other dataset

    folder = root / "webdataset" / split
    paths = [folder / name for name in braceexpand(shards)]
    absent = [p.name for p in paths if not p.is_file()]
    if absent:
        raise DatasetError(f"{folder}: shards {absent[:3]} ({len(absent)} of {len(paths)}) are missing; set "
                           "data.webdataset.shards to the shard names (e.g. '{00000..00099}.tar')")
    samples = [sample for path in paths for sample in _index_shard(path)]
    names_file = _under(root, classnames) if classnames else root / "webdataset" / "classnames.txt"
    captions = [caption for _, _, caption in samples]
    names = _classnames_file(names_file) if classnames or names_file.is_file() else None
    if names is None and any(caption is None for caption in captions):
        raise DatasetError(f"{names_file} is missing and not every sample has a .txt caption to name its class; "
                           "write the class names there (one per line, label order)")
    labels, names = labels_and_names(str(folder), [c or "" for c in captions], [label for _, label, _ in samples],
                                     "a photo of a {c}.", names)
    return LabeledImages(name="webdataset", classnames=names, images=[image for image, _, _ in samples],
                         labels=labels)
