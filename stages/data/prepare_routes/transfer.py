"""Prepare routes of STL10, Caltech101, Stanford Cars and Flowers102 (the zero-shot and transfer sets).

Files and md5s are torchvision's (``torchvision/datasets/{stl10,caltech,flowers102}.py``, 0.29).
Caltech101's FLYP split (Table 5) is not reproducible from FLYP's script (an unseeded
``np.random.choice`` per image), so it is rebuilt from the split CSVs FLYP published afterwards
(``datacreation_scripts/sample_csv/caltech101/{train,val,test}.csv``, locuslab/FLYP issue #9),
pinned to a commit and checked by their git blob ids. Stanford Cars' original URL is dead
(pytorch/vision#7545): it is a manual download of the Kaggle re-pack torchvision's documentation
names (pytorch/vision#8620). Flowers102 is kept as the original files; the adapter splits it by
``setid.mat`` exactly as FLYP does.
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

from stages.data.layout import data_file, mat_variable
from stages.data.archives import extract_tar, extract_zip, hoist, link_or_copy, zip_member
from stages.data.prepare_routes._checks import require_files, require_images
from stages.data.routes import PrepareRoute, RemoteFile, register_route
from stages.data.source import DatasetError
from stages.data.transfer import FLOWERS, FLOWERS_SET_IDS, STANFORD_CARS

STL10_FILE = RemoteFile(
    name="stl10_binary.tar.gz", url="http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
    md5="91f7769df0f17e558f3565bffb0c7dfb",
)
STL10_IMAGE_BYTES = 3 * 96 * 96

CALTECH_ZIP = RemoteFile(
    name="caltech-101.zip", url="https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip",
    md5="3138e1922a9193bfa496528edbbc45d0",
)
FLYP_COMMIT = "215d5bb6feeda6675f60e5818abcb4f6465c83af"
FLYP_CSV_BLOBS = {  # git blob ids of datacreation_scripts/sample_csv/caltech101/<split>.csv at FLYP_COMMIT
    "train": "2aef0e4dfdc78d35e544f6efac413292a60c735a",
    "val": "8ab482faab8ccb63c9cf1f60d6e9e558fb37b3ac",
    "test": "48b2dd5c9a204c0196f85e7fbde3c7ae0ddb039b",
}
CALTECH_CSVS = {
    split: RemoteFile(
        name=f"caltech101_{split}.csv",
        url=f"https://raw.githubusercontent.com/locuslab/FLYP/{FLYP_COMMIT}/datacreation_scripts/sample_csv/caltech101/{split}.csv",
        git_sha1=blob,
    )
    for split, blob in FLYP_CSV_BLOBS.items()
}
CALTECH_BACKGROUND = "BACKGROUND_Google"

CARS_ZIP = RemoteFile(
    name="torchvision-stanford-cars.zip", url="https://www.kaggle.com/datasets/rickyyyyyyy/torchvision-stanford-cars",
    manual=("Stanford Cars' original URL is gone (pytorch/vision#7545). Sign in to Kaggle and download "
            "https://www.kaggle.com/datasets/rickyyyyyyy/torchvision-stanford-cars (the re-pack torchvision's docs name; "
            "'kaggle datasets download -d rickyyyyyyy/torchvision-stanford-cars' saves it as torchvision-stanford-cars.zip, "
            "the browser as archive.zip: rename it), put torchvision-stanford-cars.zip in a folder DIR and run "
            "python -m stages.data prepare --dataset stanford-cars --from DIR"),
)
CARS_TEST_LABELS = "cars_test_annos_withlabels.mat"

FLOWERS_URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
FLOWERS_FILES = (
    RemoteFile(name="102flowers.tgz", url=FLOWERS_URL + "102flowers.tgz", md5="52808999861908f626f3c1f4e79d11fa"),
    RemoteFile(name="imagelabels.mat", url=FLOWERS_URL + "imagelabels.mat", md5="e0620be6f572b9609742df49c70aed4d"),
    RemoteFile(name="setid.mat", url=FLOWERS_URL + "setid.mat", md5="a5357ecc9cb78c4bef273ce3793fc85c"),
)


def arrange_stl10(files: dict[str, Path], target: Path) -> None:
    """``stl10_binary/{train,test}_{X,y}.bin`` + class names; ``unlabeled_X.bin`` (2.6 GB, unused here) is left out."""
    extract_tar(files[STL10_FILE.name], target, label=STL10_FILE.name, strip="stl10_binary",
                rename=lambda name: None if name == "unlabeled_X.bin" else name)
    require_files(target, ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "class_names.txt"], STL10_FILE.name)
    for split in ("train", "test"):
        images, labels = os.path.getsize(target / f"{split}_X.bin"), os.path.getsize(target / f"{split}_y.bin")
        if images != labels * STL10_IMAGE_BYTES:
            raise DatasetError(f"{STL10_FILE.name}: {split}_X.bin has {images} bytes for {labels} labels (expected "
                               f"{labels * STL10_IMAGE_BYTES}); the archive is incomplete: download it again")


def _flyp_split(csv_path: Path) -> list[tuple[str, str]]:
    """The distinct (category folder, image file) pairs of a FLYP split CSV (one row per image and template)."""
    pairs: dict[tuple[str, str], None] = {}
    try:
        with open(csv_path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            if "filepath" not in (reader.fieldnames or []):
                raise DatasetError(f"{csv_path}: no 'filepath' column (header: {reader.fieldnames}); is this FLYP's split CSV?")
            for row in reader:
                parts = row["filepath"].replace("\\", "/").rstrip("/").split("/")
                if len(parts) < 2 or not parts[-1] or not parts[-2]:
                    raise DatasetError(f"{csv_path}, line {reader.line_num}: filepath {row['filepath']!r} is not "
                                       ".../<category>/<image>")
                pairs[(parts[-2], parts[-1])] = None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DatasetError(f"{csv_path}: not a readable FLYP split CSV ({error}); download it again") from error
    return list(pairs)


def arrange_caltech101(files: dict[str, Path], target: Path) -> None:
    """``caltech-101/101_ObjectCategories/`` (split ``all``) and ``caltech-101/{train,val,test}/<category>/`` (FLYP).

    The split folders hard-link the images of 101_ObjectCategories listed in FLYP's CSVs, so they
    cost no extra disk; an image listed twice, in no category, or missing from the archive is an error.
    """
    label = f"{CALTECH_ZIP.name}:caltech-101/101_ObjectCategories.tar.gz"
    with zip_member(files[CALTECH_ZIP.name], "101_ObjectCategories.tar.gz") as inner:
        extract_tar(inner, target, label=label)
    images = target / "101_ObjectCategories"
    require_files(target, ["101_ObjectCategories"], label)
    categories = set(data_file("classnames", "caltech101")["folders"])
    found = {entry.name for entry in os.scandir(images) if entry.is_dir()}
    if found != categories | {CALTECH_BACKGROUND}:
        raise DatasetError(f"{label}: category folders differ from the 101 of Caltech101 + {CALTECH_BACKGROUND} "
                           f"(missing {sorted(categories - found)[:5]}, unexpected {sorted(found - categories)[:5]})")
    owner: dict[tuple[str, str], str] = {}
    for split, remote in CALTECH_CSVS.items():
        pairs = _flyp_split(files[remote.name])
        unknown = sorted({category for category, _ in pairs} - categories)
        if unknown:
            raise DatasetError(f"{files[remote.name]}: categories not among Caltech101's 101: {unknown[:5]}")
        twice = [pair for pair in pairs if pair in owner]
        if twice:
            raise DatasetError(f"{files[remote.name]}: {len(twice)} images are also in the {owner[twice[0]]} split "
                               f"(first: {'/'.join(twice[0])}); the split CSVs are not FLYP's")
        require_images(images, (f"{category}/{name}" for category, name in pairs), files[remote.name])
        for category, name in pairs:
            owner[(category, name)] = split
            link_or_copy(images / category / name, target / split / category / name)


def _flatten_doubled(folder: Path) -> None:
    """``cars_train/cars_train/*`` (a Kaggle re-pack's doubled folder, pytorch/vision#7545) -> ``cars_train/*``."""
    inner = folder / folder.name
    if inner.is_dir() and [entry.name for entry in os.scandir(folder)] == [folder.name]:
        staging = folder.parent / f".{folder.name}.flatten"
        inner.rename(staging)
        folder.rmdir()
        staging.rename(folder)


def arrange_stanford_cars(files: dict[str, Path], target: Path) -> None:
    """``stanford_cars/{devkit/{cars_meta,cars_train_annos}.mat, cars_train/, cars_test/, cars_test_annos_withlabels.mat}``.

    The layout torchvision's StanfordCars reads; the adapter splits train / val as FLYP does. Every
    image the annotations name must be in the archive.
    """
    archive = files[CARS_ZIP.name]
    extract_zip(archive, target, rename=lambda name: None if name.startswith("__MACOSX/") else name)
    hoist(target, "devkit/cars_meta.mat")
    for folder in ("cars_train", "cars_test"):
        _flatten_doubled(target / folder)
    if not (target / CARS_TEST_LABELS).exists() and (target / "devkit" / CARS_TEST_LABELS).exists():
        shutil.move(str(target / "devkit" / CARS_TEST_LABELS), target / CARS_TEST_LABELS)
    require_files(target, ["devkit/cars_meta.mat", "devkit/cars_train_annos.mat", CARS_TEST_LABELS,
                           "cars_train", "cars_test"], archive.name)
    for annotations, images in (("devkit/cars_train_annos.mat", "cars_train"), (CARS_TEST_LABELS, "cars_test")):
        names = mat_variable(target / annotations, "annotations", STANFORD_CARS, target.parent)["fname"]
        require_images(target / images, (str(name) for name in names), target / annotations)


def arrange_flowers102(files: dict[str, Path], target: Path) -> None:
    """``flowers102/{jpg/image_XXXXX.jpg, imagelabels.mat, setid.mat}``, the original files (torchvision's layout).

    Every image id of ``setid.mat``'s three splits must be in the image archive.
    """
    extract_tar(files["102flowers.tgz"], target, label="102flowers.tgz")
    for name in ("imagelabels.mat", "setid.mat"):
        link_or_copy(files[name], target / name)
    require_files(target, ["jpg"], "102flowers.tgz")
    labels = mat_variable(target / "imagelabels.mat", "labels", FLOWERS, target.parent)
    for split, variable in FLOWERS_SET_IDS.items():
        ids = mat_variable(target / "setid.mat", variable, FLOWERS, target.parent).astype(int)
        if len(ids) and not (ids.min() >= 1 and ids.max() <= len(labels)):
            raise DatasetError(f"{target / 'setid.mat'}: {variable} has image ids outside 1..{len(labels)}")
        require_images(target / "jpg", (f"image_{i:05d}.jpg" for i in ids), f"{target / 'setid.mat'} ({split})")


register_route(PrepareRoute(
    dataset="stl10", files=(STL10_FILE,), arrange=arrange_stl10, folder="stl10_binary",
    note="STL-10 binary version (cs.stanford.edu/~acoates/stl10); unlabeled_X.bin is not kept.",
))
register_route(PrepareRoute(
    dataset="caltech101", files=(CALTECH_ZIP, *CALTECH_CSVS.values()), arrange=arrange_caltech101, folder="caltech-101",
    note="Caltech101 from data.caltech.edu (torchvision's md5); the train/val/test folders follow FLYP's published "
         f"split CSVs (github.com/locuslab/FLYP @ {FLYP_COMMIT[:7]}), which publish no md5/sha256: they are checked by "
         "their git blob ids, and every image they list must be in the archive. The manifest has no train/val/test "
         "counts yet (not published; the CSVs could not be read here), only split 'all' (8,677 images).",
))
register_route(PrepareRoute(
    dataset="stanford-cars", files=(CARS_ZIP,), arrange=arrange_stanford_cars, folder="stanford_cars",
    note="Manual: Kaggle needs a login. The re-pack publishes no checksum; the archive is checked by its zip CRCs "
         "and by every annotated image being present (stages/data/prepare_routes/_checks.py), then by verify.",
))
register_route(PrepareRoute(
    dataset="flowers102", files=FLOWERS_FILES, arrange=arrange_flowers102, folder="flowers102",
    note="Oxford 102 Flowers (www.robots.ox.ac.uk/~vgg/data/flowers/102); split by setid.mat (trnid/valid/tstid) as FLYP.",
))
