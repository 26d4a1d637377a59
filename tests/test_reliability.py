"""What a newcomer broke (issue 13): stale run dirs, corrupt checkpoints and images, bad weights, config slips.

Each test drives the real code path (training loop, CLIs, dataset adapters) into the failure and
checks the one-line message or the recovery.
"""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import fakes
from conftest import tiny_config
from stages import plan
from stages.config import ConfigError, TrainConfig, load_train_config, validate_workflow_config
from stages.data.check import check_images
from stages.data.source import DatasetError, build_dataset
from stages.models.factory import ModelLoadError, create_clip
from stages.rundir import RunDir
from stages.training.__main__ import main as training_main
from stages.training.loop import train

REPO = Path(__file__).resolve().parents[1]
ENV = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, env=ENV)


def _imagefolder(root: Path, per_class: int = 2) -> Path:
    """``root/imagefolder/train/{cat,dog}/`` with `per_class` tiny JPEGs each."""
    for label, folder in enumerate(["cat", "dog"]):
        for n in range(per_class):
            fakes.image(root / "imagefolder" / "train" / folder / f"{n}.jpg", 40 * label + n)
    return root / "imagefolder" / "train"


def _folder_config(root: Path, **overrides: object) -> TrainConfig:
    settings = {"data__train_set": "imagefolder", "data__data_root": str(root), "data__train_split": "train",
                "optim__epochs": 1, "optim__batch_size": 8, "optim__max_steps_per_epoch": 1, **overrides}
    return tiny_config("flyp", **settings)


# --- 1. never a silent wrong result -------------------------------------------------------------


def test_finished_run_with_another_config_is_refused_naming_the_fields(tmp_path: Path) -> None:
    config = tiny_config("flyp", optim__epochs=1)
    best = train(config, tmp_path / "run")
    mtime = best.stat().st_mtime_ns
    # execution-only settings are not a change: nothing to do
    assert train(tiny_config("flyp", optim__epochs=1, device="cpu", data__workers=1, checkpoint_every=7,
                             data__check="none"), tmp_path / "run") == best
    assert best.stat().st_mtime_ns == mtime
    changed = tiny_config("flyp", optim__epochs=1, optim__lr=5e-4, seed=3)
    with pytest.raises(ConfigError) as caught:
        train(changed, tmp_path / "run")
    message = str(caught.value)
    assert message == (f"{tmp_path / 'run'} holds a finished run of another config (optim.lr: 0.001 -> 0.0005; "
                       "seed: 0 -> 3): pass another --out for the new config, or --force to retrain this directory "
                       "with it")
    assert best.stat().st_mtime_ns == mtime
    train(changed, tmp_path / "run", force=True)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["optim"]["lr"] == 5e-4
    assert torch.load(best, weights_only=True)["step"] == 2
    assert len((tmp_path / "run" / "train_log.jsonl").read_text().splitlines()) == 2  # the old log is gone


def test_cli_refuses_a_changed_config_then_force_retrains(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny_config("flyp", optim__epochs=1).model_dump(mode="json")))
    args = ["--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run")]
    assert training_main(args) == 0
    capsys.readouterr()
    assert training_main([*args, "--set", "optim.lr=0.01"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {tmp_path / 'run'} holds a finished run of another config (optim.lr: 0.001 -> 0.01): pass another "
        "--out for the new config, or --force to retrain this directory with it"]
    assert training_main([*args, "--set", "optim.lr=0.01", "--force"]) == 0
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["optim"]["lr"] == 0.01


def test_empty_class_folder_in_imagefolder_is_refused_with_its_path(tmp_path: Path) -> None:
    train_dir = _imagefolder(tmp_path)
    (train_dir / "cow").mkdir()
    with pytest.raises(DatasetError) as caught:
        build_dataset("imagefolder", tmp_path, "train")
    assert f"class folder {train_dir / 'cow'} has no images" in str(caught.value)
    assert "delete the folder from every split" in str(caught.value)
    (train_dir / "cow").rmdir()
    assert build_dataset("imagefolder", tmp_path, "train").classnames == ["cat", "dog"]


# --- 2. corrupt files: clear messages and recovery ----------------------------------------------


def test_corrupt_last_checkpoint_falls_back_to_prev(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    config = tiny_config("ft", checkpoint_every=1, keep_checkpoints=True)  # 2 epochs x 2 steps: steps 1, 2, 3, 4
    train(config, tmp_path / "straight")
    run = tmp_path / "run"
    train(config, run)
    last, prev = RunDir(run).last, RunDir(run).prev
    assert torch.load(prev, weights_only=True)["step"] == 3  # the one before last.pt (step 4)
    (run / "best.pt").unlink()
    last.write_bytes(last.read_bytes()[:1000])  # a copy cut short
    capsys.readouterr()
    train(config, run)
    out = capsys.readouterr().out
    assert f"warning: {last} is not a readable checkpoint" in caplog.text  # logged (stages.rundir)
    assert f"resuming from the previous checkpoint {prev} instead" in caplog.text and "from step 3/4" in out
    straight = torch.load(tmp_path / "straight" / "best.pt", weights_only=True)["state_dict"]
    resumed = torch.load(run / "best.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)

    (run / "best.pt").unlink()
    last.write_bytes(b"\0" * 64)
    prev.write_bytes(random.Random(2).randbytes(256))  # seeded garbage (an IndexError inside the unpickler)
    with pytest.raises(ModelLoadError) as caught:
        train(config, run)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"cannot resume {run}: {last} is not a readable checkpoint")
    assert f"{prev} is not a readable checkpoint" in message
    assert message.endswith(f"Fix: delete {run / 'ckpt'} to restart this run from scratch (or restore the file)")


@pytest.mark.parametrize("junk", [b"", b"<html>not weights</html>" * 10, bytes(range(256)) * 4], ids=["empty", "text", "bytes"])
def test_junk_weights_are_one_line_naming_file_and_formats(tmp_path: Path, junk: bytes) -> None:
    for name in ("junk.pt", "junk.safetensors"):
        (tmp_path / name).write_bytes(junk)
        with pytest.raises(ModelLoadError) as caught:
            create_clip("TinyCLIP-test", str(tmp_path / name))
        message = str(caught.value)
        assert "\n" not in message and "weights_only=False" not in message
        assert message.startswith(f"{tmp_path / name} is not a readable checkpoint, state dict or safetensors file (")
        assert message.endswith("accepted: a PyTorch state dict or checkpoint saved with torch.save (.pt/.pth/.bin; "
                                "a dict of tensors, or {'state_dict': ...} like a run's weights file), or a .safetensors file")


def test_corrupt_best_checkpoint_is_one_line(tmp_path: Path) -> None:
    train(tiny_config("flyp", optim__epochs=1), tmp_path / "run")
    # Seeded garbage, not os.urandom: these seeds make the unpickler fail in each way it does on random
    # bytes (UnpicklingError, IndexError, KeyError, UnicodeDecodeError), every run the same.
    for seed in (0, 2, 20, 195):
        (tmp_path / "run" / "best.pt").write_bytes(random.Random(seed).randbytes(300))
        with pytest.raises(ModelLoadError, match=r"best\.pt is not a readable checkpoint"):
            RunDir(tmp_path / "run").load_model()


def test_safetensors_weights_load(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(4)
    weights = create_clip("TinyCLIP-test", None).model.state_dict()
    save_file({key: value.contiguous() for key, value in weights.items()}, tmp_path / "w.safetensors")
    loaded = create_clip("TinyCLIP-test", str(tmp_path / "w.safetensors")).model.state_dict()
    assert all(torch.equal(loaded[key], weights[key]) for key in weights)


def test_no_random_init_warning_when_a_weights_file_is_loaded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    torch.save(create_clip("TinyCLIP-test", None).model.state_dict(), tmp_path / "w.pt")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        create_clip("TinyCLIP-test", str(tmp_path / "w.pt"))
    assert not [r for r in caplog.records if "initialized randomly" in r.getMessage()]
    with caplog.at_level(logging.WARNING):
        create_clip("TinyCLIP-test", "none")  # random weights asked for: open_clip may say so
    assert [r for r in caplog.records if "initialized randomly" in r.getMessage()]


def test_data_check_cli_lists_every_bad_file(tmp_path: Path) -> None:
    train_dir = _imagefolder(tmp_path, per_class=3)
    (train_dir / "cat" / "0.jpg").write_bytes(b"not an image")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(train_dir / "dog" / "1.jpg", quality=95)
    whole = (train_dir / "dog" / "1.jpg").read_bytes()
    (train_dir / "dog" / "1.jpg").write_bytes(whole[: len(whole) // 2])  # header intact, pixels cut short
    fast = _cli("stages.data", "check", "--dataset", "imagefolder", "--data-root", str(tmp_path))
    assert fast.returncode == 2
    assert [line.rpartition(": ")[0] for line in fast.stdout.splitlines()] == [f"bad: {train_dir / 'cat' / '0.jpg'}"]
    assert "imagefolder train: 6 images header-checked, 1 unreadable" in fast.stderr
    full = _cli("stages.data", "check", "--dataset", "imagefolder", "--data-root", str(tmp_path), "--decode")
    assert full.returncode == 2
    assert [line.split(": ")[0] + ": " + line.split(": ")[1] for line in full.stdout.splitlines()] == [
        f"bad: {train_dir / 'cat' / '0.jpg'}", f"bad: {train_dir / 'dog' / '1.jpg'}"]
    (train_dir / "cat" / "0.jpg").unlink()
    (train_dir / "dog" / "1.jpg").unlink()
    clean = _cli("stages.data", "check", "--dataset", "imagefolder", "--data-root", str(tmp_path), "--decode")
    assert clean.returncode == 0 and clean.stdout == ""
    missing = _cli("stages.data", "check", "--dataset", "imagefolder", "--data-root", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and missing.stderr.startswith("error: ")


def test_training_checks_images_first_and_skip_corrupt_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train_dir = _imagefolder(tmp_path, per_class=4)
    bad = train_dir / "cat" / "2.jpg"
    bad.write_bytes(b"GIF89a garbage")
    with pytest.raises(DatasetError) as caught:
        train(_folder_config(tmp_path), tmp_path / "run")
    assert str(caught.value).startswith(f"1 unreadable training image(s), e.g. {bad} (")
    assert "python -m stages.data check --dataset imagefolder" in str(caught.value)
    assert "data.skip_corrupt: true" in str(caught.value)
    assert not (tmp_path / "run" / "run.json").exists()  # refused before anything was built

    # found only at training time (header check off): one line naming the file
    with pytest.raises(DatasetError, match=rf"^cannot read image {bad}: .*set data.skip_corrupt: true"):
        train(_folder_config(tmp_path, data__check="none"), tmp_path / "late")

    capsys.readouterr()
    train(_folder_config(tmp_path, data__skip_corrupt=True), tmp_path / "skip")
    out = capsys.readouterr().out
    assert "warning: 1 unreadable training image(s)" in out
    assert "data.skip_corrupt: replaced 1 unreadable training image loads" in out


def test_header_check_is_cheap_and_ignores_in_memory_images(tmp_path: Path) -> None:
    assert check_images(fakes.colour_images("train", 16)) == []
    _imagefolder(tmp_path, per_class=50)
    started = time.perf_counter()
    assert check_images(build_dataset("imagefolder", tmp_path, "train")) == []
    assert time.perf_counter() - started < 5


# --- 4. smaller things --------------------------------------------------------------------------


def test_batch_size_not_divisible_by_accum_steps_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"optim": {"batch_size": 10, "accum_steps": 4}}))
    with pytest.raises(ConfigError, match=r"optim: Value error, batch_size 10 must be divisible by accum_steps 4"):
        load_train_config(path)


def test_model_override_replaces_archs_in_every_table() -> None:
    raw = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    paper = validate_workflow_config(raw)
    assert "ViT-B-16" in {run.model.name for run in plan.runs_by_dir(paper).values()}
    raw["model"] = {"name": "TinyCLIP-test", "pretrained": "none"}
    config = validate_workflow_config(raw)
    runs = list(plan.runs_by_dir(config).values())
    assert runs and {(run.model.name, run.model.pretrained) for run in runs} == {("TinyCLIP-test", "none")}


@pytest.mark.parametrize("module", ["stages.training", "stages.descriptors", "stages.reports", "stages.demo",
                                    "stages.data"])
def test_cli_help_does_not_import_torch(module: str) -> None:
    probe = (f"import runpy, sys; sys.argv = ['{module}', '--help']\n"
             f"try:\n    runpy.run_module('{module}', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_config_and_plan_import_without_torch() -> None:
    # The Snakefile's imports and `--print-config`: validating YAML or planning paths never loads torch.
    probe = "import stages.config, stages.plan, stages.rundir, sys; assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr
