"""The benchmark's markdown summary (written beside the JSON and printed)."""

from __future__ import annotations

from typing import Any


def _fmt(value: float | None, spec: str, scale: float = 1.0, unit: str = "") -> str:
    return "-" if value is None else f"{format(value * scale, spec)}{unit}"


def _against(value: float | None, target: float, at_most: bool) -> str:
    """``1.234 (target ≤ 1.3: met)``."""
    if value is None:
        return f"- (target {'≤' if at_most else '≥'} {target})"
    met = value <= target if at_most else value >= target
    return f"**{value:.3f}** (target {'≤' if at_most else '≥'} {target}: {'met' if met else 'missed'})"


def render_markdown(result: dict[str, Any]) -> str:
    """The human summary written beside the JSON (and printed)."""
    cuda = result["device"].startswith("cuda")
    lines = [
        f"# Benchmark: {result['arch']}, batch {result['batch_size']}, {result['device_name']} "
        f"({result['precision']}{', compiled' if result['compile'] else ''})",
        "",
        "| method | step (ms) | samples/s | GFLOP/step | TFLOP/s | MFU | state (MB) | peak (MB) "
        "| peak, grad checkpointing (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in result["methods"].items():
        lines.append(
            f"| {name} | {m['step_time_s'] * 1e3:.1f} | {m['samples_per_s']:.1f} | {m['flops_per_step'] / 1e9:.1f} "
            f"| {m['tflops_per_s']:.3f} | {_fmt(m['mfu'], '.1f', 100, '%')} | {m['state_memory_mb']:.0f} "
            f"| {_fmt(m['peak_memory_mb'], '.0f')} | {_fmt(m['peak_memory_checkpointed_mb'], '.0f')} |"
        )
    ratios, targets = result["ratios"], result["targets"]
    lines += [
        "",
        f"- starft / flyp step time: {_against(ratios['starft_over_flyp'], targets['starft_over_flyp_max'], True)}",
        f"- reference / starft step time: "
        f"{_against(ratios['reference_over_starft'], targets['reference_over_starft_min'], False)}",
        f"- zero-shot evaluation: {result['eval']['images_per_s']:.1f} images/s (encode_image, inference mode, "
        f"batch {result['batch_size']})",
        f"- FLOPs: FlopCounterMode on each method's first (eager, warm-up) step; peak: "
        f"{_fmt(result['peak_flops'], '.0f', 1e-12, ' TFLOP/s')} ({result['peak_source']})",
        f"- process peak memory: {result['process_peak_memory_mb']:.0f} MB "
        f"({'CUDA max allocated' if cuda else 'RSS high-water'})",
        "- per-method peak memory, without and with the student's gradient checkpointing: "
        + ("one step each, CUDA allocator peak plus the method's state" if cuda else "not measured (CPU; CUDA only)"),
        f"- median of {result['steps']} steps after {result['warmup']} warm-up, methods interleaved; "
        f"{result['classes']} classes x {result['descriptors']} descriptors, λ = {result['lam']}, "
        f"torch {result['torch']}, {result['threads']} threads",
    ]
    return "\n".join(lines) + "\n"
