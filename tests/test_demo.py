"""The embedded demo: its data builder's bias and balance, its shortcut metrics, and a tiny end-to-end run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from stages.data.fmnist_demo import BACKGROUNDS, FMNIST_NAMES, HELDOUT_CLASSES, HOME, ID_CLASSES
from stages.data.source import DatasetError, build_dataset
from stages.demo.data import read_idx, build_demo_data, find_fashion_mnist
from stages.evaluation.items import ItemOutcomes
from stages.evaluation.metrics import background_shortcut, background_swap_rate
from stages.reports.intervals import metric_value
from stages.rundir import items_path

REPO = Path(__file__).resolve().parents[1]
SIZES = {"pretrain": 1000, "train": 1600, "val": 48, "test": 96, "group": 400, "sketch": 48, "rendition": 48,
         "heldout-group": 80, "heldout": 20, "all": 50}


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    build_demo_data(root / "fmnist-demo", find_fashion_mnist(root / "cache"), seed=3, correlation=0.9,
                    pretrain_correlation=0.4, sizes=SIZES)
    return root


@pytest.mark.parametrize(("split", "correlation", "classes"), [("train", 0.9, 8), ("pretrain", 0.4, 10)])
def test_biased_splits_have_the_configured_home_share(demo_root: Path, split: str, correlation: float,
                                                      classes: int) -> None:
    data = build_dataset("fmnist-demo", demo_root, split)
    labels, backgrounds = np.array(data.labels), np.array(data.metadata["backgrounds"])
    homes = np.array(data.metadata["homes"])
    assert len(data) == SIZES[split] and np.bincount(labels).tolist() == [SIZES[split] // classes] * classes
    assert [FMNIST_NAMES.index(name) for name in data.classnames] == (ID_CLASSES if split == "train" else list(range(10)))
    at_home = np.mean(backgrounds == homes[labels])
    assert abs(at_home - correlation) < 0.04, at_home
    for label in range(classes):  # off-home samples spread over the other four backgrounds
        others = backgrounds[(labels == label) & (backgrounds != homes[label])]
        assert set(others.tolist()) <= set(range(5)) - {homes[label]} and len(set(others.tolist())) >= 3


def test_families_share_homes_and_held_out_classes_have_fine_tuned_relatives() -> None:
    home = {FMNIST_NAMES[c]: BACKGROUNDS[HOME[c]] for c in range(10)}
    assert home["shirt"] == home["t-shirt"] == "in a forest" and home["pullover"] == home["coat"] == "in the snow"
    assert home["sneaker"] == home["sandal"] == home["ankle boot"] == "in the desert"
    assert [FMNIST_NAMES[c] for c in HELDOUT_CLASSES] == ["t-shirt", "pullover"]
    assert not set(HELDOUT_CLASSES) & set(ID_CLASSES) and len(ID_CLASSES) == 8


def test_group_split_draws_every_object_on_every_background(demo_root: Path) -> None:
    group = build_dataset("fmnist-demo", demo_root, "group")
    counts = np.bincount(np.array(group.groups), minlength=40)
    assert counts.tolist() == [10] * 40
    assert group.group_names[7] == f"{group.classnames[1]} {BACKGROUNDS[2]}"
    objects, backgrounds = np.array(group.metadata["objects"]), np.array(group.metadata["backgrounds"])
    for obj in np.unique(objects):
        assert sorted(backgrounds[objects == obj].tolist()) == [0, 1, 2, 3, 4]
    # Only the background differs: where the item is opaque, every render of it has the same pixels.
    items = read_idx(find_fashion_mnist(demo_root / "cache") / "t10k-images-idx3-ubyte.gz")
    images = np.asarray(group.images)
    for obj in np.unique(objects)[:5]:
        opaque = np.zeros((32, 32), dtype=bool)
        opaque[2:30, 2:30] = items[obj] >= 160
        renders = images[objects == obj][:, opaque]
        assert opaque.sum() > 50 and (renders == renders[0]).all()


def test_heldout_group_is_waterbirds_shaped(demo_root: Path) -> None:
    heldout = build_dataset("fmnist-demo", demo_root, "heldout-group")
    assert heldout.classnames == ["t-shirt", "pullover"]
    groups = {name: int(n) for name, n in zip(heldout.group_names, np.bincount(heldout.groups, minlength=10)) if n}
    assert groups == {"pullover in the snow": 20, "pullover in a forest": 20, "t-shirt in the snow": 20,
                      "t-shirt in a forest": 20}
    # The adjusted average's weights are the pretraining split's counts of those groups (recounted here).
    pretrain = build_dataset("fmnist-demo", demo_root, "pretrain")
    recount = {f"{pretrain.classnames[label]} {BACKGROUNDS[bg]}": 0 for label in range(10) for bg in range(5)}
    for label, bg in zip(pretrain.labels, pretrain.metadata["backgrounds"]):
        recount[f"{pretrain.classnames[label]} {BACKGROUNDS[bg]}"] += 1
    reference = heldout.metadata["train_group_counts"]
    assert {name: reference[name] for name in groups} == {name: recount[name] for name in groups}
    assert recount["t-shirt in a forest"] > 2 * recount["t-shirt in the snow"]


def test_builder_is_deterministic_and_renditions_differ(demo_root: Path, tmp_path: Path) -> None:
    build_demo_data(tmp_path / "fmnist-demo", find_fashion_mnist(tmp_path / "cache"), seed=3, correlation=0.9,
                    pretrain_correlation=0.4, sizes=SIZES)
    for split in ("train", "sketch", "heldout-group"):
        first, again = (np.load(root / "fmnist-demo" / f"{split}.npz") for root in (demo_root, tmp_path))
        assert np.array_equal(first["images"], again["images"]) and np.array_equal(first["labels"], again["labels"])
    sketch = np.load(demo_root / "fmnist-demo" / "sketch.npz")["images"]
    assert (sketch[..., 0] == sketch[..., 1]).all()  # edge maps are grey
    images = np.load(demo_root / "fmnist-demo" / "test.npz")["images"]
    assert images.shape == (96, 32, 32, 3) and images.dtype == np.uint8


def test_too_small_a_paired_split_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="at least 40"):
        build_demo_data(tmp_path / "fmnist-demo", find_fashion_mnist(tmp_path / "cache"), sizes={**SIZES, "group": 39})


def test_background_shortcut_known_answer() -> None:
    homes = [1, 1, 0]  # classes 0 and 1 share home 1 (a family), class 2 lives on 0
    labels = np.array([0, 0, 1, 1, 1, 2, 2])
    backgrounds = np.array([1, 0, 1, 0, 0, 0, 1])
    predictions = np.array([0, 2, 1, 2, 1, 2, 0])
    # Off home: idx 1 (class 0 on 0), 3, 4 (class 1 on 0), 6 (class 2 on 1).
    # Group accuracies: (0,0) 0/1, (1,0) 1/2, (2,1) 0/1 -> mean 1/6.
    # Predicted as a class living on the background: idx 1 (2 lives on 0), 3 (2), 6 (0 lives on 1) -> 3 of 4.
    minority, shortcut = background_shortcut(predictions, labels, backgrounds, homes)
    assert minority == pytest.approx(1 / 6) and shortcut == pytest.approx(0.75)


def test_background_swap_rate_known_answer() -> None:
    objects = np.array([7, 7, 7, 3, 3, 9, 9])
    predictions = np.array([0, 0, 1, 2, 2, 0, 1])
    # Object 7: pairs (0,0) (0,1) (0,1) -> 2/3 differ; object 3: 0/1; object 9: 1/1 -> mean (2/3 + 0 + 1) / 3.
    assert background_swap_rate(predictions, objects) == pytest.approx(5 / 9)
    with pytest.raises(ValueError, match="object 4 has one render"):
        background_swap_rate(np.array([0, 1, 1]), np.array([4, 5, 5]))


@pytest.mark.slow
def test_tiny_demo_runs_end_to_end_and_reports(tmp_path: Path) -> None:
    config = yaml.safe_load((REPO / "tests" / "configs" / "demo-tiny.yaml").read_text())
    results = tmp_path / "results"
    config["results"], config["data_root"] = str(results), str(tmp_path / "data")
    config["demo"]["weights"] = str(tmp_path / "TinyCLIP-demo.pt")
    config["archs"] = {"TinyCLIP-demo": str(tmp_path / "TinyCLIP-demo.pt")}
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "--cores", "2", "-q", "--configfile", str(tmp_path / "demo.yaml"),
               "--", f"{results}/table2.md", f"{results}/table3.md", f"{results}/claims.md"]
    done = subprocess.run(command, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:]
    for number, columns in ((2, 3), (3, 3)):
        table = (results / f"table{number}.md").read_text()
        rows = [line for line in table.splitlines() if line.startswith("| ") and "method" not in line.lower()]
        assert {row.split("|")[1].strip() for row in rows} == {"Zeroshot", "CAR-FT", "StarFT"}, table
        assert all(len(re.findall(r"\d+\.\d\d", row)) >= columns for row in rows), table
    # Every train and evaluate job leaves snakemake's runtime / memory record (for sizing SLURM resources).
    trained = sorted((results / "benchmarks" / "train").rglob("*.tsv"))
    assert len(trained) == len(list((results / "runs").rglob("best.pt"))) > 0
    header = trained[0].read_text().splitlines()[0].split("\t")
    assert header[:2] == ["s", "h:m:s"] and "max_rss" in header
    # One evaluation job per run: its record, its index, and every metrics file the tables read.
    indexes = sorted((results / "runs").rglob("eval/index.json"))
    assert len(list((results / "benchmarks" / "evaluate").rglob("*.tsv"))) == len(indexes) == 3
    metrics = {path: path.read_bytes() for path in (results / "runs").rglob("eval/demo-*.json")}
    assert len(metrics) == 3 * 3  # (zero-shot, CAR-FT, StarFT) x (demo-id, demo-sketch, demo-heldout-group)
    # Each beside its items file, which gives its numbers again (the swap rate from the object ids).
    for path in metrics:
        items = ItemOutcomes.read(items_path(path))
        recorded = json.loads(path.read_text())["metrics"]
        for metric in {"top1", "worst_group", "mean_group", "swap_rate"} & set(recorded):
            assert metric_value(metric, items) == recorded[metric], (path, metric)
    claims = (results / "claims.md").read_text()
    assert sum(claims.count(f"**{word}**") for word in ("reproduced", "contradicted", "inconclusive")) == 3, claims

    # A rerun is a no-op whatever starts snakemake: the venv's `snakemake` entry point, and the
    # interpreter reached through a symlinked venv with other execution settings (workers, batch
    # size of evaluation): none of them is recorded as something that changes a result.
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    entry_point = Path(sys.executable).parent / "snakemake"
    (tmp_path / "venv-link").symlink_to(Path(sys.executable).parent.parent, target_is_directory=True)
    linked_python = tmp_path / "venv-link" / "bin" / Path(sys.executable).name
    for starter, extra in (([str(entry_point)], []), ([str(linked_python), "-m", "snakemake"],
                                                      ["--config", "workers=1", "eval_batch_size=7"])):
        rerun = subprocess.run([*starter, *command[3:8], *extra, "-n", *command[8:]], cwd=REPO, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        assert rerun.returncode == 0 and "Nothing to be done" in rerun.stdout, (starter, rerun.stdout[-3000:])

    # A benchmark added to a table evaluates only the new metrics: the existing files are kept as they are.
    config["tables"][2]["columns"].append({"label": "Rendition", "benchmark": "demo-rendition"})
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(config))
    done = subprocess.run(command, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-4000:]
    assert len(list((results / "runs").rglob("eval/demo-rendition.json"))) == 3
    assert {path: path.read_bytes() for path in metrics} == metrics
    assert "Rendition" in (results / "table2.md").read_text()
