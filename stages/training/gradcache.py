"""Exact gradient accumulation over micro-batches: gradient caching (Gao et al., 2021).

A batch of B samples as k micro-batches, with the loss and gradients of one B-sample step:

1. **Cache** (no graph): for each micro-batch, `Method.prepare` (the frozen teacher's features and
   any per-sample draw, once) and `Method.embed` under ``no_grad``: the student's features. The torch
   RNG state before each micro-batch's embedding is kept.
2. **Loss**: the micro-batches' features concatenated (and, for a method that gathers, gathered
   over the ranks with the autograd gather, exactly as one step does) become leaf tensors; the
   method's `batch_loss` on them is the whole batch's loss, and its backward gives d(loss)/d(features)
   and, directly, the gradients of the parameters the loss itself uses (the learnable logit scale,
   a head, CaRot's projection penalties), which are not behind the features.
3. **Replay** (graph, one micro-batch at a time): each micro-batch is embedded again under its kept
   RNG state (the same dropout masks, were there any) and backpropagates its slice of the feature
   gradient (``torch.autograd.backward(features, grad_slice)``); its graph is freed before the next.

Cost: one extra student forward per micro-batch (about +30-50 % of a step's compute); memory: one
micro-batch's activations plus the whole batch's features. Under DDP the gradients are averaged
over the ranks after the last replay (one all-reduce per bucket, not overlapped with the backward):
with every rank computing the same global loss, the gather's backward makes each rank's local
gradient W times its share, and the average is the single-process gradient (stages/training/
distributed.py). Methods that do not gather (head methods) have per-rank losses, averaged the same
way.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from stages.methods import Method, Progress
from stages.collectives import _distributed

# Gradients are all-reduced in flat buckets of about this many bytes (bounded extra memory).
BUCKET_BYTES = 64 * 2**20


def _rng_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state: tuple[Tensor, Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def exact_accumulation(method: Method, group: list[dict[str, Tensor]], progress: Progress,
                       autocast: Callable[[], AbstractContextManager[Any]],
                       scale: Callable[[Tensor], Tensor], device: torch.device) -> dict[str, Tensor]:
    """Accumulate the gradients of the whole `group` (micro-batches on `device`) into ``.grad``, exactly.

    Returns the step's loss terms (`term_value`): those of the whole batch. `scale` is the gradient
    scaler's (fp16; the identity otherwise), applied to the loss once.
    """
    prepared, states, cached = [], [], []
    for batch in group:
        with autocast():
            prepared.append(method.prepare(batch, progress))
        states.append(_rng_state(device))
        with torch.no_grad(), autocast():
            cached.append(method.embed(prepared[-1].inputs, progress))
    sizes = [len(next(iter(features.values()))) for features in cached]
    leaves = {name: torch.cat([features[name] for features in cached]).requires_grad_(True) for name in cached[0]}
    fixed = {name: torch.cat([p.fixed[name] for p in prepared]) for name in prepared[0].fixed}
    del cached
    features, fixed = method.gather(dict(leaves), fixed)
    with autocast():
        terms = method.batch_loss(features, fixed, progress)
    scale(sum(terms.values())).backward()
    after_loss = _rng_state(device)
    del features, fixed
    gradients = {name: leaf.grad for name, leaf in leaves.items()}
    start = 0
    for inputs, state, size in zip((p.inputs for p in prepared), states, sizes):
        _set_rng_state(state, device)
        with autocast():
            replayed = method.embed(inputs, progress)
        pairs = [(replayed[name], gradient[start:start + size]) for name, gradient in gradients.items()
                 if gradient is not None]
        if pairs:
            torch.autograd.backward([tensor for tensor, _ in pairs], [gradient for _, gradient in pairs])
        start += size
    _set_rng_state(after_loss, device)
    if _distributed():
        average_gradients([p for p in method.parameters() if p.requires_grad])
    return {name: term_value(value) for name, value in terms.items()}


def term_value(value: Tensor) -> Tensor:
    """A loss term as the step reports it: detached, half precision upcast to fp32 (float64 stays float64)."""
    return value.detach().to(torch.promote_types(value.dtype, torch.float32))


def average_gradients(parameters: list[nn.Parameter]) -> None:
    """Average every parameter's gradient over the ranks (a missing one counts as zeros), in flat buckets."""
    for parameter in parameters:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
    world_size = dist.get_world_size()
    bucket: list[Tensor] = []
    size = 0
    for index, parameter in enumerate(parameters):
        bucket.append(parameter.grad)
        size += parameter.grad.numel() * parameter.grad.element_size()
        last = index == len(parameters) - 1
        if size >= BUCKET_BYTES or last or parameters[index + 1].grad.dtype != parameter.grad.dtype:
            flat = torch.cat([grad.reshape(-1) for grad in bucket])
            dist.all_reduce(flat)
            flat /= world_size
            offset = 0
            for grad in bucket:
                grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
                offset += grad.numel()
            bucket, size = [], 0
