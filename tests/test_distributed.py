"""Two gloo processes on CPU (DDP) reproduce the single-process loss and gradients of the global batch."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

import fakes
from conftest import move_student_off_teacher, progress, tiny_config
from stages.config import TrainConfig
from stages.data.source import load_image
from stages.models import create_clip
from stages.training.distributed import (
    DistInfo,
    Launch,
    LaunchError,
    TrainingStep,
    cuda_index,
    first_host,
    resolve_launch,
    slurm_port,
)
from stages.training.loop import EpochSampler
from stages.methods import MethodContext, build_method

REPO = Path(__file__).resolve().parents[1]


def _step(config: TrainConfig, rank: int, world_size: int, accum: int = 1) -> tuple[float, list[torch.Tensor]]:
    """One training step of `config`'s method on this rank's shard of a fixed 8-sample global batch.

    With `accum` micro-batches, the k-th is the k-th slice of the global batch (each rank taking
    its shard of it), as the loop accumulates; DDP all-reduces in the last backward only.
    """
    torch.manual_seed(0)
    bundle = create_clip("TinyCLIP-test", None)
    source = fakes.colour_images("train", 8)
    method = build_method(config.method, MethodContext.from_config(bundle, source.classnames, config, total_steps=4))
    move_student_off_teacher(method)  # else the Star and distillation terms sit at their ~0 minimum
    method.double()  # float64 so that only the gather itself, not rounding, could make a difference
    images = torch.stack([bundle.preprocess_val(load_image(image)) for image in source.images]).double()
    batch = {"image": images, "label": torch.tensor(source.labels), "descriptor_index": torch.arange(8) % 3}
    step = TrainingStep(method, DistInfo(rank, world_size), torch.device("cpu"))
    size = 8 // accum
    total = 0.0
    for k in range(accum):
        shard = {key: value[k * size:(k + 1) * size][rank::world_size] for key, value in batch.items()}
        with step.no_sync() if k < accum - 1 else contextlib.nullcontext():
            terms = step(shard, progress())
            assert all(float(value.detach()) > 1e-3 for name, value in terms.items() if name in ("star", "distill"))
            loss = sum(terms.values()) / accum
            loss.backward()
        total += float(loss.detach())
    return total, [p.grad.clone() for p in method.trainable_parameters()]


def _worker(rank: int, world_size: int, config: TrainConfig, init_file: str, out_dir: str, accum: int = 1) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    loss, grads = _step(config, rank, world_size, accum)
    torch.save({"loss": loss, "grads": grads}, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("method_name,accum", [("starft", 1), ("flyp", 1), ("carot", 1), ("starft", 2)],
                         ids=["starft", "flyp", "carot", "starft-accum2"])
def test_two_ranks_equal_one_process(tmp_path: Path, method_name: str, accum: int) -> None:
    config = tiny_config(method_name)  # built here: the spawned ranks do not run the session fixtures tiny_config needs
    single_loss, single_grads = _step(config, rank=0, world_size=1, accum=accum)
    mp.spawn(_worker, args=(2, config, str(tmp_path / "init"), str(tmp_path), accum), nprocs=2, join=True)
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert result["loss"] == pytest.approx(single_loss, rel=1e-12)
        for got, want in zip(result["grads"], single_grads):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
        # Relative differences over the entries above 1e-6 of their tensor's largest (rounding-level ones aside).
        differences = [((got - want).abs().max().item(),
                        ((got - want).abs() / want.abs())[want.abs() > 1e-6 * want.abs().max()].max().item())
                       for got, want in zip(result["grads"], single_grads)]
        print(f"{method_name} accum {accum} rank {rank}: loss diff {abs(result['loss'] - single_loss):.2e}, grad max "
              f"abs diff {max(a for a, _ in differences):.2e}, max rel diff {max(r for _, r in differences):.2e}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_training_cli_under_torchrun(tmp_path: Path) -> None:
    config = tiny_config("starft", spurious__decay="step", optim__epochs=1).model_dump(mode="json")
    config["spurious"]["bank"] = str(REPO / "descriptor_banks" / "official-code.json")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "stages.training", "--config", str(tmp_path / "cfg.yaml"),
                             "--out", str(tmp_path / "single")], capture_output=True, text=True, env=env)
    assert single.returncode == 0, single.stderr
    double = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                             str(_free_port()), "-m", "stages.training", "--config", str(tmp_path / "cfg.yaml"),
                             "--out", str(tmp_path / "ddp")], capture_output=True, text=True, env=env, timeout=300)
    assert double.returncode == 0, double.stderr
    logs = [[json.loads(line) for line in (tmp_path / run / "train_log.jsonl").read_text().splitlines()]
            for run in ("single", "ddp")]
    assert len(logs[0]) == len(logs[1]) == 2
    # Step 1 runs on identical weights: the global-batch loss must agree.
    assert logs[1][0]["loss"] == pytest.approx(logs[0][0]["loss"], rel=1e-5)
    assert json.loads((tmp_path / "ddp" / "run.json").read_text())["world_size"] == 2
    assert (tmp_path / "ddp" / "best.pt").is_file()


SRUN_2 = {"SLURM_STEP_NUM_TASKS": "2", "SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "1",
          "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_STEP_NODELIST": "gpu[07-08]",
          "SLURM_JOB_NODELIST": "gpu[07-08]"}


def test_launch_from_torchrun_slurm_or_nothing() -> None:
    assert resolve_launch({}) == Launch(DistInfo(), "single")
    # A batch script of an sbatch --ntasks=4 job is one process (srun sets the step's task count).
    assert resolve_launch({"SLURM_NTASKS": "4", "SLURM_PROCID": "0", "SLURM_JOB_ID": "7"}).launcher == "single"
    torchrun = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "MASTER_ADDR": "node1", "MASTER_PORT": "29500",
                "GROUP_WORLD_SIZE": "2"}
    assert resolve_launch(torchrun) == Launch(DistInfo(3, 4, 1), "torchrun", "node1", 29500)
    # One torchrun per node under srun, joined by a shared rendezvous: 2 srun tasks = 2 agents.
    assert resolve_launch({**SRUN_2, **torchrun}).info == DistInfo(3, 4, 1)
    slurm = resolve_launch(SRUN_2)
    assert slurm == Launch(DistInfo(1, 2, 1), "slurm", "gpu07", slurm_port("4242", "0"))
    assert resolve_launch({**SRUN_2, "MASTER_ADDR": "login", "MASTER_PORT": "1234"}).master_port == 1234
    assert slurm_port("4242", "0") != slurm_port("4242", "1") != slurm_port("4243", "1")
    assert all(12000 <= slurm_port(str(job), "0") < 32000 for job in (0, 1, 10**9))
    assert first_host("gpu[07-08,11],cpu1") == "gpu07" and first_host("a-1,b") == "a-1"
    assert first_host("n[3,5]-ib") == "n3-ib" and first_host("vm") == "vm"
    assert cuda_index(3, 8) == 3 and cuda_index(3, 1) == 0


@pytest.mark.parametrize("env,message", [
    # srun -n2 torchrun --standalone --nproc_per_node 2: two unrelated 2-rank groups.
    ({**SRUN_2, "WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "localhost", "MASTER_PORT": "1",
      "GROUP_WORLD_SIZE": "1"}, "2 srun tasks each started their own group of 2 rank"),
    ({**SRUN_2, "WORLD_SIZE": "1"}, "would train 2 copies into the same run directory"),
    ({"OMPI_COMM_WORLD_SIZE": "4"}, "4 processes started by mpirun"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, "MASTER_ADDR, MASTER_PORT not set"),
    ({**SRUN_2, "SLURM_PROCID": ""}, "SLURM_PROCID is not set"),
], ids=["standalone-torchrun-per-task", "world-1-per-task", "mpirun", "no-master", "no-procid"])
def test_several_processes_that_are_not_one_group_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(LaunchError, match=message):
        resolve_launch(env)


def test_epoch_shards_are_equal_on_every_rank() -> None:
    """9 samples over 2 ranks: 4 keys each (the permutation's first 8), so every gather has equal shards."""
    single = list(EpochSampler(9, seed=1, epoch=0))
    shards = [list(EpochSampler(9, seed=1, epoch=0, rank=rank, world_size=2)) for rank in range(2)]
    assert [len(shard) for shard in shards] == [4, 4]
    assert [key for pair in zip(*shards) for key in pair] == single[:8]
    assert list(EpochSampler(9, seed=1, epoch=0, start=4, rank=1, world_size=2)) == shards[1][2:]
