"""``python -m stages.data verify`` and the workflow gate: full, partial and misarranged datasets against their
manifests (listing only), own data's class sets, the gate's cache, and a dry run stopped by a partial dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import fake_archives
import fakes
from stages.data import manifest as manifest_module
from stages.data.__main__ import main
from stages.data.layout import data_file
from stages.data.manifest import load_manifest, manifest_datasets
from stages.data.verify import STAMP_DIR, cached_verify, verify_dataset, verify_own_data

REPO = Path(__file__).resolve().parents[1]


def partial_imagenet_r(root: Path) -> None:
    """The partial download the issue names: all 200 class folders, one image each."""
    fakes.imagenet_subset(root, "imagenet-r", list(range(200)))


def test_shipped_manifests_parse_and_match_the_releases() -> None:
    assert {"imagenet", "imagenet-r", "imagenet-a", "imagenet-sketch", "imagenetv2"} <= set(manifest_datasets())
    counts = {name: {split: (c.images, c.classes, c.per_class) for split, c in load_manifest(name).splits.items()}
              for name in ("imagenet", "imagenet-r", "imagenet-a", "imagenet-sketch", "imagenetv2")}
    assert counts == {
        "imagenet": {"train": (1_281_167, 1000, None), "val": (50_000, 1000, 50)},
        "imagenet-r": {"test": (30_000, 200, None)}, "imagenet-a": {"test": (7_500, 200, None)},
        "imagenet-sketch": {"test": (50_889, 1000, None)}, "imagenetv2": {"test": (10_000, 1000, 10)},
    }
    for name in manifest_datasets():  # every manifest (the other routes' too) follows the schema
        assert load_manifest(name).dataset == name


def test_partial_imagenet_r_exits_non_zero_with_found_of_expected(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    partial_imagenet_r(tmp_path)
    assert main(["verify", "--dataset", "imagenet-r", "--data-root", str(tmp_path)]) == 2
    out = capsys.readouterr()
    assert "imagenet-r test: 200 of 30,000 images, 200 of 200 classes" in out.out
    assert f"fix: python -m stages.data prepare --dataset imagenet-r --data-root {tmp_path}" in out.out
    assert "Traceback" not in out.err


def test_full_dataset_verifies_against_its_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    fakes.imagenet_subset(tmp_path, "imagenet-a", [0, 1, 2])
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "imagenet-a.json").write_text(json.dumps({
        "dataset": "imagenet-a", "version": "test", "source": "test",
        "splits": {"test": {"images": 3, "classes": 3, "per_class": 1}}}))
    monkeypatch.setattr(manifest_module, "MANIFEST_DIR", tmp_path / "manifests")
    assert main(["verify", "--dataset", "imagenet-a", "--data-root", str(tmp_path), "--decode"]) == 0
    assert "imagenet-a test: 3 of 3 images, 3 of 3 classes: ok" in capsys.readouterr().out
    fakes.image(tmp_path / "imagenet-a" / data_file("classnames", "imagenet")["imagenet-a"][0] / "extra.jpg")
    report = verify_dataset("imagenet-a", tmp_path)  # one class now has 2 of its 1: named with its count
    assert not report.ok and "1 classes do not have 1 images" in report.text()


def test_imagenet_val_as_loose_files_is_named_as_such(tmp_path: Path) -> None:
    wnids = fakes.imagenet_wnids()
    fakes.imagenet(tmp_path, "train", [0, 1])
    for n in range(1, 4):
        fakes.image(tmp_path / "imagenet" / "val" / f"ILSVRC2012_val_{n:08d}.JPEG", n)
    report = verify_dataset("imagenet", tmp_path)
    assert not report.ok
    assert "val holds 3 loose image files and no class folders" in report.text()
    assert "--from DIR" in report.text() and "ILSVRC2012_img_val.tar" in report.text()
    # With the devkit beside it the adapter can label them: counted, not called misarranged.
    fakes.imagenet_unsorted_val(tmp_path / "labelled", [wnids[0], wnids[1], wnids[0]], labels="devkit")
    labelled = verify_dataset("imagenet", tmp_path / "labelled").text()
    assert "loose image files" not in labelled and "imagenet val: 3 of 50,000 images, 2 of 1,000 classes" in labelled


@pytest.mark.parametrize("dataset, build, images", [
    ("iwildcam", fakes.iwildcam, {"train": 1, "id_test": 2, "test": 2, "val": 1}),
    ("fmow", fakes.fmow, {"train": 1, "id_val": 1, "id_test": 1, "val": 1, "test": 3}),
])
def test_wilds_splits_lacking_classes_verify_when_only_the_label_set_is_published(
        dataset: str, build: Callable[[Path], object], images: dict[str, int], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # WILDS publishes the label set (182 / 62 classes), not which classes each split holds: null in the manifest.
    assert all(counts.classes is None for counts in load_manifest(dataset).splits.values())
    build(tmp_path)  # every split holds only a few of the classes
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / f"{dataset}.json").write_text(json.dumps({
        "dataset": dataset, "version": "test", "source": "test",
        "splits": {split: {"images": n, "classes": None, "per_class": None} for split, n in images.items()}}))
    monkeypatch.setattr(manifest_module, "MANIFEST_DIR", tmp_path / "manifests")
    report = verify_dataset(dataset, tmp_path)
    assert report.ok, report.text()
    assert f"{dataset} test: {images['test']} of {images['test']} images, " in report.text()
    short = {**images, "train": images["train"] + 1}  # an image shortfall is still one
    (tmp_path / "manifests" / f"{dataset}.json").write_text(json.dumps({
        "dataset": dataset, "version": "test", "source": "test",
        "splits": {split: {"images": n, "classes": None, "per_class": None} for split, n in short.items()}}))
    assert "SHORT by 1 images" in verify_dataset(dataset, tmp_path).text()


def test_cifar10_02_without_cifar10_names_the_command_for_cifar10(tmp_path: Path) -> None:
    files = fake_archives.cifar102(tmp_path / "CIFAR-10.2")  # cifar102_test.npz in place, cifar10 absent
    assert (tmp_path / "CIFAR-10.2" / "cifar102_test.npz") == files["cifar102_test.npz"]
    report = verify_dataset("cifar10.02", tmp_path)
    assert not report.ok
    assert (f"reads cifar10's files too, and cifar10 does not verify: python -m stages.data prepare --dataset cifar10 "
            f"--data-root {tmp_path}") in report.text()


def test_own_data_reports_counts_and_refuses_different_class_sets(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    for split, classes in (("train", ["cat", "dog", "owl"]), ("test", ["cat", "dog", "emu"])):
        for name in classes:
            fakes.image(tmp_path / "imagefolder" / split / name / "0.png")
    assert main(["verify", "--dataset", "imagefolder", "--data-root", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert "imagefolder train: 3 images in 3 classes" in out and "imagefolder train per class: cat 1, dog 1, owl 1" in out
    assert "classes not in train: emu" in out and "classes of train missing here: owl" in out
    (tmp_path / "imagefolder" / "test" / "emu").rename(tmp_path / "imagefolder" / "test" / "owl")
    assert verify_own_data("imagefolder", tmp_path, ["train", "test"]).ok


def test_gate_cache_is_keyed_by_the_listing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fakes.imagenet_subset(tmp_path, "imagenet-r", [0, 1])
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "imagenet-r.json").write_text(json.dumps({
        "dataset": "imagenet-r", "version": "1", "source": "test",
        "splits": {"test": {"images": 2, "classes": 2, "per_class": None}}}))
    monkeypatch.setattr(manifest_module, "MANIFEST_DIR", tmp_path / "manifests")
    assert cached_verify("imagenet-r", tmp_path) is None
    stamp = tmp_path / STAMP_DIR / "imagenet-r.json"
    assert stamp.is_file()
    calls = []
    monkeypatch.setattr("stages.data.verify.verify_dataset", lambda *args, **kw: calls.append(args))
    assert cached_verify("imagenet-r", tmp_path) is None and calls == []  # cached: no listing
    monkeypatch.undo()
    monkeypatch.setattr(manifest_module, "MANIFEST_DIR", tmp_path / "manifests")
    wnid_folder = next(p for p in (tmp_path / "imagenet-r").iterdir() if p.is_dir())
    os.unlink(next(wnid_folder.iterdir()))  # an image removed: the folder's mtime changes, the cache misses
    report = cached_verify("imagenet-r", tmp_path)
    assert report is not None and "1 of 2 images" in report.text()


def dry_run(target: str, *config: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "snakemake", "-n", "-q", "rules", "--configfile", "config/paper.yaml",
                           "--config", *config, "--", target], cwd=REPO, env=env, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=300)


def test_dry_run_on_a_partial_data_root_stops_before_planning(tmp_path: Path) -> None:
    root = tmp_path / "data"
    partial_imagenet_r(root)
    for n in range(1, 3):  # and ImageNet val extracted flat: both named in the one message
        fakes.image(root / "imagenet" / "val" / f"ILSVRC2012_val_{n:08d}.JPEG", n)
    target = f"{tmp_path}/results/table2.md"
    result = dry_run(target, f"results={tmp_path}/results", f"data_root={root}")
    assert result.returncode != 0, result.stdout
    assert "data not ready: imagenet, imagenet-r" in result.stdout
    assert "imagenet-r test: 200 of 30,000 images" in result.stdout and "val holds 2 loose image files" in result.stdout
    assert "Job stats" not in result.stdout and not (tmp_path / "results").exists()
    # The same gate in process: allow_partial turns the stop into a warning (the Snakefile prints it).
    import yaml

    from stages import plan
    from stages.config import ConfigError, validate_workflow_config

    raw = {**yaml.safe_load((REPO / "config" / "paper.yaml").read_text()), "data_root": str(root)}
    with pytest.raises(ConfigError, match="200 of 30,000 images"):
        plan.check_data_ready(validate_workflow_config(raw), *plan.config_data(validate_workflow_config(raw)),
                              present_only=True)
    allowed = validate_workflow_config({**raw, "allow_partial": True})
    warning = plan.check_data_ready(allowed, *plan.config_data(allowed), present_only=True)
    assert warning.startswith("warning: allow_partial=true") and "imagenet-r test: 200 of 30,000" in warning
    # onstart checks every needed dataset, absent ones too (a dry run skips onstart).
    with pytest.raises(ConfigError, match="imagenet-sketch: not found under"):
        plan.check_data_ready(validate_workflow_config(raw), set(), {"imagenet-sketch"}, present_only=False)
