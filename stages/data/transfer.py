"""Zero-shot and transfer datasets: STL10, Caltech101, StanfordCars, Flowers102.

Caltech101, StanfordCars and Flowers102 use the FLYP/StarFT split folders
(``<dataset>/{train,val,test}/<class folder>/``, Table 5); their labels follow the sorted folder
names, which for Cars and Flowers differs from torchvision's order. Caltech101 also reads the
original ``101_ObjectCategories`` as split ``all`` (the whole set minus BACKGROUND_Google).

Without the split folders, Cars and Flowers are read from their original distribution (the
torchvision layouts, ``.mat`` annotations) and split exactly as FLYP's scripts split them:
Flowers by ``setid.mat`` (trnid / valid / tstid); Cars' test = ``cars_test``, and its train / val
= scikit-learn's ``train_test_split(test_size=0.2, random_state=10)`` of ``cars_train`` in
annotation order, i.e. val = the first ceil(0.2 n) of ``RandomState(10).permutation(n)``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from stages.data.layout import Layout, PathList, check_split, classnames, data_file, folder_dataset, mat_variable
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
    "caltech101", ("caltech101/101_ObjectCategories", "101_ObjectCategories", "caltech-101/101_ObjectCategories"),
    "  caltech101/101_ObjectCategories/<category folder>/image_XXXX.jpg   (BACKGROUND_Google is skipped;\n"
    "  caltech-101/101_ObjectCategories/, beside the FLYP split folders as prepare writes it, is read too)",
    "caltech-101.zip from data.caltech.edu/records/mzrjq-6wc02 (torchvision.datasets.Caltech101 layout)",
)
STANFORD_CARS = Layout(
    "stanford-cars", ("stanford_cars", "StanfordCars"),
    "  stanford_cars/{train,val,test}/<Class_Name_With_Underscores>/<file>.jpg   (196 folders, '/' -> '-'), or\n"
    "  stanford_cars/{devkit/{cars_meta.mat, cars_train_annos.mat}, cars_train/, cars_test/,\n"
    "                 cars_test_annos_withlabels.mat}   (the original files, torchvision's layout)",
    f"Stanford Cars (cars_train, cars_test, devkit, cars_test_annos_withlabels.mat; a Kaggle mirror since the "
    f"original URL died, see pytorch/vision#7545), optionally {FLYP}",
)
FLOWERS = Layout(
    "flowers102", ("flowers102", "oxford_flowers", "flowers-102"),
    "  flowers102/{train,val,test}/<class_name_with_underscores>/image_XXXXX.jpg   (102 folders), or\n"
    "  flowers-102/{jpg/image_XXXXX.jpg, imagelabels.mat, setid.mat}   (the original files, torchvision's layout)",
    f"102flowers.tgz, imagelabels.mat and setid.mat from www.robots.ox.ac.uk/~vgg/data/flowers/102/, optionally {FLYP}",
)
FLOWERS_SET_IDS = {"train": "trnid", "val": "valid", "test": "tstid"}
CARS_VAL_FRACTION, CARS_SPLIT_SEED = 0.2, 10  # FLYP's train_test_split(test_size=0.2, random_state=10)


@register_dataset("stl10", STL10)
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


@register_dataset("caltech101", CALTECH_SPLITS)
def caltech101(root: Path, split: str) -> LabeledImages:
    """Caltech101: FLYP ``train``/``val``/``test`` folders, or ``all`` of 101_ObjectCategories; 101 classes."""
    check_split("caltech101", split, ("train", "val", "test", "all"))
    label_of, names = _folder_labels("caltech101")
    if split == "all":
        return folder_dataset("caltech101", CALTECH_ALL.locate(root), label_of, names, ignore=("BACKGROUND_Google",))
    base = CALTECH_SPLITS.require(CALTECH_SPLITS.locate(root) / split, root)
    return folder_dataset("caltech101", base, label_of, names)


def flyp_cars_split(count: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices into ``cars_train`` in annotation order, as FLYP's train_test_split draws them."""
    val_size = math.ceil(CARS_VAL_FRACTION * count)
    permutation = np.random.RandomState(CARS_SPLIT_SEED).permutation(count)
    return permutation[val_size:], permutation[:val_size]


def _cars_from_mat(base: Path, root: Path, split: str) -> LabeledImages:
    label_of, names = _folder_labels("stanford_cars")
    meta_path = base / "devkit" / "cars_meta.mat"
    meta_names = mat_variable(meta_path, "class_names", STANFORD_CARS, root)
    # Annotation classes are 1-based indices into cars_meta's (OpenAI-ordered) names.
    folder_of_class = [str(name).replace(" ", "_").replace("/", "-") for name in meta_names]
    unknown = sorted(set(folder_of_class) - set(label_of))
    if unknown:
        raise DatasetError(f"{meta_path}: class names not among the 196 Stanford Cars classes: {unknown[:3]}")
    if split == "test":
        annotations_path = next((path for path in (base / "cars_test_annos_withlabels.mat",
                                                   base / "devkit" / "cars_test_annos_withlabels.mat") if path.is_file()),
                                base / "cars_test_annos_withlabels.mat")
        image_folder = "cars_test"
    else:
        annotations_path, image_folder = base / "devkit" / "cars_train_annos.mat", "cars_train"
    annotations = mat_variable(annotations_path, "annotations", STANFORD_CARS, root)
    files, classes = [str(f) for f in annotations["fname"]], [int(c) for c in annotations["class"]]
    if not all(1 <= c <= len(folder_of_class) for c in classes):
        raise DatasetError(f"{annotations_path}: class ids outside 1..{len(folder_of_class)}")
    keep = np.arange(len(files)) if split == "test" else flyp_cars_split(len(files))[split == "val"]
    STANFORD_CARS.require(base / image_folder, root)
    return LabeledImages(name="stanford-cars", classnames=names,
                         images=PathList(base, [f"{image_folder}/{files[i]}" for i in keep]),
                         labels=[label_of[folder_of_class[classes[i] - 1]] for i in keep])


def _flowers_from_mat(base: Path, root: Path, split: str) -> LabeledImages:
    label_of, names = _folder_labels("flowers102")
    # imagelabels.mat numbers the classes 1..102 in OpenAI's order; our labels are alphabetical.
    label_of_class = [label_of[name.replace(" ", "_")] for name in data_file("classnames", "flowers102")["openai_order"]]
    labels_path, sets_path = base / "imagelabels.mat", base / "setid.mat"
    class_of_image = mat_variable(labels_path, "labels", FLOWERS, root).astype(int)
    image_ids = mat_variable(sets_path, FLOWERS_SET_IDS[split], FLOWERS, root).astype(int)
    if not (class_of_image.min() >= 1 and class_of_image.max() <= len(label_of_class)):
        raise DatasetError(f"{labels_path}: labels outside 1..{len(label_of_class)}")
    if not (image_ids.min() >= 1 and image_ids.max() <= len(class_of_image)):
        raise DatasetError(f"{sets_path}: {FLOWERS_SET_IDS[split]} has image ids outside 1..{len(class_of_image)}")
    image_folder = next((name for name in ("jpg", "all_images") if (base / name).is_dir()), None)
    if image_folder is None:
        FLOWERS.missing(base / "jpg", root)
    return LabeledImages(name="flowers102", classnames=names,
                         images=PathList(base, [f"{image_folder}/image_{i:05d}.jpg" for i in image_ids]),
                         labels=[label_of_class[class_of_image[i - 1] - 1] for i in image_ids])


@register_dataset("stanford-cars", STANFORD_CARS)
def stanford_cars(root: Path, split: str) -> LabeledImages:
    """StanfordCars ``train``/``val``/``test``: FLYP folders, else the original files; 196 classes, sorted-folder order."""
    check_split("stanford-cars", split, ("train", "val", "test"))
    base = STANFORD_CARS.locate(root)
    if not (base / split).is_dir() and (base / "devkit").is_dir():
        return _cars_from_mat(base, root, split)
    label_of, names = _folder_labels("stanford_cars")
    return folder_dataset("stanford-cars", STANFORD_CARS.require(base / split, root), label_of, names)


@register_dataset("flowers102", FLOWERS)
def flowers102(root: Path, split: str) -> LabeledImages:
    """Flowers102 ``train``/``val``/``test``: FLYP folders, else the original files; 102 classes, alphabetical."""
    check_split("flowers102", split, ("train", "val", "test"))
    base = FLOWERS.locate(root)
    if not (base / split).is_dir() and (base / "setid.mat").is_file():
        return _flowers_from_mat(base, root, split)
    label_of, names = _folder_labels("flowers102")
    return folder_dataset("flowers102", FLOWERS.require(base / split, root), label_of, names)
