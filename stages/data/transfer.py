"""Zero-shot and transfer datasets: STL10, Caltech101, StanfordCars, Flowers102.

Caltech101, StanfordCars and Flowers102 use the FLYP/StarFT split folders
(``<dataset>/{train,val,test}/<class folder>/``, Table 5); their labels follow the sorted folder
names, which for Cars and Flowers differs from torchvision's order. Caltech101 also reads the
original ``101_ObjectCategories`` as split ``all`` (the whole set minus BACKGROUND_Google).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stages.data.layout import Layout, check_split, classnames, data_file, folder_dataset
from stages.data.source import DatasetError, LabeledImages, register_dataset

FLYP = "split with FLYP's datacreation_scripts (github.com/locuslab/FLYP)"
STL10 = Layout(
    "stl10", ("stl10_binary",),
    "  stl10_binary/{test_X.bin, test_y.bin, train_X.bin, train_y.bin}   (uint8, column-major 96x96; labels 1..10)",
    "stl10_binary.tar.gz from cs.stanford.edu/~acoates/stl10",
)
CALTECH_SPLITS = Layout(
    "caltech101", ("caltech-101",),
    "  caltech-101/{train,val,test}/<category folder>/image_XXXX.jpg   (101 folders of 101_ObjectCategories)",
    f"101_ObjectCategories from data.caltech.edu (Caltech101), {FLYP}",
)
CALTECH_ALL = Layout(
    "caltech101", ("caltech101/101_ObjectCategories", "101_ObjectCategories"),
    "  caltech101/101_ObjectCategories/<category folder>/image_XXXX.jpg   (BACKGROUND_Google is skipped)",
    "caltech-101.zip from data.caltech.edu/records/mzrjq-6wc02 (torchvision.datasets.Caltech101 layout)",
)
STANFORD_CARS = Layout(
    "stanford-cars", ("stanford_cars", "StanfordCars"),
    "  stanford_cars/{train,val,test}/<Class_Name_With_Underscores>/<file>.jpg   (196 folders, '/' -> '-')",
    f"Stanford Cars (cars_train, cars_test, devkit, cars_test_annos_withlabels.mat; a Kaggle mirror since the "
    f"original URL died, see pytorch/vision#7545), {FLYP}",
)
FLOWERS = Layout(
    "flowers102", ("flowers102", "oxford_flowers"),
    "  flowers102/{train,val,test}/<class_name_with_underscores>/image_XXXXX.jpg   (102 folders)",
    f"102flowers.tgz, imagelabels.mat and setid.mat from www.robots.ox.ac.uk/~vgg/data/flowers/102/, {FLYP}",
)


@register_dataset("stl10")
def stl10(root: Path, split: str) -> LabeledImages:
    """STL10 ``train`` (5,000) or ``test`` (8,000) from the binary files (images stored column-major)."""
    check_split("stl10", split, ("train", "test"))
    base = STL10.locate(root)
    x_path, y_path = STL10.require(base / f"{split}_X.bin", root), STL10.require(base / f"{split}_y.bin", root)
    raw = np.fromfile(x_path, dtype=np.uint8)
    labels = np.fromfile(y_path, dtype=np.uint8).astype(np.int64) - 1
    if raw.size != len(labels) * 3 * 96 * 96:
        raise DatasetError(f"{x_path}: {raw.size} bytes do not hold {len(labels)} images of 3x96x96 ({y_path})")
    images = np.ascontiguousarray(raw.reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1))
    return LabeledImages(name="stl10", classnames=classnames("stl10"), images=images, labels=labels.tolist())


def _folder_labels(name: str) -> tuple[dict[str, int], list[str]]:
    """Folder name -> label and the class names, from ``classnames/<name>.json``."""
    meta = data_file("classnames", name)
    return {folder: label for label, folder in enumerate(meta["folders"])}, list(meta["classnames"])


@register_dataset("caltech101")
def caltech101(root: Path, split: str) -> LabeledImages:
    """Caltech101: FLYP ``train``/``val``/``test`` folders, or ``all`` of 101_ObjectCategories; 101 classes."""
    check_split("caltech101", split, ("train", "val", "test", "all"))
    label_of, names = _folder_labels("caltech101")
    if split == "all":
        return folder_dataset("caltech101", CALTECH_ALL.locate(root), label_of, names, ignore=("BACKGROUND_Google",))
    base = CALTECH_SPLITS.require(CALTECH_SPLITS.locate(root) / split, root)
    return folder_dataset("caltech101", base, label_of, names)


@register_dataset("stanford-cars")
def stanford_cars(root: Path, split: str) -> LabeledImages:
    """StanfordCars FLYP ``train``/``val``/``test`` folders; 196 classes in sorted-folder order."""
    check_split("stanford-cars", split, ("train", "val", "test"))
    label_of, names = _folder_labels("stanford_cars")
    return folder_dataset("stanford-cars", STANFORD_CARS.require(STANFORD_CARS.locate(root) / split, root), label_of, names)


@register_dataset("flowers102")
def flowers102(root: Path, split: str) -> LabeledImages:
    """Flowers102 FLYP ``train``/``val``/``test`` folders; 102 classes in alphabetical order."""
    check_split("flowers102", split, ("train", "val", "test"))
    label_of, names = _folder_labels("flowers102")
    return folder_dataset("flowers102", FLOWERS.require(FLOWERS.locate(root) / split, root), label_of, names)
