"""The shared training loop: schedules, the run-directory contract, exact resume, the CLI."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import fakes
from conftest import carot_loss_py_schedule, tiny_config
from stages.models import create_clip
from stages.methods import Progress, method_class
from stages.methods.starft import draw_descriptor, lambda_at
from stages.rundir import RunDir
from stages.training.loop import EpochSampler, TrainingSamples, train, warmup_cosine

REPO = Path(__file__).resolve().parents[1]


def test_lambda_decays_per_epoch_as_the_official_code() -> None:
    values = [lambda_at(0.5, "epoch", Progress(step=0, epoch=e, total_steps=1, epochs=10)) for e in range(10)]
    assert values == pytest.approx([0.45, 0.40, 0.35, 0.30, 0.25, 0.20, 0.15, 0.10, 0.05, 0.0])
    assert lambda_at(0.5, "step", Progress(step=25, epoch=3, total_steps=100, epochs=10)) == pytest.approx(0.375)
    assert lambda_at(0.5, "none", Progress(step=99, epoch=9, total_steps=100, epochs=10)) == 0.5


def test_warmup_then_cosine_to_zero() -> None:
    factor = warmup_cosine(warmup_steps=4, total_steps=14)
    assert [factor(t) for t in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert factor(4) == pytest.approx(1.0)
    assert factor(9) == pytest.approx(0.5)
    assert factor(14) == pytest.approx(0.0, abs=1e-12)


def test_samples_are_a_function_of_seed_epoch_and_index() -> None:
    source = fakes.colour_images("train", 8)
    transform = create_clip("TinyCLIP-test", None).preprocess_train
    samples = TrainingSamples(source, transform, seed=3, draw=functools.partial(draw_descriptor, 58))
    first, again = samples[(1, 5)], samples[(1, 5)]
    assert torch.equal(first["image"], again["image"]) and first["descriptor_index"] == again["descriptor_index"]
    draws = {samples[(epoch, 5)]["descriptor_index"] for epoch in range(40)}
    assert len(draws) > 10 and all(0 <= d < 58 for d in draws)  # uniform redraw per load
    order = list(EpochSampler(8, seed=3, epoch=2))
    assert sorted(i for _, i in order) == list(range(8)) and list(EpochSampler(8, 3, 2, start=5)) == order[5:]


def test_run_directory_contract(tmp_path: Path) -> None:
    config = tiny_config("starft", spurious__suffix="none")
    best = train(config, tmp_path / "run")
    run = tmp_path / "run"
    assert best == run / "best.pt" and not (run / "ckpt").exists()  # the resumable state goes once best.pt is written
    run_json = json.loads((run / "run.json").read_text())
    assert run_json["model"] == {"name": "TinyCLIP-test", "pretrained": "none"} and run_json["total_steps"] == 4
    assert run_json["config"]["method"] == "starft" and run_json["code_version"].startswith("stages@")
    records = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert {"loss", "loss_clip", "lr", "lam", "samples_per_s"} <= records[0].keys()
    assert [r["lam"] for r in records] == [0.5, 0.5, 0.0, 0.0]  # λ=1, E=2: λ_0 = 0.5, λ_1 = 0
    assert "loss_star" in records[0] and "loss_star" not in records[-1]
    payload = torch.load(best, weights_only=True)
    assert payload["step"] == 4 and payload["head"] is None and payload["method"] == "starft"
    mtime = best.stat().st_mtime_ns
    train(config, run)  # a finished run is not redone
    assert best.stat().st_mtime_ns == mtime


def test_zeroshot_run_refers_to_the_pretrained_weights_unchanged(tmp_path: Path) -> None:
    config = tiny_config("zeroshot", model__pretrained=str(tmp_path / "init.pt"))
    torch.manual_seed(11)
    torch.save(create_clip("TinyCLIP-test", None).model.state_dict(), tmp_path / "init.pt")
    train(config, tmp_path / "run")
    payload = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert payload["state_dict"] is None and payload["pretrained"] == str(tmp_path / "init.pt")  # no copy
    loaded = RunDir(tmp_path / "run").load_model().bundle.model.state_dict()
    original = torch.load(tmp_path / "init.pt", weights_only=True)
    assert loaded.keys() == original.keys() and all(torch.equal(loaded[k], original[k]) for k in loaded)
    assert not (tmp_path / "run" / "train_log.jsonl").exists()


@pytest.mark.parametrize("method,overrides", [
    ("starft", {"spurious__bank": str(REPO / "descriptor_banks" / "official-code.json")}),
    ("ft", {}),
    ("carot", {"options__carot__ema_every": 1}),
    ("lipsumft", {}),
], ids=["starft", "ft", "carot-ema", "lipsumft"])
def test_kill_and_resume_is_bit_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str,
                                          overrides: dict) -> None:
    config = tiny_config(method, checkpoint_every=1, **overrides)  # 2 epochs x 2 steps
    train(config, tmp_path / "straight")

    # Same run, killed during step 3 (after the checkpoint at the end of epoch 0), then resumed.
    cls = method_class(config.method)
    original_step = cls.training_step
    calls = {"n": 0}

    def dying_step(self, batch, progress):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated kill")
        return original_step(self, batch, progress)

    monkeypatch.setattr(cls, "training_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "resumed")
    assert not (tmp_path / "resumed" / "best.pt").exists()
    monkeypatch.setattr(cls, "training_step", original_step)
    train(config, tmp_path / "resumed")

    straight = torch.load(tmp_path / "straight" / "best.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "best.pt", weights_only=True)
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    if straight["head"] is not None:
        assert torch.equal(straight["head"]["weight"], resumed["head"]["weight"])
    losses = [[json.loads(line)["loss"] for line in (tmp_path / run / "train_log.jsonl").read_text().splitlines()]
              for run in ("straight", "resumed")]
    assert losses[0] == losses[1] and len(losses[0]) == 4


def test_carot_run_teacher_is_carot_loss_py_ema_of_the_students(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A 4-step CaRot run (EMA every 2): its teacher = a float64 EMA, on CaRot's schedule, of the students it saw."""
    config = tiny_config("carot", options__carot__ema_every=2, keep_checkpoints=True)  # 2 epochs x 2 steps
    cls = method_class("carot")
    students: dict[int, dict[str, torch.Tensor]] = {}
    original_begin, original_after = cls.begin_step, cls.after_optimizer_step

    def record(method, steps: int) -> None:
        students.setdefault(steps, {k: v.detach().double().clone() for k, v in method.student.named_parameters()})

    def begin_step(self, progress: Progress) -> None:
        record(self, progress.step)
        original_begin(self, progress)

    def after_optimizer_step(self, step: int) -> None:
        record(self, step)
        original_after(self, step)

    monkeypatch.setattr(cls, "begin_step", begin_step)
    monkeypatch.setattr(cls, "after_optimizer_step", after_optimizer_step)
    train(config, tmp_path / "run")
    options = config.options
    updates, distilled = carot_loss_py_schedule(2, 2, 2, options["carot"].momentum_start, options["carot"].momentum_end,
                                                options["carot"].momentum_warmup)
    assert [step for step, _ in updates] == [1, 3]
    teacher = dict(students[0])  # the teacher starts as the pretrained student
    for step, momentum in updates:
        teacher = {k: momentum * v + (1 - momentum) * students[step][k] for k, v in teacher.items()}
    saved = torch.load(tmp_path / "run" / "ckpt" / "last.pt", weights_only=True)["teacher"]
    for key, value in teacher.items():
        torch.testing.assert_close(saved[key].double(), value, rtol=1e-6, atol=1e-7)
    assert any(not torch.equal(students[0][k], teacher[k]) for k in teacher)
    records = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] - 1 for r in records if "loss_distill" in r] == distilled == [1, 2, 3]


def test_best_checkpoint_by_id_validation(tmp_path: Path) -> None:
    config = tiny_config("flyp", select="val", data__val_split="val")
    train(config, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    val = [r for r in records if "val_top1" in r]
    assert [r["epoch"] for r in val] == [0, 1]
    best_epoch_step = max(val, key=lambda r: r["val_top1"])["step"]  # first maximum wins ties
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=True)["step"] == best_epoch_step


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stages.training", *args], cwd=cwd, capture_output=True, text=True,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def test_cli_trains_and_reports_bad_config_fields(tmp_path: Path) -> None:
    config = tiny_config("flyp").model_dump(mode="json")
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(config))
    done = _cli("--config", str(tmp_path / "ok.yaml"), "--out", str(tmp_path / "run"), "--set", "optim.epochs=1")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "best.pt").is_file()
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["optim"]["epochs"] == 1

    config["optim"]["learning_rate"] = 1e-5  # a typo: must be rejected, not ignored
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    failed = _cli("--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "bad"))
    assert failed.returncode == 2 and "optim.learning_rate" in failed.stderr

    missing_bank = _cli("--config", str(tmp_path / "ok.yaml"), "--out", str(tmp_path / "nobank"),
                        "--set", "method=starft", "--set", "spurious.bank=nowhere.json")
    assert missing_bank.returncode == 2 and "nowhere.json" in missing_bank.stderr


def test_default_run_dir_spells_every_knob() -> None:
    config = tiny_config("starft", lam=0.5, seed=2)
    assert RunDir.of(config).path == Path(
        "results/runs/TinyCLIP-test-none/imagefolder/starft/suffix-spurious_mask-on_decay-epoch/"
        "test-bank-background/lam0.5/seed2")
    assert RunDir.of(tiny_config("flyp")).path == Path("results/runs/TinyCLIP-test-none/imagefolder/flyp/-/-/-/seed0")


def test_starft_single_epoch_with_epoch_decay_warns() -> None:
    with pytest.warns(UserWarning, match="no Star term"):
        tiny_config("starft", optim__epochs=1)


def test_trains_on_the_imagenet_train_layout(tmp_path: Path) -> None:
    """wnid folders under <data_root>/imagenet/train -> 1000 OpenAI class names, sorted-wnid labels."""
    fakes.imagenet(tmp_path / "data", "train", indices=[0, 1, 207, 999])  # two images per class
    config = tiny_config("flyp", data__train_set="imagenet", data__data_root=str(tmp_path / "data"),
                         data__train_split="train", optim__epochs=1, optim__max_steps_per_epoch=1)
    train(config, tmp_path / "run")
    run_json = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run_json["train_size"] == 8 and len(run_json["classnames"]) == 1000
    assert run_json["classnames"][207] == "Golden Retriever"  # the OpenAI CLIP class names
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=True)["step"] == 1


def test_checkpoint_of_another_config_is_not_resumed(tmp_path: Path) -> None:
    first = tiny_config("flyp", optim__epochs=1, keep_checkpoints=True)
    train(first, tmp_path / "run")
    (tmp_path / "run" / "best.pt").unlink()  # pretend it never finished, leaving ckpt/last.pt behind
    changed = tiny_config("flyp", optim__epochs=1, optim__lr=5e-4)
    train(changed, tmp_path / "run")
    train(changed, tmp_path / "fresh")
    ours = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["state_dict"]
    fresh = torch.load(tmp_path / "fresh" / "best.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(ours[k], fresh[k]) for k in ours)
    assert len((tmp_path / "run" / "train_log.jsonl").read_text().splitlines()) == 2


def test_compile_option_trains_like_eager_and_its_checkpoint_resumes_eagerly(tmp_path: Path) -> None:
    bank = str(REPO / "descriptor_banks" / "official-code.json")
    # A small lr: AdamW's first updates are ±lr wherever a gradient is at rounding level, which
    # would amplify the compiled kernels' different float rounding into visibly different weights.
    settings = {"spurious__bank": bank, "optim__lr": 1e-5}
    eager = tiny_config("starft", **settings)
    compiled = tiny_config("starft", compile=True, keep_checkpoints=True, **settings)
    train(eager, tmp_path / "eager")
    train(compiled, tmp_path / "compiled")
    logs = {run: [json.loads(line) for line in (tmp_path / run / "train_log.jsonl").read_text().splitlines()]
            for run in ("eager", "compiled")}
    assert [r["step"] for r in logs["compiled"]] == [1, 2, 3, 4]
    # The Star term runs in epoch 0 only (λ_1 = 0), where the student is still ~ the teacher (~0);
    # test_methods checks its gradients away from that point.
    for key in ("loss", "loss_clip", "loss_star"):
        assert ([r[key] for r in logs["compiled"] if key in r]
                == pytest.approx([r[key] for r in logs["eager"] if key in r], rel=1e-5, abs=1e-5))
    weights = {run: torch.load(tmp_path / run / "best.pt", weights_only=True)["state_dict"] for run in logs}
    for key, value in weights["eager"].items():  # state dict keys unchanged by compilation
        torch.testing.assert_close(weights["compiled"][key], value, rtol=1e-3, atol=1e-4)

    # compile only changes how a run executes: its checkpoint is resumed by the eager config.
    (tmp_path / "compiled" / "best.pt").unlink()
    train(eager, tmp_path / "compiled")
    resumed = torch.load(tmp_path / "compiled" / "best.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(resumed[key], value) for key, value in weights["compiled"].items())
    assert len((tmp_path / "compiled" / "train_log.jsonl").read_text().splitlines()) == 4
