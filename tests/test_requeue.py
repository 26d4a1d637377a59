"""stages.requeue outside SLURM: a trainer stopped by a signal fails its job clearly, and the same command resumes it.

(On SLURM the job requeues itself instead: tests/test_slurm.py, test_interrupted_training_job_requeues_itself.)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]


def _long_run(tmp_path: Path) -> tuple[Path, Path]:
    """(config file, run dir) of a FLYP run long enough to be signalled while it trains."""
    config = tiny_config("flyp", optim__epochs=1, optim__max_steps_per_epoch=None, optim__batch_size=2,
                         checkpoint_every=1000, log_every=1, data__check="none", tracking=[])
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return path, tmp_path / "run"


def _env() -> dict[str, str]:
    """The trainer's environment outside SLURM (a SLURM_JOB_ID would make the supervisor try a requeue)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("SLURM_JOB_ID", None)
    return env


def test_interrupted_trainer_outside_slurm_says_rerun_and_the_rerun_resumes(tmp_path: Path) -> None:
    path, run_dir = _long_run(tmp_path)
    command = [sys.executable, "-m", "stages.requeue", "--run-dir", str(run_dir), "--", sys.executable, "-m",
               "stages.training", "--config", str(path), "--out", str(run_dir), "--exit-with-parent"]
    env = _env()
    job = subprocess.Popen(command, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not (run_dir / "train_log.jsonl").is_file():  # training has begun: the stop handlers are in place
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()[0]
        time.sleep(0.02)
    job.send_signal(signal.SIGTERM)  # to the job's shell (the supervisor) only: it passes the signal on
    output = job.communicate(timeout=120)[0]
    assert job.returncode == 75, output
    assert "interrupted, resumable: rerun the same command to resume" in output, output
    record = json.loads((run_dir / "run.json").read_text())
    (interruption,) = record["interruptions"]
    assert interruption["reason"] == "SIGTERM" and 0 < interruption["step"] < record["total_steps"], interruption

    again = subprocess.run(command, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=120)
    assert again.returncode == 0, again.stdout
    assert f"from step {interruption['step']}/" in again.stdout
    (resumed,) = json.loads((run_dir / "run.json").read_text())["interruptions"]
    assert resumed["resumed_from"] == interruption["step"] and resumed["steps_lost"] == 0
    assert (run_dir / "best.pt").is_file()


def test_torchrun_launched_trainer_interrupted_is_still_resumable(tmp_path: Path) -> None:
    """torchrun answers SIGTERM by stopping its workers and exiting 1, not 75: the supervisor reads the run record."""
    path, run_dir = _long_run(tmp_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "stages.requeue", "--run-dir", str(run_dir), "--", sys.executable, "-m",
               "torch.distributed.run", "--nproc_per_node", "1", "--master_port", str(port), "-m", "stages.training",
               "--config", str(path), "--out", str(run_dir)]
    env = _env()
    job = subprocess.Popen(command, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while not (run_dir / "train_log.jsonl").is_file():
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()[0]
        time.sleep(0.02)
    job.send_signal(signal.SIGTERM)
    output = job.communicate(timeout=180)[0]
    assert job.returncode == 75, output
    assert "interrupted, resumable: rerun the same command to resume" in output, output
    (interruption,) = json.loads((run_dir / "run.json").read_text())["interruptions"]
    assert interruption["reason"] == "SIGTERM" and interruption["resumed_from"] is None
    assert torch.load(run_dir / "ckpt" / "last.pt", weights_only=True)["step"] == interruption["step"]
