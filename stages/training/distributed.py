"""Data parallelism with global-batch semantics (torchrun inside one job).

Each rank encodes its shard of the batch; features **and labels** are all-gathered so the
contrastive and Star terms see the whole global batch, exactly as on one device. The gather is
the autograd-aware ``torch.distributed.nn.functional.all_gather``: its backward sums every
rank's gradient for the local shard, so with every rank computing the same global loss the
local gradient is W times the single-device one, and averaging gradients over the W ranks
(``average_gradients``) gives exactly the single-device gradient.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import Tensor, nn


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the process group torchrun describes in the environment (single process: no-op)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank)
    return info


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_batch(tensor: Tensor) -> Tensor:
    """Concatenate every rank's `tensor` along dim 0 in rank order; gradients flow back to each shard."""
    if not _distributed():
        return tensor
    if tensor.requires_grad:
        with warnings.catch_warnings():  # deprecated in favour of a private API; still the public autograd gather
            warnings.simplefilter("ignore", FutureWarning)
            return torch.cat(dist_fn.all_gather(tensor))
    shards = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(shards, tensor.contiguous())
    return torch.cat(shards)


def average_gradients(parameters: list[nn.Parameter]) -> None:
    """Average .grad over ranks (one flattened all-reduce); parameters without a gradient count as zero."""
    if not _distributed():
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for parameter, grad in zip(parameters, grads):
        parameter.grad = flat[offset:offset + grad.numel()].view_as(grad).clone()
        offset += grad.numel()
