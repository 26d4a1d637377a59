"""The cluster is hostile (issue 26): signals, kills, NaN steps, full disks, two writers, leftovers.

Every test drives the real loop: a signal is a real signal through the real handler, a second
writer a real second process, a full disk a real (tiny) tmpfs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import fakes
from conftest import tiny_config
from stages.io import DiskFullError, atomic_torch_save
from stages.methods import method_class
from stages.models.factory import ModelLoadError
from stages.rundir import NonFiniteCheckpoint, RunDir, RunLocked
from stages.training.__main__ import main as training_main
from stages.training.interrupt import EXIT_INTERRUPTED, RunInterrupted
from stages.training.loop import NonFiniteLoss, train

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
# Logs, records and small sidecars are not weights: the disk contract is about what is left beside best.pt.
NOT_WEIGHTS = {"run.json", "train_log.jsonl", "train.yaml"}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def _same_weights(a: Path, b: Path) -> bool:
    first, second = _weights(a), _weights(b)
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def _at_step(monkeypatch: pytest.MonkeyPatch, method: str, step: int, action) -> None:
    """Run `action()` once, right after optimiser step `step` (1-based) of `method` has been applied."""
    cls = method_class(method)
    original = cls.after_optimizer_step

    def after_optimizer_step(self, taken: int) -> None:
        original(self, taken)
        if taken == step:
            action()

    monkeypatch.setattr(cls, "after_optimizer_step", after_optimizer_step)


def _signal_config():
    return tiny_config("flyp", checkpoint_every=1000, log_every=1, optim__epochs=2, optim__max_steps_per_epoch=3)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The signal tests' uninterrupted reference, trained once for all three signals (same config, same
    2 threads as every test), with its image-check stamps in a folder of its own as in any test."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STAGES_CHECK_STAMPS", str(tmp_path_factory.mktemp("check-stamps")))
        torch.set_num_threads(2)
        straight = tmp_path_factory.mktemp("straight")
        train(_signal_config(), straight)
    return straight


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM, signal.SIGINT], ids=["USR1", "TERM", "INT"])
def test_signal_mid_epoch_checkpoints_that_step_and_resumes_bit_identically(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int, straight_run: Path) -> None:
    config = _signal_config()
    run = RunDir(tmp_path / "run")
    _at_step(monkeypatch, "flyp", 2, lambda: os.kill(os.getpid(), signum))
    with pytest.raises(RunInterrupted, match=rf"interrupted by {signal.Signals(signum).name} at step 2: "):
        train(config, run)
    assert torch.load(run.last, weights_only=True)["step"] == 2 and not run.best.exists()
    monkeypatch.undo()
    train(config, run)
    assert _same_weights(run.best, straight_run / "best.pt")
    record = json.loads(run.record_path.read_text())
    assert [(i["reason"], i["step"], i["resumed_from"], i["steps_lost"]) for i in record["interruptions"]] == [
        (signal.Signals(signum).name, 2, 2, 0)]
    assert [json.loads(line)["step"] for line in run.log.read_text().splitlines()] == [1, 2, 3, 4, 5, 6]


def test_cli_exits_75_when_interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(tiny_config("ft", checkpoint_every=1000).model_dump(mode="json")))
    _at_step(monkeypatch, "ft", 1, lambda: os.kill(os.getpid(), signal.SIGTERM))
    status = training_main(["--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "run")])
    assert status == EXIT_INTERRUPTED == 75
    err = capsys.readouterr().err
    assert f"interrupted: interrupted by SIGTERM at step 1: resumable checkpoint {tmp_path / 'run' / 'ckpt' / 'last.pt'}" in err


def test_kill_without_signal_is_recorded_with_the_steps_it_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An attempt that dies without a signal (kill -9, node lost): the resume records what it redid."""
    config = tiny_config("ft", checkpoint_every=1000, checkpoint_minutes=None, log_every=1, optim__epochs=2,
                         optim__max_steps_per_epoch=3)
    run = RunDir(tmp_path / "run")

    def die() -> None:
        raise SystemExit("killed")

    _at_step(monkeypatch, "ft", 5, die)  # the checkpoint is at the end of epoch 0 (step 3)
    with pytest.raises(SystemExit):
        train(config, run)
    monkeypatch.undo()
    with open(run.log, "a", encoding="utf-8") as log:
        log.write('{"step": 5, "loss": 0.1')  # the last row, cut off by the kill
    train(config, run)
    (interruption,) = json.loads(run.record_path.read_text())["interruptions"]
    assert (interruption["reason"], interruption["step"], interruption["resumed_from"]) == ("killed", 4, 3)
    assert interruption["steps_lost"] == 1
    assert [json.loads(line)["step"] for line in run.log.read_text().splitlines()] == [1, 2, 3, 4, 5, 6]


def test_time_based_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tiny_config("ft", checkpoint_every=1000, checkpoint_minutes=1e-9, optim__epochs=1,
                         optim__max_steps_per_epoch=4)
    run = RunDir(tmp_path / "run")

    def die() -> None:
        raise SystemExit("node lost")

    _at_step(monkeypatch, "ft", 3, die)
    with pytest.raises(SystemExit):
        train(config, run)
    assert torch.load(run.last, weights_only=True)["step"] == 2  # a minute-based checkpoint after every step


def test_absurd_learning_rate_never_saves_a_nonfinite_tensor(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    config = tiny_config("flyp", optim__lr=1e30, optim__warmup_steps=1, optim__epochs=3, optim__max_steps_per_epoch=4,
                         max_nonfinite_steps=3, keep_checkpoints=True, checkpoint_every=1)
    run = RunDir(tmp_path / "run")
    with pytest.raises(NonFiniteLoss) as caught:
        train(config, run)
    message = str(caught.value)
    assert "\n" not in message and "not finite for 3 consecutive steps (none applied)" in message
    assert message.startswith("step ") and "last good checkpoint: " in message and "Fix: lower optim.lr" in message
    bad_rows = [row for row in map(json.loads, run.log.read_text().splitlines()) if row.get("applied") is False]
    assert len(bad_rows) == 3 and all(row["nonfinite"] for row in bad_rows)
    assert not run.best.exists()
    for path in (run.last, run.prev):
        if path.exists():
            state = torch.load(path, weights_only=True)
            tensors = list(state["state_dict"].values()) + [
                value for param in state["optimizer"]["state"].values() for value in param.values()
                if isinstance(value, torch.Tensor)]
            assert all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())
    assert "not finite; the step is not applied" in capsys.readouterr().out
    with pytest.raises(NonFiniteCheckpoint, match="refusing to write .*: non-finite values in state_dict.w"):
        RunDir.save(tmp_path / "nan.pt", {"state_dict": {"w": torch.tensor([1.0, float("nan")])}})
    assert not (tmp_path / "nan.pt").exists()


@pytest.mark.parametrize("select,save_dtype", [("last", "fp32"), ("val", "fp32"), ("last", "bf16")])
def test_finished_run_keeps_one_copy_of_its_weights(tmp_path: Path, select: str, save_dtype: str) -> None:
    config = tiny_config("flyp", select=select, data__val_split="val", save_dtype=save_dtype)
    run = RunDir(tmp_path / "run")
    train(config, run)
    weights = [p for p in run.path.rglob("*") if p.is_file() and p.name not in NOT_WEIGHTS
               and run.tensorboard not in p.parents]
    assert [p.name for p in weights] == ["best.pt"] and not run.checkpoints.exists()
    state = _weights(run.best)
    tensor_bytes = sum(t.numel() * t.element_size() for t in state.values())
    assert run.best.stat().st_size <= 1.1 * tensor_bytes
    dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    assert dtypes == {torch.bfloat16 if save_dtype == "bf16" else torch.float32}
    loaded = run.load_model().bundle.model  # evaluation and export upcast
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    assert all(torch.equal(loaded.state_dict()[k], v.float()) for k, v in state.items())


def test_disk_full_names_the_path_and_keeps_the_previous_file(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        target = disk / "last.pt"
        atomic_torch_save(target, {"w": torch.zeros(1000)})
        with pytest.raises(DiskFullError) as caught:
            atomic_torch_save(target, {"w": torch.zeros(1_000_000)})  # 4 MB on a 1 MB disk
        message = str(caught.value)
        assert "\n" not in message and f"no space left on device writing {target} (needs about 0.00 GB" in message
        assert "the previous file is intact" in message
        assert torch.equal(torch.load(target, weights_only=True)["w"], torch.zeros(1000))
        assert [p.name for p in disk.iterdir()] == ["last.pt"]  # no temporary file left behind
    finally:  # lazy: the failed torch writer may still hold its file open until collected
        subprocess.run(["umount", "-l", str(disk)])


def test_any_unreadable_checkpoint_is_one_line(tmp_path: Path) -> None:
    """torch.load meets damaged bytes with UnpicklingError, but also IndexError, KeyError, ...: all mean unreadable."""
    run = RunDir(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        run.last.write_bytes(torch.randint(0, 256, (4096,), generator=generator, dtype=torch.uint8).numpy().tobytes())
        with pytest.raises(ModelLoadError) as caught:
            run.load_resume_state()
        assert "\n" not in str(caught.value) and str(caught.value).startswith(f"cannot resume {run.path}: {run.last}")


def _trainer(config_path: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stages.training", "--config", str(config_path), "--out", str(out),
                             *extra], env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_two_writers_one_run_directory(tmp_path: Path) -> None:
    first = tiny_config("ft", optim__epochs=2, optim__max_steps_per_epoch=6)
    (tmp_path / "first.yaml").write_text(yaml.safe_dump(first.model_dump(mode="json")))
    run = RunDir(tmp_path / "run")
    holder = _trainer(tmp_path / "first.yaml", run.path)
    _wait_for(run.log, holder)  # training has begun: the lock is held
    second = tiny_config("ft", optim__lr=5e-4)
    with pytest.raises(RunLocked) as caught:
        train(second, run)
    message = str(caught.value)
    assert message.startswith(f"{run.path} is being trained by pid {holder.pid} on {socket.gethostname()}, since ")
    assert "one writer per run" in message and "\n" not in message
    out, err = holder.communicate(timeout=300)
    assert holder.returncode == 0, err
    torch.set_num_threads(1)  # as the trainer (OMP_NUM_THREADS=1): the same kernels, so the same bits
    train(first, tmp_path / "straight")
    assert _same_weights(run.best, tmp_path / "straight" / "best.pt")  # the trainer's own weights
    assert json.loads(run.record_path.read_text())["config"]["optim"]["lr"] == first.optim.lr
    assert not run.lock_path.exists() and not run.writer_path.exists()


def test_a_dead_writers_lock_and_leftovers_are_taken_over(tmp_path: Path) -> None:
    config = tiny_config("ft", optim__epochs=1, optim__max_steps_per_epoch=40, optim__batch_size=2, log_every=1)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    run = RunDir(tmp_path / "run")
    victim = _trainer(tmp_path / "cfg.yaml", run.path)
    _wait_for(run.log, victim)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert run.lock_path.exists()  # kill -9: nothing released it
    leftovers = [run.checkpoints / ".last.pt.x1y2z3.tmp", run.path / ".best.pt.a1b2c3.tmp"]
    for path in leftovers:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half a checkpoint")
    train(config.model_copy(update={"optim": config.optim.model_copy(update={"max_steps_per_epoch": 2})}), run)
    assert run.best.is_file() and not any(path.exists() for path in leftovers)  # same host, dead pid: taken over


def test_trainer_stops_when_its_parent_dies(tmp_path: Path) -> None:
    config = tiny_config("ft", optim__epochs=1, optim__max_steps_per_epoch=4000, checkpoint_every=100000,
                         optim__batch_size=2)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    run = RunDir(tmp_path / "run")
    # A shell stands for the workflow job: it starts the trainer in the background and is then killed.
    shell = subprocess.Popen(["bash", "-c", f"{sys.executable} -m stages.training --config {tmp_path / 'cfg.yaml'} "
                              f"--out {run.path} --exit-with-parent > {tmp_path / 'log'} 2>&1 & echo $!; wait"],
                             env=ENV, cwd=REPO, stdout=subprocess.PIPE, text=True)
    trainer = int(shell.stdout.readline())
    _wait_for(run.log, shell)
    shell.send_signal(signal.SIGKILL)
    shell.wait()
    deadline = time.monotonic() + 60
    while Path(f"/proc/{trainer}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{trainer}").exists(), "the orphaned trainer kept running"
    (interruption,) = json.loads(run.record_path.read_text())["interruptions"]
    assert interruption["reason"] == "parent exited"
    assert torch.load(run.last, weights_only=True)["step"] == interruption["step"]
    assert "interrupted by parent exited" in (tmp_path / "log").read_text()


def test_skip_corrupt_under_ddp_keeps_ranks_in_lockstep(tmp_path: Path) -> None:
    """One unreadable image, 2 gloo ranks: it is replaced, both ranks take every step, the loss is one process's."""
    root = fakes.colour_folder(tmp_path / "data", {"train": 16})
    bad = sorted((root / "imagefolder" / "train").rglob("*.png"))[3]
    bad.write_bytes(b"not an image")
    config = tiny_config("flyp", data__data_root=str(root), data__check="none", data__skip_corrupt=True,
                         optim__epochs=1, optim__max_steps_per_epoch=None).model_dump(mode="json")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    single = subprocess.run([sys.executable, "-m", "stages.training", "--config", str(tmp_path / "cfg.yaml"),
                             "--out", str(tmp_path / "single")], capture_output=True, text=True, env=ENV, cwd=REPO)
    assert single.returncode == 0, single.stderr
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    double = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                             str(port), "-m", "stages.training", "--config", str(tmp_path / "cfg.yaml"),
                             "--out", str(tmp_path / "ddp")], capture_output=True, text=True, env=ENV, cwd=REPO,
                            timeout=300)
    assert double.returncode == 0, double.stderr
    logs = [[json.loads(line) for line in (tmp_path / run / "train_log.jsonl").read_text().splitlines()]
            for run in ("single", "ddp")]
    assert [row["step"] for row in logs[0]] == [row["step"] for row in logs[1]] == [1, 2]
    assert logs[1][0]["loss"] == pytest.approx(logs[0][0]["loss"], rel=1e-5)
    assert "replaced 1 unreadable training image loads" in single.stdout + single.stderr
