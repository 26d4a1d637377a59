"""Live tracking and provenance: TensorBoard scalars of a tiny run, W&B offline, run.json records."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import tiny_config
from stages.training.loop import train
from stages.rundir import RunDir


def test_tensorboard_holds_every_logged_scalar_and_run_json_its_provenance(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_config("starft", spurious__suffix="none", select="val", data__val_split="val"), run)
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/loss_clip", "train/loss_star", "train/lr", "train/lam", "train/samples_per_s",
            "train/grad_norm", "val/val_top1"} <= tags
    records = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    logged = events.Scalars("train/loss")
    assert [e.step for e in logged] == [r["step"] for r in steps]
    assert [e.value for e in logged] == pytest.approx([r["loss"] for r in steps], rel=1e-6)
    assert [e.value for e in events.Scalars("val/val_top1")] == pytest.approx(
        [r["val_top1"] for r in records if "val_top1" in r], rel=1e-6)
    assert all(r["grad_norm"] > 0 for r in steps)
    provenance = json.loads((run / "run.json").read_text())["provenance"]
    assert {"package", "git", "torch", "open_clip", "cuda", "cudnn", "gpu", "host", "command", "started"} <= provenance.keys()
    assert provenance["package"]["version"] and provenance["open_clip"] and "finished" in json.loads((run / "run.json").read_text())


def test_wandb_offline_writes_its_local_run_and_a_resume_continues_it(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "runs" / "arch" / "seed0"
    config = tiny_config("flyp", tracking=["wandb"], optim__epochs=1)
    train(config, run)
    run_id = RunDir(run).wandb_id.read_text().strip()
    offline = list((run / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
    assert not (run / "tb").exists()  # tensorboard not requested
    (run / "best.pt").unlink()  # pretend the job died after its last checkpoint: the rerun resumes
    train(config, run)
    assert RunDir(run).wandb_id.read_text().strip() == run_id
    assert len(list((run / "wandb").glob(f"offline-run-*-{run_id}"))) == 2  # the same W&B run id, continued
    assert os.environ["WANDB_MODE"] == "offline"


def test_print_config_shows_defaults_and_help_documents_every_field(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from stages.config import TrainConfig
    from stages.training.__main__ import field_docs, main

    (tmp_path / "c.yaml").write_text("method: flyp\noptim: {lr: 0.001}\n")
    assert main(["--config", str(tmp_path / "c.yaml"), "--set", "seed=3", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["method"] == "flyp" and printed["optim"]["lr"] == 0.001 and printed["seed"] == 3
    assert printed["optim"]["batch_size"] == 512 and printed["tracking"] == ["tensorboard"]
    assert TrainConfig.model_validate(printed) == TrainConfig.model_validate({"method": "flyp", "seed": 3, "optim": {"lr": 0.001}})
    docs = "\n".join(field_docs())
    assert "  optim.lr = 1e-05" in docs and "  data.csv.separator = '\\t'" in docs and "tracking = ['tensorboard']" in docs
