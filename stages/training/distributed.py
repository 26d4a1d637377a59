"""Data parallelism with global-batch semantics: torch DDP, launched by torchrun or by SLURM's srun.

Each rank encodes its shard of the batch; features **and labels** are all-gathered so the
contrastive and Star terms see the whole global batch, exactly as on one device. The gather is
the autograd-aware ``torch.distributed.nn.functional.all_gather``: its backward sums every
rank's gradient for the local shard, so with every rank computing the same global loss the
local gradient is W times the single-device one, and DDP's average over the W ranks (bucketed
all-reduces overlapped with the backward) gives exactly the single-device gradient. Terms
computed on the local shard only (FT's cross-entropy) or on the weights alone (CaRot's
penalties) are averaged by DDP as they should be.

Who launched us (:func:`resolve_launch`, from the environment):

- **torchrun** (``WORLD_SIZE`` set): its ``RANK``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``.
- **srun** with several tasks (``SLURM_STEP_NUM_TASKS`` > 1, no ``WORLD_SIZE``): rank
  ``SLURM_PROCID``, world ``SLURM_STEP_NUM_TASKS``, local rank ``SLURM_LOCALID``, master = the
  first host of ``SLURM_STEP_NODELIST`` (where srun puts task 0), port derived from the job and
  step ids (``MASTER_ADDR``/``MASTER_PORT`` override both).
- Anything else is one process.

Several processes that cannot be one process group are refused with a :class:`LaunchError`
before any work: srun tasks that each started their own torchrun group (``--standalone``), or
mpirun/PMI processes without a torch rendezvous. They would otherwise train copies of the same
run into the same run directory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from stages.errors import PipelineError

# Ports derived from a SLURM job id fall in [PORT_BASE, PORT_BASE + PORT_SPAN): above the
# registered services most clusters run, below Linux's default ephemeral range (32768-60999).
PORT_BASE, PORT_SPAN = 12000, 20000


class LaunchError(PipelineError, RuntimeError):
    """The environment describes several processes that cannot form one process group."""


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class Launch:
    """How to join the process group: this rank's place, the rendezvous, and who started us."""

    info: DistInfo
    launcher: str  # "single", "torchrun" or "slurm"
    master_addr: str | None = None
    master_port: int | None = None


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``gpu[03-04,07],cpu1`` -> ``gpu03`` (zero padding kept)."""
    match = re.match(r"([^,\[]*)(?:\[([^\]]*)\])?([^,]*)", nodelist.strip())
    if match is None or not (match[1] or match[2]):
        raise LaunchError(f"cannot read a host from the SLURM node list {nodelist!r}; set MASTER_ADDR")
    prefix, ranges, suffix = match[1], match[2], match[3]
    first = re.split(r"[,-]", ranges)[0] if ranges else ""
    return f"{prefix}{first}{suffix}"


def slurm_port(job_id: str, step_id: str) -> int:
    """A rendezvous port every task of one SLURM step derives alike, different for other jobs and steps."""
    step = int(step_id) if step_id.isdigit() else 0
    return PORT_BASE + (int(job_id) * 64 + step) % PORT_SPAN


def _int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    value = env.get(name)
    if value is None or value == "":
        if default is None:
            raise LaunchError(f"{name} is not set; it is needed to join the process group")
        return default
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"{name}={value!r} is not an integer") from None


def resolve_launch(env: Mapping[str, str]) -> Launch:
    """Read torchrun's or SLURM's environment (see the module docstring); refuse what cannot be one group."""
    step_tasks = _int(env, "SLURM_STEP_NUM_TASKS", 1)
    if env.get("WORLD_SIZE"):
        world_size = _int(env, "WORLD_SIZE")
        agents = env.get("GROUP_WORLD_SIZE")  # torchrun: how many torchrun agents joined the rendezvous
        if step_tasks > 1 and (world_size < step_tasks or (agents is not None and int(agents) != step_tasks)):
            raise LaunchError(
                f"{step_tasks} srun tasks each started their own group of {world_size} rank(s) (WORLD_SIZE="
                f"{world_size}{f', {agents} torchrun agent(s)' if agents else ''}): they would train "
                f"{step_tasks} copies into the same run directory. Either let srun start one task per GPU "
                "without torchrun (srun python -m stages.training ...), or start one torchrun per node "
                f"with a shared rendezvous (--nnodes {step_tasks} --rdzv-backend c10d --rdzv-endpoint "
                "<first node>:<port>), never torchrun --standalone under a multi-task srun"
            )
        if world_size == 1:
            return Launch(DistInfo(), "single")
        missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not env.get(name)]
        if missing:
            raise LaunchError(f"WORLD_SIZE={world_size} but {', '.join(missing)} not set: launch with torchrun "
                              "(python -m torch.distributed.run), which sets them")
        info = DistInfo(_int(env, "RANK"), world_size, _int(env, "LOCAL_RANK", 0))
        return Launch(info, "torchrun", env["MASTER_ADDR"], _int(env, "MASTER_PORT"))
    if step_tasks > 1:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
        if not env.get("MASTER_ADDR") and not nodelist:
            raise LaunchError(f"{step_tasks} srun tasks but neither SLURM_STEP_NODELIST nor MASTER_ADDR is set: "
                              "cannot find the rendezvous host")
        info = DistInfo(_int(env, "SLURM_PROCID"), step_tasks, _int(env, "SLURM_LOCALID", 0))
        master_addr = env.get("MASTER_ADDR") or first_host(nodelist or "")
        if env.get("MASTER_PORT"):
            master_port = _int(env, "MASTER_PORT")
        else:
            master_port = slurm_port(str(_int(env, "SLURM_JOB_ID")), env.get("SLURM_STEP_ID", "0"))
        return Launch(info, "slurm", master_addr, master_port)
    for name, launcher in (("OMPI_COMM_WORLD_SIZE", "mpirun"), ("PMI_SIZE", "a PMI launcher")):
        if _int(env, name, 1) > 1:
            raise LaunchError(f"{env[name]} processes started by {launcher} ({name}) without a torch rendezvous "
                              "would each train the whole run into the same run directory; launch with torchrun "
                              "or with srun (one task per GPU)")
    return Launch(DistInfo(), "single")


def cuda_index(local_rank: int, visible: int) -> int:
    """The CUDA device of a local rank: its own when the node's GPUs are all visible, 0 when srun bound one."""
    if visible == 1:
        return 0
    if local_rank >= visible:
        raise LaunchError(f"local rank {local_rank} but only {visible} visible CUDA devices: start at most one "
                          "process per GPU on each node")
    return local_rank


def init_distributed(env: Mapping[str, str] | None = None) -> DistInfo:
    """Join the process group the environment describes (single process: no-op); see :func:`resolve_launch`."""
    launch = resolve_launch(os.environ if env is None else env)
    info = launch.info
    if info.world_size == 1:
        return info
    if torch.cuda.is_available():
        torch.cuda.set_device(cuda_index(info.local_rank, torch.cuda.device_count()))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if launch.launcher == "torchrun":
            dist.init_process_group(backend=backend)  # env://, torchrun's store
        else:
            dist.init_process_group(backend=backend, init_method=f"tcp://{launch.master_addr}:{launch.master_port}",
                                    rank=info.rank, world_size=info.world_size)
    return DistInfo(dist.get_rank(), dist.get_world_size(), info.local_rank)


class _StepModule(nn.Module):
    """A method's whole training step as one module's forward: what DDP wraps.

    DDP must see the forward of the module whose parameters it synchronises; the methods call
    several of the student's entry points (``encode_image``, trimmed text forwards, a head), so
    the wrapped forward is the method's ``training_step`` itself.
    """

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.method = method

    def forward(self, batch: dict[str, Tensor], progress: Any) -> dict[str, Tensor]:
        return self.method.training_step(batch, progress)


class TrainingStep:
    """``step(batch, progress) -> terms`` of a method, through DDP when the job has several ranks.

    ``no_sync()`` wraps the micro-batches of an accumulated step but the last: their gradients
    accumulate locally and the last backward all-reduces the sum. Every trainable parameter
    must receive a gradient each step (all methods' do), so DDP runs without the per-step
    unused-parameter search; frozen parameters (teachers, FT's text tower) are not DDP's.
    Buffers (caches every rank computes alike) are broadcast once at construction, not every step.
    """

    def __init__(self, method: nn.Module, dist_info: DistInfo, device: torch.device) -> None:
        self.module: nn.Module = _StepModule(method)
        if dist_info.world_size > 1:
            self.module = DistributedDataParallel(
                self.module, forward_sync_buffers=False,
                device_ids=[torch.cuda.current_device() if device.index is None else device.index]
                if device.type == "cuda" else None,
            )

    def __call__(self, batch: dict[str, Tensor], progress: Any) -> dict[str, Any]:
        return self.module(batch, progress)

    def no_sync(self) -> AbstractContextManager[Any]:
        """Skip the gradient all-reduce of the backward passes inside (single process: nothing to skip)."""
        return self.module.no_sync() if isinstance(self.module, DistributedDataParallel) else nullcontext()

