"""Tiny archives shaped like each dataset's official release (same file names, nesting and metadata files).

Each builder writes the release's files into `folder` and returns ``{RemoteFile.name: path}``, the
mapping a route's ``arrange`` receives. The contents come from ``tests/fakes.py`` (the extracted
layouts the adapters read), packed here the way the official archive nests them, plus the files
the official archive has beside them (readme.html, Annotations.tar, categories.csv, ...).
"""

from __future__ import annotations

import io
import shutil
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

import fakes
from stages.data.layout import classnames, data_file

Builder = Callable[[Path], dict[str, Path]]


def pack_tar(path: Path, tree: Path, prefix: str = "", gz: bool = True) -> Path:
    """Tar (gzipped) every file under `tree`, named ``<prefix><relative path>`` in sorted order (as a release tars a folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz" if gz else "w") as bundle:
        if prefix:
            bundle.add(tree, arcname=prefix.rstrip("/"), recursive=False)
        for file in sorted(tree.rglob("*")):
            bundle.add(file, arcname=prefix + file.relative_to(tree).as_posix(), recursive=False)
    return path


def pack_zip(path: Path, tree: Path, prefix: str = "") -> Path:
    """Zip every file under `tree`, named ``<prefix><relative path>``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as bundle:
        for file in sorted(tree.rglob("*")):
            if file.is_file():
                bundle.write(file, prefix + file.relative_to(tree).as_posix())
    return path


IMAGENET_VAL_CLASSES = (3, 7, 3, 500)
"""Class (index into ``fakes.imagenet_wnids()``) of the fake val images ILSVRC2012_val_00000001.JPEG, 2, ..."""
IMAGENET_TRAIN_CLASSES = (3, 7, 999)
"""Classes of the fake train tar's per-class tars, in order; the n-th (from 1) holds n images."""


def imagenet(folder: Path) -> dict[str, Path]:
    """The three ILSVRC-2012 archives, as the user downloads them: the devkit
    (``ILSVRC2012_devkit_t12/{data/meta.mat, data/ILSVRC2012_validation_ground_truth.txt, evaluation/, readme.txt}``),
    the flat val tar (``ILSVRC2012_val_<n>.JPEG``) and the train tar of per-class ``<wnid>.tar`` archives."""
    stage = folder / "stage"
    wnids = fakes.imagenet_wnids()
    fakes.imagenet_unsorted_val(stage, [wnids[c] for c in IMAGENET_VAL_CLASSES], labels="devkit")
    devkit = stage / "imagenet" / "ILSVRC2012_devkit_t12"
    (devkit / "evaluation").mkdir()
    (devkit / "readme.txt").write_text("ILSVRC2012 devkit (fake)\n")
    for index, wnid in enumerate(wnids[c] for c in IMAGENET_TRAIN_CLASSES):
        for n in range(1 + index):
            fakes.image(stage / "train" / wnid / f"{wnid}_{n}.JPEG", index + n)
        pack_tar(stage / "train-tars" / f"{wnid}.tar", stage / "train" / wnid, gz=False)
    return {
        "ILSVRC2012_devkit_t12.tar.gz": pack_tar(folder / "ILSVRC2012_devkit_t12.tar.gz", devkit, "ILSVRC2012_devkit_t12/"),
        "ILSVRC2012_img_val.tar": pack_tar(folder / "ILSVRC2012_img_val.tar", stage / "imagenet" / "val", gz=False),
        "ILSVRC2012_img_train.tar": pack_tar(folder / "ILSVRC2012_img_train.tar", stage / "train-tars", gz=False),
    }


IMAGENET_R_CLASSES = (0, 5, 9)
"""Positions (in IN-R's 200 classes) of the fake imagenet-r.tar's classes, two images each."""


def imagenet_r(folder: Path) -> dict[str, Path]:
    """``imagenet-r.tar``: ``imagenet-r/{README.txt, <wnid>/*.jpg}``."""
    stage = folder / "stage"
    for wnid in fakes.imagenet_subset(stage, "imagenet-r", list(IMAGENET_R_CLASSES)):
        fakes.image(stage / "imagenet-r" / wnid / "second.jpg", 3)
    # The release's README is small; this one is long enough (300 kB) that a dropped connection falls
    # after the first chunks the client has written, as it does in a 2 GB download.
    (stage / "imagenet-r" / "README.txt").write_text("ImageNet-R (fake)\n" * 17_000)
    return {"imagenet-r.tar": pack_tar(folder / "imagenet-r.tar", stage / "imagenet-r", "imagenet-r/", gz=False)}


def cifar10(folder: Path) -> dict[str, Path]:
    """``cifar-10-python.tar.gz``: ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta, readme.html}``."""
    stage = folder / "stage"
    for i, split_file in enumerate([*(f"data_batch_{n}" for n in range(1, 6)), "test_batch"]):
        fakes.cifar10(stage, [(i + k) % 10 for k in range(10)], seed=i, split_file=split_file)
    base = stage / "cifar-10-batches-py"
    fakes.write_pickle(base / "batches.meta", {"label_names": classnames("cifar10"), "num_cases_per_batch": 10, "num_vis": 3072})
    (base / "readme.html").write_text("<html></html>")
    return {"cifar-10-python.tar.gz": pack_tar(folder / "cifar-10-python.tar.gz", base, "cifar-10-batches-py/")}


def cifar100(folder: Path) -> dict[str, Path]:
    """``cifar-100-python.tar.gz``: ``cifar-100-python/{train, test, meta}``."""
    stage = folder / "stage"
    fakes.cifar100(stage, list(range(0, 100, 10)))
    base = stage / "cifar-100-python"
    shutil.copy(base / "test", base / "train")
    fakes.write_pickle(base / "meta", {"fine_label_names": [n.replace(" ", "_") for n in classnames("cifar100")],
                            "coarse_label_names": [f"super{i}" for i in range(20)]})
    return {"cifar-100-python.tar.gz": pack_tar(folder / "cifar-100-python.tar.gz", base, "cifar-100-python/")}


def cifar102(folder: Path) -> dict[str, Path]:
    """``cifar102_test.npz`` with the release's five keys; ``keywords`` as an object array (pickled inside the npz)."""
    labels = [label for label in range(10) for _ in range(2)]
    images = fakes.cifar_pixels(len(labels), 2)
    path = folder / "cifar102_test.npz"
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images, labels=np.array(labels, dtype=np.int64), label_names=np.array(classnames("cifar10")),
             ti_indices=np.arange(len(labels)), keywords=np.array([["kw"]] * len(labels), dtype=object))
    return {"cifar102_test.npz": path}


def stl10(folder: Path) -> dict[str, Path]:
    """``stl10_binary.tar.gz``: ``stl10_binary/{train,test}_{X,y}.bin, unlabeled_X.bin, class_names.txt, fold_indices.txt}``."""
    stage = folder / "stage"
    fakes.stl10(stage, list(range(10)))
    base = stage / "stl10_binary"
    for name in ("X", "y"):
        shutil.copy(base / f"test_{name}.bin", base / f"train_{name}.bin")
    (base / "unlabeled_X.bin").write_bytes(bytes(3 * 96 * 96))
    (base / "class_names.txt").write_text("\n".join(classnames("stl10")) + "\n")
    (base / "fold_indices.txt").write_text("0 1 2\n" * 10)
    return {"stl10_binary.tar.gz": pack_tar(folder / "stl10_binary.tar.gz", base, "stl10_binary/")}


CALTECH_SPLIT_OF = ("train", "val", "test")


def caltech101(folder: Path) -> dict[str, Path]:
    """``caltech-101.zip`` (``caltech-101/{101_ObjectCategories.tar.gz, Annotations.tar, show_annotation.m}``) and
    FLYP's three split CSVs (``title<TAB>filepath``, one row per image and template, FLYP's absolute paths)."""
    stage = folder / "stage"
    categories = data_file("classnames", "caltech101")["folders"]
    objects = stage / "101_ObjectCategories"
    csv_rows: dict[str, list[str]] = {split: [] for split in CALTECH_SPLIT_OF}
    for c, category in enumerate(["BACKGROUND_Google", *categories]):
        count = 4 if c < 4 else 1  # a few categories in every split, the rest in train only
        for n in range(1, count + 1):
            name = f"image_{n:04d}.jpg"
            fakes.image(objects / category / name, c + n)
            if category != "BACKGROUND_Google":
                split = CALTECH_SPLIT_OF[(n - 1) % 3] if count > 1 else "train"
                for template in ("a photo of a {}.", "a painting of a {}."):
                    csv_rows[split].append(f"{template.format(category)}\t/project_data/datasets/caltech-101/{split}/"
                                           f"{category}/{name}")
    inner = stage / "zip" / "caltech-101"
    pack_tar(inner / "101_ObjectCategories.tar.gz", objects, "101_ObjectCategories/")
    annotations = stage / "Annotations"
    (annotations / "Faces_2").mkdir(parents=True)
    (annotations / "Faces_2" / "annotation_0001.mat").write_bytes(b"MATLAB 5.0")
    pack_tar(inner / "Annotations.tar", annotations, "Annotations/", gz=False)
    (inner / "show_annotation.m").write_text("% show\n")
    files = {"caltech-101.zip": pack_zip(folder / "caltech-101.zip", stage / "zip")}
    for split, rows in csv_rows.items():
        path = folder / f"caltech101_{split}.csv"
        path.write_text("title\tfilepath\n" + "\n".join(rows) + "\n", encoding="utf-8")
        files[path.name] = path
    return files


def stanford_cars(folder: Path, wrapper: str = "stanford_cars/", doubled: bool = False) -> dict[str, Path]:
    """The Kaggle re-pack as a zip: ``<wrapper>{devkit/, cars_train/, cars_test/, cars_test_annos_withlabels.mat}``
    (`doubled`: ``cars_train/cars_train/*`` as some re-packs have it)."""
    stage = folder / "stage"
    meta = list(reversed(classnames("stanford_cars")))
    ram = meta.index("Ram C/V Cargo Van Minivan 2012") + 1
    fakes.stanford_cars_original(stage, meta, [1 + (7 * i) % 196 for i in range(10)], [196, ram, 1])
    base = stage / "stanford_cars"
    (base / "devkit" / "README.txt").write_text("devkit\n")
    if doubled:
        (base / "cars_train").rename(stage / "cars_train")
        (base / "cars_train").mkdir()
        (stage / "cars_train").rename(base / "cars_train" / "cars_train")
    return {"torchvision-stanford-cars.zip": pack_zip(folder / "torchvision-stanford-cars.zip", base, wrapper)}


def flowers102(folder: Path) -> dict[str, Path]:
    """``102flowers.tgz`` (``jpg/image_XXXXX.jpg``), ``imagelabels.mat``, ``setid.mat``."""
    stage = folder / "stage"
    fakes.flowers102_original(stage, [1, 2, 102, 1, 50, 7], {"trnid": [1, 2], "valid": [3], "tstid": [4, 5, 6]})
    base = stage / "flowers-102"
    return {"102flowers.tgz": pack_tar(folder / "102flowers.tgz", base / "jpg", "jpg/"),
            "imagelabels.mat": base / "imagelabels.mat", "setid.mat": base / "setid.mat"}


def waterbirds(folder: Path) -> dict[str, Path]:
    """``waterbird_complete95_forest2water2.tar.gz``: ``waterbird_complete95_forest2water2/{metadata.csv, NNN.Species/}``."""
    stage = folder / "stage"
    fakes.waterbirds(stage)
    base = stage / "waterbird_complete95_forest2water2"
    name = "waterbird_complete95_forest2water2"
    return {f"{name}.tar.gz": pack_tar(folder / f"{name}.tar.gz", base, f"{name}/")}


def pacs(folder: Path) -> dict[str, Path]:
    """``PACS.zip``: ``kfold/{art_painting,cartoon,photo,sketch}/<class>/*`` (plus the macOS resource folder some zips have)."""
    stage = folder / "stage"
    fakes.pacs(stage)
    path = pack_zip(folder / "PACS.zip", stage / "PACS", "kfold/")
    with zipfile.ZipFile(path, "a") as bundle:
        bundle.writestr("__MACOSX/kfold/._photo", b"\0\5\26\7")
    return {"PACS.zip": path}


def iwildcam(folder: Path) -> dict[str, Path]:
    """The WILDS archive: ``{metadata.csv, categories.csv, RELEASE_v2.0.txt, train/*.jpg}`` at the top level."""
    stage = folder / "stage"
    rows = fakes.iwildcam(stage)
    base = stage / "iwildcam_v2.0"
    fakes.image(base / "train" / "8g.jpg", 9)  # the shared fake has no id_val row
    with open(base / "metadata.csv", "a", newline="") as handle:
        handle.write(f"{len(rows)},id_val,0,8g.jpg,5,{len(rows)},2013-06-05 12:00:00.000\n")
    fakes.write_csv(base / "categories.csv", ["y", "category_id", "name"], [[0, 0, "empty"]])
    return {"iwildcam_v2.0.tar.gz": pack_tar(folder / "iwildcam_v2.0.tar.gz", base, "./")}


def fmow(folder: Path) -> dict[str, Path]:
    """The WILDS archive: ``{rgb_metadata.csv, country_code_mapping.csv, RELEASE_v1.1.txt, images/}`` at the top level."""
    stage = folder / "stage"
    fakes.fmow(stage)
    base = stage / "fmow_v1.1"
    (base / "images" / "rgb_img_1.png").unlink()  # row 1 is a 'seq' row: WILDS ships no image for it
    return {"fmow_v1.1.tar.gz": pack_tar(folder / "fmow_v1.1.tar.gz", base)}


BUILDERS: dict[str, Builder] = {
    "imagenet": imagenet, "imagenet-r": imagenet_r,
    "cifar10": cifar10, "cifar100": cifar100, "cifar10.02": cifar102, "stl10": stl10, "caltech101": caltech101,
    "stanford-cars": stanford_cars, "flowers102": flowers102, "waterbirds": waterbirds, "pacs": pacs,
    "iwildcam": iwildcam, "fmow": fmow,
}


def hostile_tar(path: Path, members: list[tarfile.TarInfo]) -> Path:
    """A tar.gz of the given members (regular ones get 4 bytes of data): for the refusal tests."""
    with tarfile.open(path, "w:gz") as bundle:
        for member in members:
            if member.isfile():
                member.size = 4
                bundle.addfile(member, io.BytesIO(b"evil"))
            else:
                bundle.addfile(member)
    return path


def tar_member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    """A tar header: a regular file, or with `kind` a symlink / hard link / device to `link`."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info
