"""Collectives over the ranks of a job, below both the methods (which gather features for their losses)
and the training loop (which agrees on stop, checkpoint and skip decisions): no import points up.

One process (or no process group): every function is the identity.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import Tensor


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def any_rank(flags: list[bool], device: torch.device) -> list[bool]:
    """Each flag, true when it is true on any rank (one small all-reduce), so that every rank takes the
    same branch (stop, checkpoint, skip a step) at the same step. One process: the flags."""
    if not _distributed():
        return flags
    values = torch.tensor([float(flag) for flag in flags], device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(value) for value in values.tolist()]


def gather_batch(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Each tensor with every rank's shard concatenated along dim 0 in rank order (one call per step
    gathers everything a loss needs); gradients flow back to each shard. One process: the tensors."""
    if not _distributed():
        return tensors
    return tuple(_gather(tensor) for tensor in tensors)


def _gather(tensor: Tensor) -> Tensor:
    if tensor.requires_grad:
        with warnings.catch_warnings():  # deprecated in favour of a private API; still the public autograd gather
            warnings.simplefilter("ignore", FutureWarning)
            return torch.cat(dist_fn.all_gather(tensor))
    shards = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(shards, tensor.contiguous())
    return torch.cat(shards)
