"""FLOPs a step executes (``FlopCounterMode``) and the device peak MFU divides them by."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

# Dense bf16 tensor-core peaks in FLOP/s, keyed by a substring of torch.cuda.get_device_name();
# the first match wins, so more specific names come first.
BF16_PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H200", 989e12),
    ("H100", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
)


def _cpu_sdpa_flops(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flops(
    grad_out: Any, query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# FlopCounterMode knows the CUDA attention kernels but not the CPU flash kernel SDPA uses on CPU.
_CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
}


@contextmanager
def _without_mha_fastpath() -> Iterator[None]:
    """nn.MultiheadAttention's inference fast path runs one fused op FlopCounterMode cannot see into."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def counting_flops(run: Callable[[], None]) -> int:
    """Matmul, convolution and attention FLOPs that `run` executes, forward and backward."""
    with _without_mha_fastpath(), FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION_FLOPS) as counter:
        run()
    return counter.get_total_flops()


def peak_flops(cuda_device_name: str | None, override_tflops: float | None) -> tuple[float | None, str]:
    """The dense bf16 peak (FLOP/s) MFU divides by, and where it came from (None: not on CUDA)."""
    if override_tflops is not None:
        return override_tflops * 1e12, "--peak-tflops"
    if cuda_device_name is None:
        return None, "none (MFU is reported on CUDA only)"
    name = cuda_device_name
    for key, flops in BF16_PEAK_FLOPS:
        if key in name:
            return flops, f"{name}: dense bf16 table entry {key!r}"
    return None, f"{name} is not in the peak table; pass --peak-tflops"
