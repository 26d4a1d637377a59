"""The embedded demo: its data builder's bias and balance, its shortcut metrics, and a tiny end-to-end run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from stages.data.fmnist_demo import BACKGROUNDS
from stages.data.source import build_dataset
from stages.demo.data import build_demo_data, find_fashion_mnist
from stages.evaluation.metrics import background_shortcut

REPO = Path(__file__).resolve().parents[1]
SIZES = {"pretrain": 100, "train": 1000, "val": 50, "test": 100, "group": 250, "sketch": 50, "rendition": 50}


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    build_demo_data(root / "fmnist-demo", find_fashion_mnist(root / "cache"), seed=3, correlation=0.9, sizes=SIZES)
    return root


def test_biased_split_has_the_configured_correlation(demo_root: Path) -> None:
    train = build_dataset("fmnist-demo", demo_root, "train")
    labels, backgrounds = np.array(train.labels), np.array(train.metadata["backgrounds"])
    assert len(train) == 1000 and np.bincount(labels).tolist() == [200] * 5
    own = np.mean(labels == backgrounds)
    assert abs(own - 0.9) < 0.03, own
    for label in range(5):  # off-background samples spread over the other four backgrounds
        others = backgrounds[(labels == label) & (backgrounds != label)]
        assert set(others.tolist()) <= set(range(5)) - {label} and len(set(others.tolist())) >= 3


def test_group_split_is_balanced_over_class_and_background(demo_root: Path) -> None:
    group = build_dataset("fmnist-demo", demo_root, "group")
    counts = np.bincount(np.array(group.groups), minlength=25)
    assert counts.tolist() == [10] * 25
    assert group.group_names[7] == f"{group.classnames[1]} {BACKGROUNDS[2]}"


def test_builder_is_deterministic_and_renditions_differ(demo_root: Path, tmp_path: Path) -> None:
    build_demo_data(tmp_path / "fmnist-demo", find_fashion_mnist(tmp_path / "cache"), seed=3, correlation=0.9,
                    sizes=SIZES)
    for split in ("train", "sketch"):
        first, again = (np.load(root / "fmnist-demo" / f"{split}.npz") for root in (demo_root, tmp_path))
        assert np.array_equal(first["images"], again["images"]) and np.array_equal(first["labels"], again["labels"])
    sketch = np.load(demo_root / "fmnist-demo" / "sketch.npz")["images"]
    assert (sketch[..., 0] == sketch[..., 1]).all()  # edge maps are grey
    images = np.load(demo_root / "fmnist-demo" / "test.npz")["images"]
    assert images.shape == (100, 32, 32, 3) and images.dtype == np.uint8


def test_background_shortcut_known_answer() -> None:
    labels = np.array([0, 0, 1, 1, 1, 2])
    backgrounds = np.array([0, 1, 1, 0, 0, 1])
    predictions = np.array([0, 1, 1, 0, 1, 2])
    # Minority samples (background != label): idx 1 (0 on 1), 3, 4 (1 on 0), 5 (2 on 1).
    # Group accuracies: (0,1) 0/1, (1,0) 1/2, (2,1) 1/1 -> mean 0.5.
    # Predicted as the background's owner: idx 1 (1), idx 3 (0) -> 2 of 4.
    minority, shortcut = background_shortcut(predictions, labels, backgrounds)
    assert minority == pytest.approx(0.5) and shortcut == pytest.approx(0.5)


@pytest.mark.slow
def test_tiny_demo_runs_end_to_end_and_reports(tmp_path: Path) -> None:
    config = yaml.safe_load((REPO / "tests" / "configs" / "demo-tiny.yaml").read_text())
    results = tmp_path / "results"
    config["results"], config["data_root"] = str(results), str(tmp_path / "data")
    config["demo"]["weights"] = str(tmp_path / "TinyCLIP-demo.pt")
    config["archs"] = {"TinyCLIP-demo": str(tmp_path / "TinyCLIP-demo.pt")}
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "--cores", "2", "-q", "--configfile", str(tmp_path / "demo.yaml"),
               "--", f"{results}/table2.md", f"{results}/table3.md"]
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
    assert len(metrics) == 3 * 3  # (zero-shot, CAR-FT, StarFT) x (demo-id, demo-sketch, demo-group)

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
