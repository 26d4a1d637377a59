"""Building a benchmarked method and timing its training step; the memory it holds and peaks at."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from stages.methods import Method, MethodContext, Progress, method_class
from stages.training.bench.reference import REFERENCE, ReferenceStarFT
from stages.training.distributed import DistInfo
from stages.training.loop import Optimisation, optimizer_step

if TYPE_CHECKING:
    from stages.config import TrainConfig
    from stages.models.factory import ClipBundle

Autocast = Callable[[], AbstractContextManager[Any]]


@dataclass
class Candidate:
    """One benchmarked method with its optimiser and what was measured."""

    name: str
    method: Method
    parts: Optimisation
    step: Callable[[dict[str, Tensor]], None]
    step_times: list[float] = field(default_factory=list)
    step_peak_bytes: int = 0
    checkpointed_peak_bytes: int = 0
    flops_per_step: int = 0


def build_candidate(name: str, bundle: ClipBundle, classnames: list[str], config: TrainConfig, total_steps: int,
                    device: torch.device) -> Candidate:
    """Method `name` (a registered one, or ``starft-reference``) on `bundle`'s model with the loop's
    optimisation (`Optimisation.build`: AdamW, schedule, autocast of ``config.precision``), and its
    step: the loop's own `optimizer_step` on one micro-batch. The one place that knows how the
    benchmark builds a method and runs a step. The benchmark builds every method from one
    `config`: each gets its own options block, not that of ``config.method``."""
    cls = ReferenceStarFT if name == REFERENCE else method_class(name)
    context = MethodContext.from_config(bundle, classnames, config, total_steps, method=cls.spec.name)
    method = cls(context).to(device)
    method.train()
    parts = Optimisation.build(method, config, total_steps, device, DistInfo())
    # A steady-state step (CaRot distils from its second step on); λ is the config's (decay: none).
    progress = Progress(step=1, epoch=0, total_steps=total_steps, epochs=config.optim.epochs)

    def step(batch: dict[str, Tensor]) -> None:
        optimizer_step(parts, [batch], progress)
        parts.optimizer.zero_grad(set_to_none=True)  # (the next step would): idle methods hold no gradients

    return Candidate(name, method, parts, step)


def autocast_for(precision: str, device: torch.device) -> Autocast:
    """The loop's precision rule: bf16 autocast (fp32 master weights) on CUDA or when asked, else fp32."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext


def step_peak_bytes(run: Callable[[], None], device: torch.device) -> int:
    """CUDA bytes a step allocates at its peak above what was allocated before it."""
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    run()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Callable[[], None], device: torch.device) -> float:
    """Wall-clock seconds of `run`, with the device's queue drained before and after."""
    _synchronize(device)
    started = time.perf_counter()
    run()
    _synchronize(device)
    return time.perf_counter() - started


def state_bytes(method: Method, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of a method's own resident tensors: parameters (teacher included), buffers, optimiser state."""
    tensors = [*method.parameters(), *method.buffers()]
    tensors += [value for state in optimizer.state.values() for value in state.values() if isinstance(value, Tensor)]
    storages = {tensor.untyped_storage().data_ptr(): tensor.untyped_storage().nbytes() for tensor in tensors}
    return sum(storages.values())


def measure_eval(
    model: torch.nn.Module, batch_size: int, image_size: int, steps: int, warmup: int, autocast: Autocast,
    device: torch.device, generator: torch.Generator,
) -> dict[str, float]:
    """Zero-shot evaluation throughput: ``encode_image`` under inference mode at the batch size."""
    images = torch.randn(batch_size, 3, image_size, image_size, generator=generator).to(device)

    def run() -> None:
        with torch.inference_mode(), autocast():
            model.encode_image(images, normalize=True)

    model.eval()
    times = [timed(run, device) for _ in range(warmup + steps)][warmup:]
    model.train()
    batch_time = statistics.median(times)
    return {"batch_time_s": batch_time, "images_per_s": batch_size / batch_time}
