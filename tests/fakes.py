"""Tiny fake copies of every benchmark's standard layout (real folder and file names, 8x8 images), and coloured-noise images."""

from __future__ import annotations

import csv
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from stages.data import synthetic
from stages.data.layout import data_file


def image(path: Path, value: int = 128) -> Path:
    """Write an 8x8 image whose format follows the suffix; `value` sets its colour."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (value % 256, (3 * value) % 256, (7 * value) % 256)).save(
        path, format="JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    )
    return path


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def imagenet_wnids() -> list[str]:
    return list(data_file("classnames", "imagenet")["wnids"])


def imagenet(root: Path, split: str, indices: list[int]) -> None:
    """``imagenet/<split>/<wnid>/`` with two images per chosen class."""
    wnids = imagenet_wnids()
    for index in indices:
        for n in range(2):
            name = f"{wnids[index]}_{n}.JPEG" if split == "train" else f"ILSVRC2012_val_{index:05d}{n:03d}.JPEG"
            image(root / "imagenet" / split / wnids[index] / name, index)


def imagenetv2(root: Path, labels: list[int]) -> None:
    for label in labels:
        image(root / "ImageNetV2-matched-frequency" / str(label) / f"{label:040x}.jpeg", label)


def imagenet_subset(root: Path, name: str, positions: list[int]) -> list[str]:
    """``imagenet-r/`` or ``imagenet-a/`` with the sub-list classes at `positions`; returns their wnids."""
    wnids = data_file("classnames", "imagenet")[name]
    for position in positions:
        image(root / name / wnids[position] / f"{position}.jpg", position)
    (root / name / "README.txt").write_text("top-level files are ignored\n")
    return [wnids[position] for position in positions]


def sketch(root: Path, indices: list[int]) -> None:
    wnids = imagenet_wnids()
    for index in indices:
        image(root / "sketch" / wnids[index] / "sketch_1.JPEG", index)


WATERBIRDS_HEADER = ["img_id", "img_filename", "y", "split", "place", "place_filename"]


def waterbirds(root: Path, per_group: int = 2, train_counts: tuple[int, int, int, int] | None = None
               ) -> list[tuple[int, int, int]]:
    """All 4 (y, place) groups in every split (train: `train_counts` per group 2y + place, if given);
    returns (y, split, place) per row."""
    base = root / "waterbird_complete95_forest2water2"
    rows, keys = [], []
    species = {0: "001.Black_footed_Albatross", 1: "094.White_breasted_Nuthatch"}
    for split in range(3):
        for y in range(2):
            for place in range(2):
                count = train_counts[2 * y + place] if split == 0 and train_counts else per_group
                for n in range(count):
                    img_id = len(rows) + 1
                    filename = f"{species[1 - y]}/{species[1 - y].split('.')[1]}_{img_id:04d}_{n}.jpg"
                    image(base / filename, 40 * y + 100 * place + n)
                    rows.append([img_id, filename, y, split, place, f"/b/bamboo_forest/{img_id}.jpg"])
                    keys.append((y, split, place))
    write_csv(base / "metadata.csv", WATERBIRDS_HEADER, rows)
    return keys


def pacs(root: Path) -> None:
    meta = data_file("classnames", "pacs")
    for d, domain in enumerate(meta["domains"]):
        for c, name in enumerate(meta["classnames"]):
            image(root / "PACS" / domain / name / f"pic_{c:03d}.jpg", 30 * d + c)
            if domain == "sketch":
                image(root / "PACS" / domain / name / f"{c + 1}.png", 30 * d + c + 1)


def cifar_pixels(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)


def write_pickle(path: Path, payload: dict) -> None:
    """`payload` pickled to `path` (its folder created), as the CIFAR python batches are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(payload, handle)


def cifar10(root: Path, labels: list[int], seed: int = 0, split_file: str = "test_batch") -> np.ndarray:
    """``cifar-10-batches-py/<split_file>`` (planar R, G, B rows as the original); returns the HWC images."""
    images = cifar_pixels(len(labels), seed)
    data = images.transpose(0, 3, 1, 2).reshape(len(labels), 3072)
    write_pickle(root / "cifar-10-batches-py" / split_file, {"data": data, "labels": labels, "batch_label": "fake"})
    return images


def cifar100(root: Path, labels: list[int]) -> np.ndarray:
    images = cifar_pixels(len(labels), 1)
    data = images.transpose(0, 3, 1, 2).reshape(len(labels), 3072)
    write_pickle(root / "cifar-100-python" / "test", {"data": data, "fine_labels": labels, "coarse_labels": [0] * len(labels)})
    return images


def cifar102(root: Path, labels: list[int]) -> np.ndarray:
    images = cifar_pixels(len(labels), 2)
    (root / "CIFAR-10.2").mkdir(parents=True, exist_ok=True)
    np.savez(root / "CIFAR-10.2" / "cifar102_test.npz", images=images, labels=np.array(labels, dtype=np.int64))
    return images


def stl10(root: Path, labels: list[int]) -> np.ndarray:
    """``stl10_binary/test_{X,y}.bin``: column-major 96x96 planes, labels 1..10; returns the HWC images."""
    images = np.random.default_rng(3).integers(0, 256, size=(len(labels), 96, 96, 3), dtype=np.uint8)
    base = root / "stl10_binary"
    base.mkdir(parents=True, exist_ok=True)
    images.transpose(0, 3, 2, 1).tofile(base / "test_X.bin")
    (np.array(labels, dtype=np.uint8) + 1).tofile(base / "test_y.bin")
    return images


def folder_classes(base: Path, folders: list[str]) -> None:
    for n, folder in enumerate(folders):
        image(base / folder / f"image_{n + 1:04d}.jpg", n)


def caltech101(root: Path, split: str, folders: list[str]) -> None:
    if split == "all":
        folder_classes(root / "caltech101" / "101_ObjectCategories", ["BACKGROUND_Google", *folders])
    else:
        folder_classes(root / "caltech-101" / split, folders)


def iwildcam(root: Path) -> list[tuple[str, str, int]]:
    """``iwildcam_v2.0/{metadata.csv, train/}``; returns (split, filename, y) rows."""
    base = root / "iwildcam_v2.0"
    rows = [("train", "8a.jpg", 0), ("id_test", "8b.jpg", 3), ("id_test", "8c.jpg", 181), ("test", "8d.jpg", 1),
            ("test", "8e.jpg", 1), ("val", "8f.jpg", 2)]
    for n, (_, filename, _) in enumerate(rows):
        image(base / "train" / filename, n)
    write_csv(base / "metadata.csv", ["", "split", "location_remapped", "filename", "y", "sequence_remapped", "datetime"],
              [[n, s, 0, f, y, n, "2013-06-05 12:00:00.000"] for n, (s, f, y) in enumerate(rows)])
    (base / "RELEASE_v2.0.txt").write_text("")
    return rows


FMOW_ROWS = [
    ("train", "2010-02-01T10:00:00Z", "USA", "airport"),
    ("seq", "2016-05-01T10:00:00Z", "USA", "zoo"),
    ("val", "2011-03-01T10:00:00Z", "FRA", "barn"),
    ("test", "2012-12-31T23:00:00-05:00", "CHN", "dam"),       # 2013 in UTC: unused (test rows need >= 2016)
    ("test", "2012-06-01T10:00:00Z", "KEN", "crop_field"),   # id_test
    ("val", "2014-06-01T10:00:00Z", "AUS", "park"),          # val (OOD)
    ("test", "2016-06-01T10:00:00Z", "CHN", "airport"),      # test (OOD)
    ("test", "2017-01-01T00:00:00Z", "XXX", "wind_farm"),    # test (OOD), region Other
    ("test", "2016-09-09T09:09:09Z", "BRA", "multi-unit_residential"),
]


def fmow(root: Path) -> None:
    base = root / "fmow_v1.1"
    write_csv(base / "rgb_metadata.csv", ["split", "img_filename", "img_path", "spatial_reference", "epsg", "category",
                                          "visible", "img_width", "img_height", "country_code", "cloud_cover", "timestamp",
                                          "lat", "lon"],
              [[s, f"{c}_0.jpg", "", "", "", c, "", 224, 224, cc, 0, t, 0, 0] for s, t, cc, c in FMOW_ROWS])
    write_csv(base / "country_code_mapping.csv", ["alpha-3", "region"],
              [["USA", "Americas"], ["BRA", "Americas"], ["FRA", "Europe"], ["CHN", "Asia"], ["KEN", "Africa"],
               ["AUS", "Oceania"]])
    for index in range(len(FMOW_ROWS)):
        image(base / "images" / f"rgb_img_{index}.png", index)
    (base / "RELEASE_v1.1.txt").write_text("")


def flowers102_original(root: Path, classes: list[int], sets: dict[str, list[int]]) -> None:
    """``flowers-102/{jpg/, imagelabels.mat, setid.mat}``: image i (1-based) has OpenAI-order class classes[i-1]."""
    from scipy.io import savemat

    base = root / "flowers-102"
    for number in range(1, len(classes) + 1):
        image(base / "jpg" / f"image_{number:05d}.jpg", number)
    savemat(base / "imagelabels.mat", {"labels": np.array([classes], dtype=np.uint8)})
    savemat(base / "setid.mat", {key: np.array([ids], dtype=np.uint16) for key, ids in sets.items()})


def stanford_cars_original(root: Path, meta_names: list[str], train: list[int], test: list[int]) -> None:
    """``stanford_cars/{devkit/, cars_train/, cars_test/, cars_test_annos_withlabels.mat}`` (torchvision layout);
    `train` / `test` are the 1-based class ids of the images 00001.jpg, 00002.jpg, ..."""
    from scipy.io import savemat

    base = root / "stanford_cars"
    record = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]

    def annotations(folder: str, classes: list[int]) -> np.ndarray:
        rows = []
        for number, cls in enumerate(classes, start=1):
            image(base / folder / f"{number:05d}.jpg", number)
            rows.append((1, 1, 7, 7, cls, f"{number:05d}.jpg"))
        return np.array(rows, dtype=record)

    (base / "devkit").mkdir(parents=True, exist_ok=True)
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array([meta_names], dtype=object)})
    savemat(base / "devkit" / "cars_train_annos.mat", {"annotations": annotations("cars_train", train)})
    savemat(base / "cars_test_annos_withlabels.mat", {"annotations": annotations("cars_test", test)})


def imagenet_unsorted_val(root: Path, wnids: list[str], labels: str) -> None:
    """``imagenet/val/ILSVRC2012_val_<n>.JPEG`` (n = 1, 2, ...) as the tar extracts it, image n of class wnids[n-1];
    labels in Kaggle's ``LOC_val_solution.csv`` (`labels` = "kaggle") or the devkit (`labels` = "devkit")."""
    from scipy.io import savemat

    base = root / "imagenet"
    ids = [f"ILSVRC2012_val_{n:08d}" for n in range(1, len(wnids) + 1)]
    for n, image_id in enumerate(ids, start=1):
        image(base / "val" / f"{image_id}.JPEG", n)
    if labels == "kaggle":
        write_csv(base / "LOC_val_solution.csv", ["ImageId", "PredictionString"],
                  [[image_id, f"{wnid} 10 20 30 40 {wnid} 1 2 3 4"] for image_id, wnid in zip(ids, wnids)])
        return
    # The devkit numbers synsets by ILSVRC2012_ID, which is not the sorted-wnid order: use a shuffled one.
    order = sorted(set(wnids), reverse=True)
    synsets = np.array([(position + 1, wnid, "words") for position, wnid in enumerate(order)],
                       dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O")])
    devkit = base / "ILSVRC2012_devkit_t12" / "data"
    devkit.mkdir(parents=True)
    savemat(devkit / "meta.mat", {"synsets": synsets})
    (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text(
        "".join(f"{order.index(wnid) + 1}\n" for wnid in wnids))


# The coloured-noise images live in the package (the GPU readiness check generates them too).
COLOURS, colour_images, colour_folder = synthetic.COLOURS, synthetic.colour_images, synthetic.colour_folder
