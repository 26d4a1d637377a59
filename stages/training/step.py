"""One optimiser step over its micro-batches: autocast, accumulation (exact or independent), clipping, skip on non-finite."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from stages.collectives import any_rank
from stages.config import ConfigError, TrainConfig
from stages.methods import Method, Progress
from stages.training.distributed import DistInfo, TrainingStep
from stages.training.gradcache import exact_accumulation, term_value
from stages.training.schedule import warmup_cosine


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a run (None: fp32): auto is bf16 on CUDA and fp32 elsewhere."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)



# --- one optimiser step -----------------------------------------------------------------------

def resolve_accumulation(config: TrainConfig, method: Method) -> str:
    """``exact`` or ``independent``: how `method` accumulates ``optim.accum_steps`` micro-batches (stages/config/run.py's
    ``optim.accum``; auto: exact for a method whose loss couples samples). One micro-batch: independent (the plain step)."""
    optim = config.optim
    if optim.accum_steps == 1:
        return "independent"
    mode = optim.accum
    if mode == "auto":
        mode = "exact" if method.spec.couples_samples and method.splits_step() else "independent"
    if mode == "exact" and not method.splits_step():
        raise ConfigError(f"optim.accum: exact needs {config.method}'s step as prepare/embed/batch_loss "
                          "(stages/methods/_base.py); it defines training_step only. Fix: set optim.accum: independent")
    return mode


@dataclass
class Optimisation:
    """What one optimiser step needs: the method (through DDP), AdamW, its schedule, AMP, clipping, and how
    micro-batches accumulate (`accum`: ``exact``, gradient caching, or ``independent``)."""

    method: Method
    training_step: TrainingStep
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    autocast_dtype: torch.dtype | None
    grad_clip: float | None
    device: torch.device
    accum: str = "independent"

    @classmethod
    def build(cls, method: Method, config: TrainConfig, total_steps: int, device: torch.device,
              dist_info: DistInfo) -> Optimisation:
        """AdamW (decay on every trained parameter, as the official code) with warm-up + cosine, AMP, DDP."""
        # The fused CUDA kernel does the whole AdamW update in one launch; CPU keeps the foreach default.
        optimizer = torch.optim.AdamW(method.trainable_parameters(), lr=config.optim.lr,
                                      weight_decay=method.optimizer_weight_decay(), fused=device.type == "cuda")
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                      warmup_cosine(config.optim.warmup_steps, total_steps))
        dtype = autocast_dtype(config.precision, device)
        # fp16 needs loss scaling (its range underflows small gradients); a disabled scaler is a no-op.
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        return cls(method, TrainingStep(method, dist_info, device), optimizer, scheduler, scaler, dtype,
                   config.optim.grad_clip, device, resolve_accumulation(config, method))


@dataclass
class StepResult:
    """One optimiser step's loss terms (means over its micro-batches), gradient norm and lr, all on the device;
    `applied` is False when a term or the gradient norm was not finite (the weights were left as they were)."""

    terms: dict[str, torch.Tensor]
    grad_norm: torch.Tensor
    lr: float
    applied: bool = True

    def nonfinite(self) -> list[str]:
        """The loss terms (and ``grad_norm``) that are not finite."""
        values = {**self.terms, "grad_norm": self.grad_norm}
        return [name for name, value in values.items() if not bool(torch.isfinite(value))]


def optimizer_step(parts: Optimisation, group: list[dict[str, torch.Tensor]], progress: Progress) -> StepResult:
    """One optimiser step over the micro-batches `group` (what ``make bench`` times).

    Reads one flag back from the device: whether the loss terms and the gradient norm are finite
    (all ranks agreeing). A step that is not finite is not applied, so no NaN ever reaches the
    weights or the optimiser's moments; the schedule advances as for any step (its data was consumed).
    fp16's gradient scaler keeps its own rule for gradients (it skips steps whose gradients overflow
    and lowers the scale), so there only the loss terms are checked here.

    Several micro-batches accumulate as `parts.accum` says: ``exact`` (stages/training/gradcache.py: the
    whole group's loss and gradients; its terms are the whole batch's) or ``independent`` (each
    micro-batch's loss over len(group), terms averaged).
    """
    method = parts.method
    method.begin_step(progress)
    parts.optimizer.zero_grad(set_to_none=True)
    if parts.accum == "exact" and len(group) > 1:
        terms = exact_accumulation(
            method, [{key: value.to(parts.device, non_blocking=True) for key, value in batch.items()} for batch in group],
            progress, lambda: _autocast(parts), parts.scaler.scale, parts.device)
    else:
        terms = _independent_accumulation(parts, group, progress)
    parts.scaler.unscale_(parts.optimizer)  # the true gradients (a no-op without fp16's scaler)
    parameters = [p for group_ in parts.optimizer.param_groups for p in group_["params"]]
    grad_norm = (torch.nn.utils.clip_grad_norm_(parameters, parts.grad_clip) if parts.grad_clip is not None
                 else torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None]))
    checked = list(terms.values()) + ([] if parts.scaler.is_enabled() else [grad_norm.detach().float()])
    finite = bool(torch.isfinite(torch.stack(checked)).all()) if checked else True
    (bad,) = any_rank([not finite], parts.device)
    if bad:
        parts.optimizer.zero_grad(set_to_none=True)
    else:
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
    lr = parts.scheduler.get_last_lr()[0]
    parts.scheduler.step()
    method.after_optimizer_step(progress.step + 1)
    return StepResult(terms, grad_norm.detach().float(), lr, applied=not bad)


def _autocast(parts: Optimisation) -> AbstractContextManager[Any]:
    return (torch.autocast(parts.device.type, dtype=parts.autocast_dtype) if parts.autocast_dtype is not None
            else nullcontext())


def _independent_accumulation(parts: Optimisation, group: list[dict[str, torch.Tensor]],
                              progress: Progress) -> dict[str, torch.Tensor]:
    """Each micro-batch's own loss / len(group), backpropagated through DDP; the terms' mean over the group."""
    autocast = _autocast(parts)
    terms: dict[str, torch.Tensor] = {}
    for index, batch in enumerate(group):
        batch = {key: value.to(parts.device, non_blocking=True) for key, value in batch.items()}
        # DDP all-reduces the gradients in the last micro-batch's backward only.
        with parts.training_step.no_sync() if index < len(group) - 1 else nullcontext():
            with autocast:
                micro_terms = parts.training_step(batch, progress)
            parts.scaler.scale(sum(micro_terms.values()) / len(group)).backward()
        for name, value in micro_terms.items():
            addend = term_value(value) / len(group)
            terms[name] = terms[name] + addend if name in terms else addend
    return terms


# --- the log window ---------------------------------------------------------------------------
