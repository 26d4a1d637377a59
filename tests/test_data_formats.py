"""Bring your own data: FLYP/StarFT CSV files and WebDataset tar shards, through the training loop."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

import fakes
from conftest import tiny_config
from stages.data.source import DatasetError, build_dataset, load_image
from stages.evaluation.benchmarks import get_benchmark
from stages.training.loop import train

CLASSES = ["goldfish", "great white shark", "tench"]


def official_csv(root: Path, name: str = "train.csv", rows: int = 6) -> Path:
    """A CSV as the official StarFT creator writes it: title<TAB>filepath<TAB>label."""
    lines = ["title\tfilepath\tlabel"]
    for index in range(rows):
        label = index % len(CLASSES)
        fakes.image(root / "imagenet" / "train" / f"{index}.png", 10 * index)
        lines.append(f"a photo of a {CLASSES[label]}.\timagenet/train/{index}.png\t{label}")
    path = root / "csv" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_official_starft_csv_classes_from_titles(tmp_path: Path) -> None:
    official_csv(tmp_path)
    data = build_dataset("csv", tmp_path, "csv/train.csv")
    assert data.classnames == CLASSES and data.labels == [0, 1, 2, 0, 1, 2]
    assert data.images[4] == tmp_path / "imagenet" / "train" / "4.png"
    assert np.asarray(load_image(data.images[4]))[0, 0, 0] == 40
    official_csv(tmp_path, "test.csv")
    bench = get_benchmark("csv-test")
    assert build_dataset(bench.dataset, tmp_path, bench.split).classnames == CLASSES


def test_csv_keys_separator_and_classnames_file(tmp_path: Path) -> None:
    fakes.write_csv(tmp_path / "mine.csv", ["img", "caption"], [["/abs/a.jpg", "shark"], ["b.jpg", "goldfish"],
                                                               ["c.jpg", "shark"]])
    options = {"separator": ",", "img_key": "img", "caption_key": "caption", "title_template": "{c}"}
    data = build_dataset("csv", tmp_path, "mine.csv", **options)
    assert data.classnames == ["goldfish", "shark"] and data.labels == [1, 0, 1]  # sorted names, no label column
    assert data.images[0] == Path("/abs/a.jpg") and data.images[1] == tmp_path / "b.jpg"
    (tmp_path / "names.txt").write_text("shark\ngoldfish\n")
    data = build_dataset("csv", tmp_path, "mine.csv", classnames=Path("names.txt"), **options)
    assert data.classnames == ["shark", "goldfish"] and data.labels == [0, 1, 0]
    with pytest.raises(DatasetError, match=r"lack \['filepath', 'title'\]; set data.csv.img_key"):
        build_dataset("csv", tmp_path, "mine.csv", separator=",")


def write_shards(folder: Path, per_shard: list[int]) -> list[tuple[int, int]]:
    """Shards 00000.tar.. of (png, cls, txt) samples; returns (label, colour) per sample in order."""
    folder.mkdir(parents=True, exist_ok=True)
    written, index = [], 0
    for shard, count in enumerate(per_shard):
        with wds.TarWriter(str(folder / f"{shard:05d}.tar")) as sink:
            for _ in range(count):
                label, colour = index % len(CLASSES), 20 * index
                buffer = io.BytesIO()
                Image.new("RGB", (8, 8), (colour, 0, 0)).save(buffer, format="PNG")
                sink.write({"__key__": f"s{index:04d}", "png": buffer.getvalue(), "cls": str(label).encode(),
                            "txt": f"a photo of a {CLASSES[label]}.".encode()})
                written.append((label, colour))
                index += 1
    return written


def test_webdataset_shards_in_order_with_labels_and_images(tmp_path: Path) -> None:
    written = write_shards(tmp_path / "webdataset" / "train", [4, 3])
    data = build_dataset("webdataset", tmp_path, "train", shards="{00000..00001}.tar")
    assert data.classnames == CLASSES and data.labels == [label for label, _ in written]
    assert [int(np.asarray(load_image(ref))[0, 0, 0]) for ref in data.images] == [c for _, c in written]
    (tmp_path / "webdataset" / "classnames.txt").write_text("\n".join(c.upper() for c in CLASSES))
    assert build_dataset("webdataset", tmp_path, "train", shards="{00000..00001}.tar").classnames[0] == "GOLDFISH"
    with pytest.raises(DatasetError, match=r"00002.tar.*data.webdataset.shards"):
        build_dataset("webdataset", tmp_path, "train", shards="{00000..00002}.tar")


def test_training_on_shards_and_csv_with_their_options(tmp_path: Path) -> None:
    write_shards(tmp_path / "webdataset" / "train", [5, 5])
    config = tiny_config("flyp", data__train_set="webdataset", data__data_root=str(tmp_path), data__train_split="train",
                         data__webdataset={"shards": "{00000..00001}.tar"}, optim__epochs=1)
    train(config, tmp_path / "wds-run")
    run = json.loads((tmp_path / "wds-run" / "run.json").read_text())
    assert run["classnames"] == CLASSES and run["train_size"] == 10
    official_csv(tmp_path, rows=9)
    config = tiny_config("ft", data__train_set="csv", data__data_root=str(tmp_path), data__train_split="csv/train.csv",
                         optim__epochs=1)
    train(config, tmp_path / "csv-run")
    assert json.loads((tmp_path / "csv-run" / "run.json").read_text())["train_size"] == 9
