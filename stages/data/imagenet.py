"""ImageNet and its distribution shifts: IN-V2 (matched frequency), IN-R, IN-A, IN-Sketch.

Labels index the 1000 sorted wnids, which is also the order of the OpenAI class names. IN-V2's
folders are named ``0``..``999`` and the label is the integer (a sorted listing would give
``0, 1, 10, 100, ...``). IN-R and IN-A hold 200 of the 1000 classes: their labels are positions in
the 200-class sub-list, and ``metadata["class_indices"]`` maps each to its ImageNet index, so a
1000-way head is scored on those columns only.
"""

from __future__ import annotations

import os
from pathlib import Path

from stages.data.layout import (
    Layout,
    PathList,
    check_split,
    class_folders,
    data_file,
    folder_dataset,
    mat_variable,
    read_csv,
)
from stages.data.source import DatasetError, LabeledImages, register_dataset

_HENDRYCKS = "people.eecs.berkeley.edu/~hendrycks/{} (github.com/hendrycks/{})"

IMAGENET = Layout(
    "imagenet", ("imagenet",),
    "  imagenet/train/<wnid>/<wnid>_<n>.JPEG   (1000 wnid folders, 1,281,167 images)\n"
    "  imagenet/val/<wnid>/ILSVRC2012_val_XXXXXXXX.JPEG   (50,000 images sorted into wnid folders), or\n"
    "  imagenet/val/ILSVRC2012_val_XXXXXXXX.JPEG unsorted, with its labels in either\n"
    "    imagenet/LOC_val_solution.csv   (Kaggle's ImageNet localization challenge: ImageId, PredictionString)\n"
    "    imagenet/ILSVRC2012_devkit_t12/data/{meta.mat, ILSVRC2012_validation_ground_truth.txt}   (the devkit)",
    "ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and ILSVRC2012_devkit_t12.tar.gz from image-net.org "
    "(or Kaggle's imagenet-object-localization-challenge)",
)
KAGGLE_VAL_SOLUTION = "LOC_val_solution.csv"
DEVKIT_DATA = Path("ILSVRC2012_devkit_t12") / "data"
IMAGENET_V2 = Layout(
    "imagenetv2", ("ImageNetV2-matched-frequency", "imagenetv2-matched-frequency-format-val"),
    "  ImageNetV2-matched-frequency/<0..999>/<sha>.jpeg   (10,000 images; folder name = ImageNet label)",
    "imagenetv2-matched-frequency.tar.gz from huggingface.co/datasets/vaishaal/ImageNetV2 "
    "(github.com/modestyachts/ImageNetV2); rename the extracted folder to ImageNetV2-matched-frequency",
)
IMAGENET_R = Layout(
    "imagenet-r", ("imagenet-r",),
    "  imagenet-r/<wnid>/*.jpg   (200 wnid folders, 30,000 images)",
    "imagenet-r.tar from " + _HENDRYCKS.format("imagenet-r.tar", "imagenet-r"),
)
IMAGENET_A = Layout(
    "imagenet-a", ("imagenet-a",),
    "  imagenet-a/<wnid>/*.jpg   (200 wnid folders, 7,500 images)",
    "imagenet-a.tar from " + _HENDRYCKS.format("imagenet-a.tar", "natural-adv-examples"),
)
IMAGENET_SKETCH = Layout(
    "imagenet-sketch", ("sketch", "imagenet-sketch"),
    "  sketch/<wnid>/*.JPEG   (1000 wnid folders, 50,889 images)",
    "ImageNet-Sketch.zip from github.com/HaohanWang/ImageNet-Sketch (Google Drive) or Kaggle wanghaohan/imagenetsketch",
)


def imagenet_classes() -> tuple[list[str], list[str]]:
    """The 1000 sorted ImageNet wnids and the OpenAI class names in the same order."""
    meta = data_file("classnames", "imagenet")
    return list(meta["wnids"]), list(meta["classnames"])


def _wnid_labels() -> dict[str, int]:
    wnids, _ = imagenet_classes()
    return {wnid: index for index, wnid in enumerate(wnids)}


def _val_wnids_from_kaggle(solution: Path) -> dict[str, str]:
    """Image id -> wnid from Kaggle's ``LOC_val_solution.csv`` (the first token of each box list)."""
    rows = read_csv(solution, ("ImageId", "PredictionString"))
    return {row["ImageId"]: row["PredictionString"].split()[0] for row in rows if row["PredictionString"].strip()}


def _val_wnids_from_devkit(devkit: Path, root: Path, image_ids: list[str]) -> dict[str, str]:
    """Image id -> wnid from the devkit: line n of the ground truth is image n's ILSVRC2012_ID (meta.mat maps it)."""
    synsets = mat_variable(devkit / "meta.mat", "synsets", IMAGENET, root)
    wnid_of_id = {int(synset["ILSVRC2012_ID"]): str(synset["WNID"]) for synset in synsets}
    truth_path = IMAGENET.require(devkit / "ILSVRC2012_validation_ground_truth.txt", root)
    truth = [int(line) for line in truth_path.read_text().split()]
    wnids = {}
    for image_id in image_ids:
        number = int(image_id.rsplit("_", 1)[-1])
        if not 1 <= number <= len(truth) or truth[number - 1] not in wnid_of_id:
            raise DatasetError(f"{truth_path}: no label for {image_id} ({len(truth)} lines; meta.mat ids 1..1000)")
        wnids[image_id] = wnid_of_id[truth[number - 1]]
    return wnids


def _unsorted_val(base: Path, root: Path, entries: list[os.DirEntry]) -> LabeledImages:
    """ILSVRC-2012 val as the tar extracts it (one folder of JPEGs, `entries`), labelled by Kaggle's CSV or the devkit."""
    _, names = imagenet_classes()
    label_of = _wnid_labels()
    files = sorted(e.name for e in entries if e.is_file() and e.name.lower().endswith((".jpeg", ".jpg")))
    image_ids = [name.rsplit(".", 1)[0] for name in files]
    imagenet_dir = base.parent
    solution = next((path for path in (imagenet_dir / KAGGLE_VAL_SOLUTION, base / KAGGLE_VAL_SOLUTION) if path.is_file()),
                    None)
    if solution is not None:
        wnid_of, labels_from = _val_wnids_from_kaggle(solution), solution
    elif (imagenet_dir / DEVKIT_DATA).is_dir():
        wnid_of, labels_from = _val_wnids_from_devkit(imagenet_dir / DEVKIT_DATA, root, image_ids), imagenet_dir / DEVKIT_DATA
    else:
        IMAGENET.missing(imagenet_dir / KAGGLE_VAL_SOLUTION, root)
    unlabelled = [image_id for image_id in image_ids if wnid_of.get(image_id) not in label_of]
    if unlabelled:
        raise DatasetError(f"imagenet: {len(unlabelled)} val images have no ImageNet label in {labels_from}, "
                           f"e.g. {unlabelled[:3]}")
    return LabeledImages(name="imagenet", classnames=names, images=PathList(base, files),
                         labels=[label_of[wnid_of[image_id]] for image_id in image_ids])


@register_dataset("imagenet", IMAGENET)
def imagenet(root: Path, split: str) -> LabeledImages:
    """ILSVRC-2012 ``train`` or ``val`` in wnid folders (val also unsorted, see IMAGENET); 1000 classes, OpenAI names."""
    check_split("imagenet", split, ("train", "val"))
    base = IMAGENET.require(IMAGENET.locate(root) / split, root)
    if split == "val":
        with os.scandir(base) as scan:
            entries = list(scan)  # listed once: the unsorted reader takes its files from here
        if not any(entry.is_dir() for entry in entries):
            return _unsorted_val(base, root, entries)
    _, names = imagenet_classes()
    return folder_dataset("imagenet", base, _wnid_labels(), names)


@register_dataset("imagenet-sketch", IMAGENET_SKETCH)
def imagenet_sketch(root: Path, split: str) -> LabeledImages:
    """ImageNet-Sketch (``test``): 1000 wnid folders, ImageNet labels and names."""
    check_split("imagenet-sketch", split, ("test",))
    _, names = imagenet_classes()
    return folder_dataset("imagenet-sketch", IMAGENET_SKETCH.locate(root), _wnid_labels(), names)


@register_dataset("imagenetv2", IMAGENET_V2)
def imagenetv2(root: Path, split: str) -> LabeledImages:
    """ImageNetV2 matched-frequency (``test``): the label is ``int(folder name)``, never its sorted position."""
    check_split("imagenetv2", split, ("test",))
    base = IMAGENET_V2.locate(root)
    _, names = imagenet_classes()
    with os.scandir(base) as entries:
        folders = [e.name for e in entries if e.is_dir()]
    bad = [folder for folder in folders if not (folder.isdigit() and int(folder) < len(names))]
    if bad:
        raise DatasetError(f"imagenetv2: {base} has folders that are not ImageNet labels 0..999: {sorted(bad)[:5]}")
    paths, labels = class_folders("imagenetv2", base, {folder: int(folder) for folder in folders})
    return LabeledImages(name="imagenetv2", classnames=names, images=PathList(base, paths), labels=labels)


def _imagenet_subset(name: str, layout: Layout, root: Path, split: str) -> LabeledImages:
    """IN-R / IN-A: labels are positions in the 200-class sub-list; ``class_indices`` maps them to ImageNet."""
    check_split(name, split, ("test",))
    wnids, names = imagenet_classes()
    subset = data_file("classnames", "imagenet")[name]
    index_of = {wnid: index for index, wnid in enumerate(wnids)}
    class_indices = [index_of[wnid] for wnid in subset]
    return folder_dataset(
        name, layout.locate(root), {wnid: position for position, wnid in enumerate(subset)},
        [names[index] for index in class_indices], class_indices=class_indices,
    )


@register_dataset("imagenet-r", IMAGENET_R)
def imagenet_r(root: Path, split: str) -> LabeledImages:
    """ImageNet-R (``test``): 200 classes; ``metadata["class_indices"]`` are their ImageNet indices."""
    return _imagenet_subset("imagenet-r", IMAGENET_R, root, split)


@register_dataset("imagenet-a", IMAGENET_A)
def imagenet_a(root: Path, split: str) -> LabeledImages:
    """ImageNet-A (``test``): 200 classes (a different sub-list from IN-R)."""
    return _imagenet_subset("imagenet-a", IMAGENET_A, root, split)
