"""Every benchmark adapter on a tiny fake of its standard layout: labels, class order, groups, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import fakes
from stages.data.layout import classnames, data_file, templates
from stages.data.source import (
    DatasetError, ImageDataset, available_datasets, build_dataset, dataset_layouts, load_image, register_dataset,
)
from stages.data.transfer import flyp_cars_split
from stages.evaluation.benchmarks import get_benchmark


def _pixels(source, index: int) -> np.ndarray:
    return np.asarray(load_image(source.images[index]))


# --- the registry ---------------------------------------------------------------------------------

def test_every_dataset_with_a_folder_registers_its_layout() -> None:
    layouts = dataset_layouts()
    # csv and webdataset are named by their split (a file or shard pattern); the demo pipeline writes its own files
    assert set(available_datasets()) - set(layouts) == {"csv", "webdataset", "fmnist-demo"}
    assert all(layout.dataset == name for name, layout in layouts.items())
    assert layouts["waterbirds"].folders[0] == "waterbird_complete95_forest2water2"
    with pytest.raises(ValueError, match="'imagenet-copy' is registered with the layout of 'imagenet'"):
        register_dataset("imagenet-copy", layouts["imagenet"])


# --- shipped data files -------------------------------------------------------------------------

def test_data_files_have_the_published_sizes() -> None:
    imagenet = data_file("classnames", "imagenet")
    assert len(imagenet["classnames"]) == 1000 and imagenet["classnames"][:2] == ["tench", "goldfish"]
    assert imagenet["wnids"] == sorted(imagenet["wnids"]) and len(set(imagenet["wnids"])) == 1000
    index = {wnid: i for i, wnid in enumerate(imagenet["wnids"])}
    r = [index[w] for w in imagenet["imagenet-r"]]
    a = [index[w] for w in imagenet["imagenet-a"]]
    # wise-ft's CLASS_SUBLISTs: 200 ascending ints with these ends and sums.
    assert (len(r), r[:6], r[-3:], sum(r)) == (200, [1, 2, 4, 6, 8, 9], [981, 983, 988], 86135)
    assert (len(a), a[:6], a[-3:], sum(a)) == (200, [6, 11, 13, 15, 17, 22], [986, 987, 988], 102178)
    assert len(set(r) & set(a)) == 86
    sizes = {"cifar10": 10, "cifar100": 100, "stl10": 10, "caltech101": 101, "stanford_cars": 196, "flowers102": 102,
             "iwildcam": 182, "fmow": 62, "waterbirds": 2, "pacs": 7}
    assert {name: len(classnames(name)) for name in sizes} == sizes
    counts = {"imagenet": 80, "cifar": 18, "stl10": 2, "caltech101": 34, "stanford_cars": 8, "flowers102": 1,
              "iwildcam": 2, "fmow": 16, "waterbirds": 1, "pacs": 1, "cifar10.02": 1}
    assert {name: len(templates(name)) for name in counts} == counts
    assert all("{c}" in t for name in counts for t in templates(name))
    assert templates("waterbirds") == ["This is a picture of a {c}."]
    cars = data_file("classnames", "stanford_cars")
    assert cars["folders"] == sorted(cars["folders"])
    # Prompts use OpenAI's names (CLIP's list, CLIP_benchmark); the folders have '-' for the '/' of 'C/V'.
    assert [(f, c) for f, c in zip(cars["folders"], cars["classnames"]) if f.replace("_", " ") != c] == [
        ("Ram_C-V_Cargo_Van_Minivan_2012", "Ram C/V Cargo Van Minivan 2012")]


# --- ImageNet family ---------------------------------------------------------------------------------

@pytest.mark.parametrize("split", ["train", "val"])
def test_imagenet_labels_index_the_sorted_wnids(tmp_path: Path, split: str) -> None:
    fakes.imagenet(tmp_path, split, [999, 0, 417])
    source = build_dataset("imagenet", tmp_path, split)
    assert len(source.classnames) == 1000 and source.labels == [0, 0, 417, 417, 999, 999]
    assert source.classnames[417] == "balloon" and source.images[2].parent.name == fakes.imagenet_wnids()[417]


def test_imagenetv2_label_is_the_folder_integer_not_its_sorted_position(tmp_path: Path) -> None:
    folders = [0, 1, 2, 10, 100, 999]
    fakes.imagenetv2(tmp_path, folders)
    source = build_dataset("imagenetv2", tmp_path, "test")
    assert sorted(zip(source.labels, (int(p.parent.name) for p in source.images))) == [(f, f) for f in folders]
    assert sorted(source.labels) == folders  # an alphabetical listing would label folder "10" as 2


def test_imagenetv2_rejects_a_non_label_folder(tmp_path: Path) -> None:
    fakes.imagenetv2(tmp_path, [3])
    fakes.image(tmp_path / "ImageNetV2-matched-frequency" / "1000" / "x.jpeg")
    with pytest.raises(DatasetError, match="0..999"):
        build_dataset("imagenetv2", tmp_path, "test")


@pytest.mark.parametrize("name", ["imagenet-r", "imagenet-a"])
def test_imagenet_r_a_labels_are_sublist_positions_with_imagenet_indices(tmp_path: Path, name: str) -> None:
    fakes.imagenet_subset(tmp_path, name, [0, 57, 199])
    source = build_dataset(name, tmp_path, "test")
    assert source.labels == [0, 57, 199] and len(source.classnames) == 200
    wnids, names = fakes.imagenet_wnids(), data_file("classnames", "imagenet")["classnames"]
    for label, path in zip(source.labels, source.images):
        imagenet_index = source.metadata["class_indices"][label]
        assert wnids[imagenet_index] == path.parent.name and names[imagenet_index] == source.classnames[label]


def test_imagenet_r_rejects_a_wnid_outside_its_sublist(tmp_path: Path) -> None:
    fakes.imagenet_subset(tmp_path, "imagenet-r", [1])
    fakes.image(tmp_path / "imagenet-r" / fakes.imagenet_wnids()[0] / "x.jpg")  # tench is not in IN-R
    with pytest.raises(DatasetError, match="not in the class list"):
        build_dataset("imagenet-r", tmp_path, "test")


def test_imagenet_sketch(tmp_path: Path) -> None:
    fakes.sketch(tmp_path, [5, 6])
    assert build_dataset("imagenet-sketch", tmp_path, "test").labels == [5, 6]


# --- group shift --------------------------------------------------------------------------------------

def test_waterbirds_splits_and_groups(tmp_path: Path) -> None:
    keys = fakes.waterbirds(tmp_path)
    source = build_dataset("waterbirds", tmp_path, "test")
    expected = [(y, 2 * y + place) for y, split, place in keys if split == 2]
    assert list(zip(source.labels, source.groups)) == expected
    assert source.group_names == ["landbird/land", "landbird/water", "waterbird/land", "waterbird/water"]
    assert all(path.is_file() for path in source.images)
    assert len(build_dataset("waterbirds", tmp_path, "train")) == 8


def test_waterbirds_malformed_metadata_names_file_and_column(tmp_path: Path) -> None:
    fakes.waterbirds(tmp_path, per_group=1)
    metadata = tmp_path / "waterbird_complete95_forest2water2" / "metadata.csv"
    text = metadata.read_text()
    metadata.write_text(text.replace("place,", "background,", 1))
    with pytest.raises(DatasetError, match=r"metadata\.csv: missing column\(s\) place"):
        build_dataset("waterbirds", tmp_path, "test")
    lines = text.splitlines()
    fields = lines[3].split(",")
    fields[2] = "bird"
    metadata.write_text("\n".join([*lines[:3], ",".join(fields), *lines[4:]]) + "\n")
    with pytest.raises(DatasetError, match=r"metadata\.csv: column 'y', line 4: 'bird' is not an integer"):
        build_dataset("waterbirds", tmp_path, "test")


def test_pacs_domains_and_class_domain_partition(tmp_path: Path) -> None:
    fakes.pacs(tmp_path)
    source = build_dataset("pacs", tmp_path, "test")
    assert source.group_names == ["art_painting", "cartoon", "photo", "sketch"]
    assert len(source) == 35 and source.groups.count(3) == 14
    for path, label, group in zip(source.images, source.labels, source.groups):
        assert (path.parent.name, path.parent.parent.name) == (source.classnames[label], source.group_names[group])
    class_domain, names = source.metadata["partitions"]["class_domain"]
    assert len(names) == 28 and len(set(class_domain)) == 28
    assert all(names[g] == f"{source.classnames[y]}/{source.group_names[d]}"
               for g, y, d in zip(class_domain, source.labels, source.groups))


def test_cifar10_02_concatenates_sources_with_class_source_groups(tmp_path: Path) -> None:
    images_10 = fakes.cifar10(tmp_path, [0, 9, 3])
    images_102 = fakes.cifar102(tmp_path, [3, 4])
    source = build_dataset("cifar10.02", tmp_path, "test")
    assert source.labels == [0, 9, 3, 3, 4] and source.groups == [0, 18, 6, 7, 9]
    assert source.group_names[7] == "cat/cifar10.2"
    assert source.metadata["partitions"]["source"] == ([0, 0, 0, 1, 1], ["cifar10", "cifar10.2"])
    np.testing.assert_array_equal(_pixels(source, 1), images_10[1])
    np.testing.assert_array_equal(_pixels(source, 4), images_102[1])


# --- zero-shot transfer and transfer ---------------------------------------------------------------------

def test_cifar10_and_cifar100_pixels_and_labels(tmp_path: Path) -> None:
    images = fakes.cifar10(tmp_path, [1, 2])
    source = build_dataset("cifar10", tmp_path, "test")
    assert source.labels == [1, 2] and source.classnames[1] == "automobile"
    np.testing.assert_array_equal(_pixels(source, 0), images[0])
    images = fakes.cifar100(tmp_path, [1, 99])
    source = build_dataset("cifar100", tmp_path, "test")
    assert source.classnames[1] == "aquarium fish" and source.labels == [1, 99]
    np.testing.assert_array_equal(_pixels(source, 1), images[1])


def test_cifar_train_reads_five_batches(tmp_path: Path) -> None:
    for n in range(1, 6):
        fakes.cifar10(tmp_path, [n], seed=n, split_file=f"data_batch_{n}")
    assert build_dataset("cifar10", tmp_path, "train").labels == [1, 2, 3, 4, 5]


def test_stl10_reads_column_major_images(tmp_path: Path) -> None:
    images = fakes.stl10(tmp_path, [0, 9, 4])
    source = build_dataset("stl10", tmp_path, "test")
    assert source.labels == [0, 9, 4] and source.classnames[1] == "bird"
    np.testing.assert_array_equal(_pixels(source, 2), images[2])


def test_caltech101_split_and_all(tmp_path: Path) -> None:
    meta = data_file("classnames", "caltech101")
    fakes.caltech101(tmp_path, "test", ["yin_yang", "Faces", "car_side"])
    source = build_dataset("caltech101", tmp_path, "test")
    assert [source.classnames[y] for y in source.labels] == ["off-center face", "side of a car", "yin and yang symbol"]
    assert source.labels == [0, meta["folders"].index("car_side"), 100]
    fakes.caltech101(tmp_path, "all", ["Faces_easy"])
    source = build_dataset("caltech101", tmp_path, "all")  # BACKGROUND_Google skipped
    assert source.labels == [1] and source.classnames[1] == "centered face"


@pytest.mark.parametrize(("name", "folder", "classes"), [
    ("stanford-cars", "stanford_cars", ["Audi_TT_Hatchback_2011", "Ram_C-V_Cargo_Van_Minivan_2012",
                                        "smart_fortwo_Convertible_2012"]),
    ("flowers102", "flowers102", ["yellow_iris", "air_plant", "pink_primrose"]),
])
def test_cars_and_flowers_follow_the_sorted_folder_order(tmp_path: Path, name: str, folder: str, classes: list[str]) -> None:
    fakes.folder_classes(tmp_path / folder / "test", classes)
    source = build_dataset(name, tmp_path, "test")
    assert [source.classnames[y] for y in source.labels] == [
        c.replace("_", " ").replace("C-V", "C/V") for c in sorted(classes)]  # the OpenAI name of Ram's folder
    assert source.labels == sorted(source.labels)
    fakes.folder_classes(tmp_path / folder / "test", ["Not_A_Class"])
    with pytest.raises(DatasetError, match="Not_A_Class"):
        build_dataset(name, tmp_path, "test")


@pytest.mark.parametrize("labels", ["kaggle", "devkit"])
def test_unsorted_imagenet_val_is_labelled_from_kaggle_csv_or_devkit(tmp_path: Path, labels: str) -> None:
    wnids = fakes.imagenet_wnids()
    chosen = [wnids[417], wnids[0], wnids[999], wnids[417]]
    fakes.imagenet_unsorted_val(tmp_path, chosen, labels)
    source = build_dataset("imagenet", tmp_path, "val")
    assert [p.name for p in source.images] == [f"ILSVRC2012_val_{n:08d}.JPEG" for n in range(1, 5)]
    assert source.labels == [417, 0, 999, 417] and source.classnames[417] == "balloon"
    (tmp_path / "imagenet" / "val" / "ILSVRC2012_val_00000009.JPEG").write_bytes(b"")  # an image with no label
    with pytest.raises(DatasetError, match="no (ImageNet )?label"):
        build_dataset("imagenet", tmp_path, "val")


def test_unsorted_imagenet_val_without_labels_names_both_sources(tmp_path: Path) -> None:
    fakes.image(tmp_path / "imagenet" / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(DatasetError, match="LOC_val_solution.csv") as error:
        build_dataset("imagenet", tmp_path, "val")
    assert "ILSVRC2012_validation_ground_truth.txt" in str(error.value)


def test_flowers_original_files_split_by_setid_and_relabel_alphabetically(tmp_path: Path) -> None:
    openai_order = data_file("classnames", "flowers102")["openai_order"]
    classes = [1, 2, 102, 1, 50, 7]  # OpenAI-order class of images 1..6 (imagelabels.mat)
    fakes.flowers102_original(tmp_path, classes, {"trnid": [1, 2], "valid": [3], "tstid": [4, 5, 6]})
    for split, ids in {"train": [1, 2], "val": [3], "test": [4, 5, 6]}.items():
        source = build_dataset("flowers102", tmp_path, split)
        assert [p.name for p in source.images] == [f"image_{i:05d}.jpg" for i in ids]
        assert [source.classnames[y] for y in source.labels] == [openai_order[classes[i - 1] - 1] for i in ids]
        assert source.classnames == classnames("flowers102")  # alphabetical, as the FLYP folders
    assert _pixels(build_dataset("flowers102", tmp_path, "test"), 0).shape == (8, 8, 3)
    (tmp_path / "flowers-102" / "jpg").rename(tmp_path / "flowers-102" / "images")
    with pytest.raises(DatasetError, match="jpg not found"):
        build_dataset("flowers102", tmp_path, "test")


def test_cars_original_files_use_flyps_split_and_the_sorted_folder_labels(tmp_path: Path) -> None:
    names = classnames("stanford_cars")
    # cars_meta.mat has another order (OpenAI's) and, as the class names, a '/' where the folder names have '-'.
    meta = list(reversed(names))
    ram = meta.index("Ram C/V Cargo Van Minivan 2012") + 1
    train_classes, test_classes = [1 + (7 * i) % 196 for i in range(10)], [196, ram, 1]
    fakes.stanford_cars_original(tmp_path, meta, train_classes, test_classes)
    test = build_dataset("stanford-cars", tmp_path, "test")
    assert [p.relative_to(tmp_path).as_posix() for p in test.images] == [
        f"stanford_cars/cars_test/{n:05d}.jpg" for n in (1, 2, 3)]
    assert [test.classnames[y] for y in test.labels] == [names[0], "Ram C/V Cargo Van Minivan 2012", names[-1]]
    train_indices, val_indices = flyp_cars_split(10)
    for split, indices in (("train", train_indices), ("val", val_indices)):
        source = build_dataset("stanford-cars", tmp_path, split)
        assert [p.name for p in source.images] == [f"{i + 1:05d}.jpg" for i in indices]
        assert [source.classnames[y] for y in source.labels] == [meta[train_classes[i] - 1] for i in indices]
    assert len(val_indices) == 2 and sorted([*train_indices, *val_indices]) == list(range(10))


def test_cars_split_reproduces_flyps_published_validation_files() -> None:
    train, val = flyp_cars_split(8144)
    assert (len(train), len(val)) == (6515, 1629) and not set(train.tolist()) & set(val.tolist())
    # cars_train files listed in FLYP's datacreation_scripts/sample_csv/stanfordcars/val.csv (its first rows);
    # by chance alone all 17 would land in a 20 % split with probability 0.2**17.
    published = [1277, 4827, 4056, 1832, 2050, 3943, 7684, 462, 707, 5804, 1864, 1617, 1911, 7483, 7174, 2095, 4833]
    assert {number - 1 for number in published} <= set(val.tolist())


def test_imagefolder_labels_classes_alike_in_every_split(tmp_path: Path) -> None:
    base = tmp_path / "imagefolder"
    fakes.folder_classes(base / "train", ["golden_retriever", "tabby_cat", "zebra"])
    fakes.folder_classes(base / "test", ["zebra", "tabby_cat"])  # a split may lack a class
    fakes.folder_classes(base / "val", ["axolotl"])  # or hold one the others lack
    train, test = build_dataset("imagefolder", tmp_path, "train"), build_dataset("imagefolder", tmp_path, "test")
    assert train.classnames == test.classnames == ["axolotl", "golden retriever", "tabby cat", "zebra"]
    assert [train.classnames[y] for y in train.labels] == ["golden retriever", "tabby cat", "zebra"]
    assert [test.classnames[y] for y in test.labels] == ["tabby cat", "zebra"]
    assert get_benchmark("imagefolder-test").template_list(test) == ["a photo of a {c}."]

    (base / "classnames.json").write_text(json.dumps({"zebra": "zebra", "tabby_cat": "tabby", "golden_retriever": "dog",
                                                      "axolotl": "axolotl"}))
    (base / "templates.txt").write_text("a photo of a {c}.\n\na blurry photo of a {c}.\n")
    test = build_dataset("imagefolder", tmp_path, "test")
    assert test.classnames == ["zebra", "tabby", "dog", "axolotl"] and test.labels == [1, 0]
    assert get_benchmark("imagefolder-test").template_list(test) == ["a photo of a {c}.", "a blurry photo of a {c}."]
    (base / "templates.txt").write_text("a photo of a thing.\n")
    with pytest.raises(DatasetError, match=r"templates.txt.*\{c\}"):
        build_dataset("imagefolder", tmp_path, "test")
    (base / "templates.txt").unlink()
    (base / "classnames.json").write_text(json.dumps({"zebra": "zebra"}))
    with pytest.raises(DatasetError, match="tabby_cat"):  # a folder missing from classnames.json is an error
        build_dataset("imagefolder", tmp_path, "test")


def test_iwildcam_splits_read_images_from_train(tmp_path: Path) -> None:
    rows = fakes.iwildcam(tmp_path)
    source = build_dataset("iwildcam", tmp_path, "id_test")
    assert source.labels == [3, 181] and len(source.classnames) == 182 and source.classnames[0] == "empty"
    assert [p.relative_to(tmp_path).as_posix() for p in source.images] == ["iwildcam_v2.0/train/8b.jpg", "iwildcam_v2.0/train/8c.jpg"]
    assert len(build_dataset("iwildcam", tmp_path, "test")) == sum(split == "test" for split, _, _ in rows)


def test_fmow_official_split_scheme_row_indices_and_regions(tmp_path: Path) -> None:
    fakes.fmow(tmp_path)
    names = classnames("fmow")
    expected = {"train": [0], "id_val": [2], "id_test": [4], "val": [5], "test": [6, 7, 8]}
    for split, rows in expected.items():
        source = build_dataset("fmow", tmp_path, split)
        assert [p.name for p in source.images] == [f"rgb_img_{i}.png" for i in rows], split
        assert [names[y] for y in source.labels] == [fakes.FMOW_ROWS[i][3].replace("_", " ") for i in rows]
    test = build_dataset("fmow", tmp_path, "test")
    assert [test.group_names[g] for g in test.groups] == ["Asia", "Other", "Americas"]


# --- errors -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "split"), [
    ("imagenet", "val"), ("imagenetv2", "test"), ("imagenet-r", "test"), ("imagenet-a", "test"),
    ("imagenet-sketch", "test"), ("waterbirds", "test"), ("pacs", "test"), ("cifar10.02", "test"), ("cifar10", "test"),
    ("cifar100", "test"), ("stl10", "test"), ("caltech101", "test"), ("caltech101", "all"), ("stanford-cars", "test"),
    ("flowers102", "test"), ("iwildcam", "test"), ("fmow", "test"), ("imagefolder", "train"),
])
def test_missing_root_prints_layout_and_source(tmp_path: Path, name: str, split: str) -> None:
    with pytest.raises(DatasetError) as error:
        build_dataset(name, tmp_path, split)
    message = str(error.value)
    assert "not found" in message and "Expected layout" in message and "Standard distribution" in message


def test_missing_split_and_unknown_split(tmp_path: Path) -> None:
    fakes.imagenet(tmp_path, "train", [0])
    with pytest.raises(DatasetError, match=r"imagenet[/\\]val not found"):
        build_dataset("imagenet", tmp_path, "val")
    with pytest.raises(DatasetError, match="no split 'validation'"):
        build_dataset("imagenet", tmp_path, "validation")


def test_corrupt_image_fails_with_its_path(tmp_path: Path) -> None:
    fakes.imagenet(tmp_path, "val", [3])
    source = build_dataset("imagenet", tmp_path, "val")
    source.images[1].write_bytes(b"not a jpeg")
    dataset = ImageDataset(source, transform=lambda im: im)
    assert dataset[0]["label"] == 3
    with pytest.raises(DatasetError, match=str(source.images[1].name)):
        dataset[1]
